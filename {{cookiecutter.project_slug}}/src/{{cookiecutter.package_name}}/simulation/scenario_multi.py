"""The ``multi`` scenario: three participants talk, the primary's participant leaves, and the
job's primary designation moves without a gap or an overlap.

It needs ``ROOM_MODE=multi-participant``: ``run_job`` then runs the conversation with the
first participant plus one listen-only transcriber per participant, all registered in the
job's :class:`~..resilience.primary.election.SessionElection`.

What is real and what is scripted: participants speak through real audio tracks into the
agent, and a scripted STT tells which line they said (see :mod:`..testing.room.speech`).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Protocol

from ..models import ModelStack
from ..resilience.primary.election import SessionElection
from ..settings import Settings
from ..testing import ScriptedLLM, ScriptedTTS
from ..testing.room.speech import ParticipantMicrophone, SpeechCodebook, ToneSTT
from .harness import Observations, Simulation
from .scenarios import scenario, with_settings

# -- the scenario ---------------------------------------------------------------------------

PEOPLE = ["alice", "bob", "carol"]
# what each says before the first participant (the conversation's, the primary) leaves...
LINES = {
    "alice": ["Shall we start with the budget?"],
    "bob": ["I have the numbers for the third quarter."],
    "carol": ["Let's keep the marketing spend flat."],
}
# ...and after, while a transcriber is primary
LINES_AFTER = {"bob": "They look better than planned.", "carol": "Agreed, flat it is."}
CODEBOOK = SpeechCodebook()


def multi_models(_settings: Settings) -> Any:
    """A scripted stack with the tone STT, so transcribers hear the participants' audio."""
    stack = ModelStack(
        name="scripted",
        # the conversational agent also hears its participant: it answers each line it hears
        llm=ScriptedLLM(["Hello everyone! I'm the meeting assistant."], on_exhausted="echo"),
        stt=ToneSTT(CODEBOOK),
        tts=ScriptedTTS(),
        turn_detection="manual",
    )
    return lambda: stack


def _election(sim: Simulation) -> SessionElection:
    if sim.conversation is None or sim.conversation.transcribers is None:
        raise RuntimeError(
            "the multi scenario needs ROOM_MODE=multi-participant: the job runs no "
            "transcribers in this room"
        )
    return sim.conversation.election


async def _settle(sim: Simulation, election: SessionElection) -> None:
    await election.settled()
    await asyncio.sleep(0.2)  # let join/leave handlers spawned by room events run
    await election.settled()


@scenario(
    "multi",
    summary="three participants talk; the primary's participant leaves and another is promoted",
    models=multi_models,
    checks=lambda obs, sim: check_multi(obs, sim),
    prepare=with_settings(room_mode="multi-participant"),
)
async def multi(sim: Simulation) -> None:
    microphones: dict[str, ParticipantMicrophone] = {}
    for identity in PEOPLE:
        await sim.join(identity, name=identity.title())
        microphones[identity] = ParticipantMicrophone(sim.room, identity, CODEBOOK)
    election = await _wait_for_election(sim)
    await _settle(sim, election)
    sim.expect_agent_turn("greeting")
    await sim.wait_for_agent_replies(1)
    first = election.primary
    sim.progress(f"primary: {first.role if first else 'none'} session")

    for identity in PEOPLE:
        for line in LINES[identity]:
            await microphones[identity].say(line)
    await sim.leave(PEOPLE[0])
    await _settle(sim, election)
    promoted = election.primary
    sim.progress(f"{PEOPLE[0]} left; primary now: {promoted.role if promoted else 'none'}")
    for identity, line in LINES_AFTER.items():
        await microphones[identity].say(line)
    await asyncio.sleep(0.5)
    sim.findings["timeline"] = [term.to_dict() for term in election.timeline]
    meeting = sim.conversation.meeting if sim.conversation is not None else None
    sim.findings["meeting_lines"] = [
        (s.text, s.speaker)
        for s in (meeting.log if meeting is not None else [])
        if s.role == "user"
    ]
    sim.findings["primary_identities"] = [t.identity for t in election.timeline]
    for microphone in microphones.values():
        await microphone.aclose()


async def _wait_for_election(sim: Simulation) -> SessionElection:
    await sim.room.wait_until(lambda _room: sim.conversation is not None, 10.0)
    return _election(sim)


class HasFindings(Protocol):
    """What ``check_multi`` reads of a :class:`Simulation`."""

    findings: dict[str, Any]


def check_multi(obs: Observations, sim: HasFindings) -> list[str]:
    """The primary timeline has no gap and no overlap; every line is its speaker's."""
    problems: list[str] = []
    terms = sim.findings.get("timeline", [])
    obs.timings["primary_timeline"] = terms
    if len(terms) < 2:
        problems.append(f"expected a handover, saw {len(terms)} primary terms")
    for before, after in itertools.pairwise(terms):
        if before["ended_at"] is None or before["ended_at"] != after["started_at"]:
            problems.append("the primary timeline has a gap or an overlap between two terms")
    if terms and terms[-1]["ended_at"] is not None:
        problems.append("no primary at the end while sessions ran")
    identities = sim.findings.get("primary_identities", [])
    if identities[:1] != [PEOPLE[0]] or PEOPLE[0] in identities[1:]:
        problems.append("the first participant's session was not primary first, or came back")
    spoken = {line: who for who, lines in LINES.items() for line in lines}
    spoken.update({line: who for who, line in LINES_AFTER.items()})
    heard = [s for s in obs.segments if s["source"] == "transcription" and s["role"] == "user"]
    for segment in heard:
        if spoken.get(segment["text"]) != segment["speaker"]:
            problems.append("a transcript line is attributed to someone who did not say it")
    finals = [s["text"] for s in heard if s["final"]]
    missing = set(spoken) - set(finals)
    if missing:
        problems.append(f"{len(missing)} spoken lines never reached the transcript")
    repeated = sorted({text for text in finals if finals.count(text) > 1})
    if repeated:
        problems.append(f"{len(repeated)} spoken lines were published more than once")
    meeting = sim.findings.get("meeting_lines", [])
    obs.timings["meeting_lines"] = len(meeting)
    if sorted(meeting) != sorted(spoken.items()):
        problems.append("the room's transcript does not hold every spoken line once")
    return problems
