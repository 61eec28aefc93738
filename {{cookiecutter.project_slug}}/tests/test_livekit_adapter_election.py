"""The livekit internals the election relies on (resilience/_livekit.py), pinned.

``set_primary`` writes ``JobContext._primary_agent_session`` and ``has_session_host`` reads
``AgentSession._session_host``; these tests show what livekit does with them, so an upgrade
that changes either fails here first.
"""

from __future__ import annotations

from livekit.agents import Agent, AgentSession, llm, room_io
from livekit.agents.testing import fake_job_context
from livekit.agents.types import recording_enabled

from {{ cookiecutter.package_name }}.resilience import _livekit
from {{ cookiecutter.package_name }}.testing import ScriptedLLM, SimulatedRoom

AGENT = "agent"
FIRST = room_io.RoomOptions(audio_output=False)
QUIET = room_io.RoomOptions(audio_output=False, text_input=False)  # the chat topic is taken


def new_session() -> AgentSession:
    return AgentSession(llm=ScriptedLLM(), turn_handling={"turn_detection": "manual"})


async def test_the_designation_decides_host_and_recording_of_the_next_start() -> None:
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant("user-1")
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        ctx.job.enable_recording = True
        first = new_session()
        await first.start(Agent(instructions="t"), room=room, room_options=FIRST)
        assert _livekit.primary_session(ctx) is first and _livekit.has_session_host(first)
        assert recording_enabled(first.options.recording_options)

        # another session is designated: the next start gets neither host nor recording
        second = new_session()
        await second.start(Agent(instructions="t"), room=room, room_options=QUIET)
        assert not _livekit.has_session_host(second)
        assert not recording_enabled(second.options.recording_options)
        await first.aclose()
        assert not _livekit.has_session_host(first)  # closing frees the host

        # None: the next start is primary again (livekit never does this by itself)
        _livekit.set_primary(ctx, None)
        third = new_session()
        await third.start(Agent(instructions="t"), room=room, room_options=QUIET)
        assert _livekit.primary_session(ctx) is third and _livekit.has_session_host(third)
        assert recording_enabled(third.options.recording_options)

        # a never-started session as the designation reserves the seat: nobody takes it
        _livekit.set_primary(ctx, AgentSession())
        await third.aclose()
        fourth = new_session()
        await fourth.start(Agent(instructions="t"), room=room, room_options=QUIET)
        assert not _livekit.has_session_host(fourth)
        await second.aclose()
        await fourth.aclose()
    await room.disconnect()


async def test_history_inserted_before_the_report_is_in_the_report() -> None:
    """The election seeds a new primary's history; the job's report reads session.history."""
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant("user-1")
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        session = new_session()
        await session.start(Agent(instructions="t"), room=room, room_options=FIRST)
        earlier = llm.ChatMessage(role="user", content=["said before the handover"])
        session.history.insert(earlier)
        report = ctx.make_session_report()
        assert [m.text_content for m in report.chat_history.messages()] == [
            "said before the handover"
        ]
        await session.aclose()
    await room.disconnect()
