"""The shared room output: what a frontend sees of the agent's voice and transcript, and what a
re-joining frontend gets back from ``transcript.history``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, room_io
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.events import UserInputTranscribedEvent

from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience.backoff import (
    RestartPolicy,
)
from {{ cookiecutter.package_name }}.resilience.room_output import (
    RoomOutput,
    _AgentTranscriptOutput,
)
from {{ cookiecutter.package_name }}.resilience.rpc import (
    MAX_RESPONSE_BYTES,
    METHOD_HISTORY,
    history_page,
)
from {{ cookiecutter.package_name }}.resilience.supervisor import (
    SessionSupervisor,
)
from {{ cookiecutter.package_name }}.resilience.transcript import (
    TranscriptLog,
    TranscriptSegment,
)
from {{ cookiecutter.package_name }}.testing import (
    ScriptedLLM,
    ScriptedTTS,
    SimulatedRoom,
)

USER = "user-1"
AGENT = "agent"


def transcribed(text: str, *, final: bool) -> UserInputTranscribedEvent:
    return UserInputTranscribedEvent(transcript=text, is_final=final)


async def test_user_transcription_keeps_flowing_across_sessions() -> None:
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER, publish_microphone=True)
    mic_sid = next(iter(room.remote_participants[USER].track_publications))
    with fake_job_context(room=room, agent_identity=AGENT):
        output = RoomOutput(room, USER)
        await output.start()
        for n in range(2):  # the same output, a fresh session each time
            session: AgentSession = AgentSession(llm=ScriptedLLM(), tts=ScriptedTTS())
            await output.start_session(
                session,
                Agent(instructions="test"),
                room_options=room_io.RoomOptions(participant_identity=USER),
            )
            session.emit("user_input_transcribed", transcribed(f"hello {n}", final=False))
            session.emit("user_input_transcribed", transcribed(f"hello {n}, again", final=True))

            def heard(r: SimulatedRoom, n: int = n) -> bool:
                return any(s.text == f"hello {n}, again" and s.final for s in r.transcript())

            await room.wait_until(heard)
            await session.aclose()
            await output.release(session)
        await output.aclose()
        await room.disconnect()

    users = [s for s in room.transcript() if s.role == "user"]
    assert [(s.speaker, s.text, s.final, s.track_id) for s in users] == [
        (USER, "hello 0, again", True, mic_sid),
        (USER, "hello 1, again", True, mic_sid),
    ]
    # RoomIO published nothing: the one agent track is the shared output's
    assert [t.sid for t in room.published_tracks if t.participant_identity == AGENT] == [
        output.track_sid
    ]


async def test_history_rpc_pages_through_the_whole_transcript() -> None:
    replies = ["Hello!"] + [f"Answer {n}." for n in range(4)]
    stack = ModelStack(
        name="scripted", llm=ScriptedLLM(replies), tts=ScriptedTTS(), turn_detection="manual"
    )
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    room.add_participant("stranger")
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        supervisor = SessionSupervisor(
            room,
            USER,
            models=stack,
            agent_factory=lambda chat_ctx: Agent(instructions="test", chat_ctx=chat_ctx),
            job_ctx=ctx,
            policy=RestartPolicy(base_delay=0, max_delay=0),
        )
        await supervisor.start(greeting="Greet the user.")
        for n in range(4):

            def answered(_: SimulatedRoom, n: int = n) -> bool:
                # the greeting, then a question and its answer per turn
                return len(supervisor.transcript) == 1 + 2 * n

            await room.wait_until(answered)
            if n == 2:
                await supervisor.restart("mid-conversation")
            await room.send_chat(USER, f"Question {n}?")
        await room.wait_until(lambda r: len(supervisor.transcript) == 9)

        pages, after = [], 0
        while True:
            page = json.loads(
                await room.perform_rpc_as(
                    USER, METHOD_HISTORY, json.dumps({"after": after, "limit": 3})
                )
            )
            pages.append(page["segments"])
            if page["next"] is None:
                break
            after = page["next"]

        with pytest.raises(rtc.RpcError) as foreign:
            await room.perform_rpc_as("stranger", METHOD_HISTORY, "")
        for bad in ("not json", "[1]", '{"limit": 0}', '{"limit": 101}', '{"after": -1}'):
            with pytest.raises(rtc.RpcError) as invalid:
                await room.perform_rpc_as(USER, METHOD_HISTORY, bad)
            assert invalid.value.code == 4000
        first_page = json.loads(await room.perform_rpc_as(USER, METHOD_HISTORY, ""))
        await supervisor.aclose()
        await room.disconnect()

    assert foreign.value.code == 4003
    assert [len(p) for p in pages] == [3, 3, 3]
    segments = [s for page in pages for s in page]
    assert [s["seq"] for s in segments] == list(range(1, 10))
    assert first_page["segments"] == segments and first_page["next"] is None
    expected = [("agent", "Hello!")]
    for n in range(4):
        expected += [("user", f"Question {n}?"), ("agent", f"Answer {n}.")]
    assert [(s["role"], s["text"]) for s in segments] == expected
    # agent lines carry the segment ids the live streams carried, so a client can dedupe
    wire_ids = {s.segment_id for s in room.transcript() if s.role == "agent"}
    assert {s["id"] for s in segments if s["role"] == "agent"} == wire_ids
    assert {s["track_id"] for s in segments if s["role"] == "agent"} == {supervisor.track_sid}


def test_history_page_stays_under_the_rpc_payload_limit() -> None:
    log = TranscriptLog()
    for n in range(20):
        log.append(id=f"SG_{n}", role="agent", speaker=AGENT, text=f"{n} " + "é" * 3000)
    log.append(id="SG_huge", role="agent", speaker=AGENT, text="ü" * 20_000)

    page = json.loads(history_page(log, json.dumps({"limit": 100})))
    assert len(page["segments"]) < 20 and page["next"] == page["segments"][-1]["seq"]
    seen = page["segments"]
    while page["next"] is not None:
        raw = history_page(log, json.dumps({"after": page["next"], "limit": 100}))
        assert len(raw.encode()) <= MAX_RESPONSE_BYTES
        page = json.loads(raw)
        seen += page["segments"]
    assert [s["seq"] for s in seen] == list(range(1, 22))
    huge = seen[-1]
    assert huge["truncated"] is True and 0 < len(huge["text"]) < 20_000
    assert set(huge["text"]) == {"ü"}  # cut on a character boundary


def test_transcript_log_is_bounded_ordered_and_restorable() -> None:
    log = TranscriptLog(max_segments=3)
    for n in range(5):
        log.append(id=f"s{n}", role="user" if n % 2 else "agent", speaker="x", text=str(n))
    assert [s.seq for s in log] == [3, 4, 5]
    assert (log.oldest_seq, log.latest_seq) == (3, 5)
    assert [s.seq for s in log.after(3, limit=1)] == [4]

    kept = [TranscriptSegment.from_dict(s.to_dict()) for s in log]
    restored = TranscriptLog(initial=reversed(kept))
    assert [s.seq for s in restored] == [3, 4, 5]
    assert restored.append(id="s5", role="agent", speaker="x", text="5").seq == 6

    bad: list[dict[str, Any]] = [{"seq": 1}, {**kept[0].to_dict(), "role": "robot"}]
    for data in bad:
        with pytest.raises(ValueError):
            TranscriptSegment.from_dict(data)
    with pytest.raises(ValueError):
        TranscriptLog(max_segments=0)


async def test_agent_line_is_finalised_once_and_logged_even_when_the_room_is_gone() -> None:
    room = SimulatedRoom(agent_identity=AGENT)
    logged: list[tuple[str, str, str | None]] = []

    async def track_sid() -> str:
        return "TR_shared"

    text = _AgentTranscriptOutput(room, track_sid, lambda *line: logged.append(line))
    await text.capture_text("Hello ")
    await text.capture_text("there.")
    text.flush()
    text.flush()  # a second flush of the same line must not finalise it again
    await text.drain()
    await room.disconnect()
    await text.capture_text("Said after the room closed.")
    await text.aclose()

    streams = [s for s in room.text_streams if s.topic == "lk.transcription"]
    assert [(s.text, s.attributes) for s in streams] == [
        (
            "Hello there.",
            {
                "lk.segment_id": logged[0][0],
                "lk.transcription_final": "true",
                "lk.transcribed_track_id": "TR_shared",
            },
        )
    ]
    assert [(text, track) for _, text, track in logged] == [
        ("Hello there.", "TR_shared"),
        ("Said after the room closed.", "TR_shared"),
    ]
    assert logged[0][0] != logged[1][0]
