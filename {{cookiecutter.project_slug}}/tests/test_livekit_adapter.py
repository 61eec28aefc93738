"""The livekit-agents internals and behaviours the supervisor relies on, pinned.

``resilience/_livekit.py`` is the one module touching livekit internals. These tests exercise
each of its functions, and the livekit behaviours the design is built around, against the
installed livekit-agents. After an upgrade, a failure here names what changed; fix the
adapter (or drop a workaround livekit no longer needs) before anything else.
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import version

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, llm, room_io
from livekit.agents.testing import fake_job_context
from livekit.agents.voice import io

from {{ cookiecutter.package_name }}.resilience import _livekit
from {{ cookiecutter.package_name }}.testing import (
    ScriptedLLM,
    ScriptedTTS,
    SimulatedRoom,
)

USER = "user-1"
AGENT = "agent"
LONG_REPLY = "A reply long enough to be cut short when its session closes. " * 8


def agent_tracks(room: SimulatedRoom) -> list[str]:
    return [t.sid for t in room.published_tracks if t.participant_identity == AGENT]


def new_session(model: ScriptedLLM | None = None) -> AgentSession:
    return AgentSession(
        llm=model or ScriptedLLM(), tts=ScriptedTTS(), turn_handling={"turn_detection": "manual"}
    )


def test_checked_version_is_installed() -> None:
    assert version("livekit-agents") == _livekit.CHECKED_VERSION, (
        "livekit-agents was upgraded: run this file, fix resilience/_livekit.py, then bump "
        "CHECKED_VERSION"
    )


async def test_roomio_publishes_a_new_track_on_every_start() -> None:
    """Why RoomOutput exists: a same-object restart changes the agent's track SID and leaves
    the old track published; a second session in the job is not primary."""
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        session = new_session()
        await session.start(agent=Agent(instructions="t"), room=room)
        await session.aclose()
        await session.start(agent=Agent(instructions="t"), room=room)
        fresh = new_session()
        await session.aclose()
        await fresh.start(agent=Agent(instructions="t"), room=room)
        assert _livekit.primary_session(ctx) is session  # never handed over by livekit
        await fresh.aclose()
        await room.disconnect()
    tracks = agent_tracks(room)
    assert len(tracks) == 3 and len(set(tracks)) == 3
    assert all(t.is_published for t in room.published_tracks)


async def test_audio_output_publishes_once_and_reports_its_sid() -> None:
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    output = _livekit.new_audio_output(room, track_name="agent-voice")
    assert isinstance(output, io.AudioOutput)
    assert _livekit.published_track_sid(output) is None
    await _livekit.start_audio_output(output)
    assert _livekit.subscribed(output).done()
    sid = _livekit.published_track_sid(output)
    assert agent_tracks(room) == [sid]
    assert room.published_tracks[0].name == "agent-voice"
    assert room.published_tracks[0].source == "microphone"
    await _livekit.close_audio_output(output)
    await room.disconnect()


async def test_user_transcription_output_speaks_for_the_participant() -> None:
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER, publish_microphone=True)
    output = _livekit.new_user_transcription_output(room, USER)
    assert isinstance(output, io.TextOutput)
    await output.capture_text("hello")
    output.flush()
    await _livekit.close_text_output(output)
    await room.disconnect()
    [segment] = room.transcript()
    assert (segment.speaker, segment.text, segment.final) == (USER, "hello", True)


async def test_primary_handover() -> None:
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        first = new_session()
        await first.start(agent=Agent(instructions="t"), room=room)
        assert _livekit.primary_session(ctx) is first
        await first.aclose()

        second = new_session()
        assert _livekit.hand_over_primary(ctx, first, second)
        await second.start(agent=Agent(instructions="t"), room=room)
        assert _livekit.primary_session(ctx) is second  # start() kept it

        # another conversation's primary is left alone
        bystander = new_session()
        assert not _livekit.hand_over_primary(ctx, first, bystander)
        assert _livekit.primary_session(ctx) is second
        await second.aclose()
        await room.disconnect()


async def test_fresh_session_history_starts_empty_and_aclose_commits_a_cut_reply() -> None:
    """The supervisor keeps its own context (fresh history is empty) and reads a closed
    session's history after ``aclose()`` (the cut reply is committed during it)."""
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    with fake_job_context(room=room, agent_identity=AGENT):
        session = new_session(ScriptedLLM([LONG_REPLY]))
        await session.start(agent=Agent(instructions="t"), room=room)
        session.generate_reply(user_input="Talk for a while.")
        await room.wait_until(
            lambda r: any(len(s.text.split()) > 5 and not s.final for s in r.transcript())
        )
        await session.aclose()
        cut = session.history.items[-1]
        assert isinstance(cut, llm.ChatMessage) and (cut.role, cut.interrupted) == (
            "assistant",
            True,
        )
        said = cut.text_content
        assert said is not None and LONG_REPLY.startswith(said) and said != LONG_REPLY

        fresh = new_session()
        await fresh.start(agent=Agent(instructions="t", chat_ctx=session.history), room=room)
        assert [i for i in fresh.history.items if i.type == "message"] == []
        await fresh.aclose()
        await room.disconnect()


async def test_unhook_audio_wrappers_stops_a_dead_wrapper_hearing_the_sink() -> None:
    room = SimulatedRoom(agent_identity=AGENT)
    base = _livekit.new_audio_output(room)

    class Wrapper(io.AudioOutput):
        def __init__(self, next_in_chain: io.AudioOutput) -> None:
            super().__init__(
                label="wrapper",
                next_in_chain=next_in_chain,
                capabilities=io.AudioOutputCapabilities(pause=True),
            )
            self.heard = 0

        def on_playback_started(self, *, created_at: float) -> None:
            self.heard += 1

        async def capture_frame(self, frame: rtc.AudioFrame) -> None: ...
        def flush(self) -> None: ...
        def clear_buffer(self) -> None: ...

    inner = Wrapper(base)
    outer = Wrapper(inner)
    base.on_playback_started(created_at=0.0)
    assert inner.heard == 1
    assert _livekit.unhook_audio_wrappers(outer, base) == 1
    base.on_playback_started(created_at=0.0)
    assert inner.heard == 1
    assert _livekit.unhook_audio_wrappers(None, base) == 0
    assert _livekit.unhook_audio_wrappers(base, base) == 0
    await _livekit.close_audio_output(base)
    await room.disconnect()


def test_room_options_still_have_the_fields_room_output_switches_off() -> None:
    fields = {f.name for f in dataclasses.fields(room_io.RoomOptions)}
    assert {"audio_output", "text_output", "delete_room_on_close", "participant_identity"} <= fields


def test_missing_internals_fail_loudly() -> None:
    with pytest.raises(_livekit.LivekitInternalsChanged, match="_primary_agent_session"):
        _livekit.primary_session(object())  # type: ignore[arg-type]  # not a JobContext, on purpose
