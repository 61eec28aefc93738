"""What every simulated conversation must show a user, checked on the observations.

Each check returns human-readable violations (empty when the invariant holds), so
`simulate` can print them and exit non-zero, and tests can assert on them.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
)

if TYPE_CHECKING:
    from .harness import Observations

AGENT = "agent"


def check_conversation(
    obs: Observations, user_lines: list[str], expected_roles: list[str]
) -> list[str]:
    """All the invariants of a one-participant conversation."""
    return [
        *one_agent_audio_track(obs),
        *transcripts_name_the_agent_track(obs),
        *segments_finalised_once(obs),
        *turns_as_expected(obs, expected_roles),
        *model_saw_every_turn(obs, user_lines),
    ]


def agent_tracks(obs: Observations) -> list[dict]:
    return [t for t in obs.tracks if t["participant_identity"] == AGENT and t["kind"] == "audio"]


def one_agent_audio_track(obs: Observations) -> list[str]:
    tracks = agent_tracks(obs)
    if len(tracks) != 1:
        sids = ", ".join(t["sid"] for t in tracks) or "none"
        return [f"expected one agent audio track, saw {len(tracks)} ({sids})"]
    return []


def transcripts_name_the_agent_track(obs: Observations) -> list[str]:
    sids = {t["sid"] for t in agent_tracks(obs)}
    wrong = [
        s["stream_id"]
        for s in obs.transcription_streams
        if s["sender"] == AGENT
        and s["attributes"].get(ATTRIBUTE_TRANSCRIPTION_TRACK_ID) not in sids
    ]
    return [f"{len(wrong)} agent transcription streams name another track"] if wrong else []


def segments_finalised_once(obs: Observations) -> list[str]:
    finals = Counter(
        s["attributes"].get(ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID)
        for s in obs.transcription_streams
        if s["sender"] == AGENT and s["attributes"].get(ATTRIBUTE_TRANSCRIPTION_FINAL) == "true"
    )
    agent_segments = {s["segment_id"] for s in obs.segments if s["role"] == "agent"}
    problems = [f"segment {sid} finalised {n} times" for sid, n in finals.items() if n != 1]
    problems += [f"segment {sid} never finalised" for sid in sorted(agent_segments - set(finals))]
    return problems


def turns_as_expected(obs: Observations, expected_roles: list[str]) -> list[str]:
    """Exactly the expected turns: no second greeting, no missing or doubled reply."""
    speakers = [s["role"] for s in obs.segments if s["final"]]
    if speakers != expected_roles:
        return [f"expected turns {'/'.join(expected_roles)}, saw {'/'.join(speakers) or 'nothing'}"]
    return []


def model_saw_every_turn(obs: Observations, user_lines: list[str]) -> list[str]:
    if not user_lines:
        return []
    if not obs.model_requests:
        return ["the model was never asked"]
    seen = [i["text"] for i in obs.model_requests[-1] if i["role"] == "user"]
    missing = [line for line in user_lines if line not in seen]
    if missing:
        return [f"the model's last request lacks {len(missing)} of the user's turns"]
    return []
