"""Primary election in one job, with real AgentSessions in a simulated room.

A supervised conversation (conversational) and listen-only transcribers, one per
participant, register in one SessionElection. What is checked is what livekit does with the
designation: which session holds the SessionHost (the ``lk.agent.session`` byte stream
handler, counted on the room), which one records, and what the job's session report holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit import rtc
from livekit.agents import Agent, AgentSession, JobContext, room_io
from livekit.agents.testing import fake_job_context
from livekit.agents.types import recording_enabled

from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience import _livekit
from {{ cookiecutter.package_name }}.resilience.backoff import (
    RestartPolicy,
)
from {{ cookiecutter.package_name }}.resilience.primary.election import (
    SessionElection,
    SupervisedConversation,
)
from {{ cookiecutter.package_name }}.resilience.supervisor import (
    SessionSupervisor,
)
from {{ cookiecutter.package_name }}.resilience.transcribers import (
    TranscriberPool,
)
from {{ cookiecutter.package_name }}.testing import (
    ScriptedLLM,
    ScriptedTTS,
    SimulatedRoom,
)
from {{ cookiecutter.package_name }}.testing.room.speech import (
    SpeechCodebook,
    ToneSTT,
)

AGENT = "agent"
HOST_TOPIC = "lk.agent.session"
CHAT_USER = "p0"


class HostCountingRoom(SimulatedRoom):
    """Counts live SessionHost registrations (the byte stream handler of ``lk.agent.session``)."""

    def __init__(self) -> None:
        super().__init__(agent_identity=AGENT)
        self.hosts_live = 0
        self.hosts_max = 0
        self.host_refusals = 0

    def register_byte_stream_handler(
        self, topic: str, handler: Callable[[rtc.ByteStreamReader, str], None]
    ) -> None:
        try:
            super().register_byte_stream_handler(topic, handler)
        except ValueError:
            self.host_refusals += topic == HOST_TOPIC
            raise
        if topic == HOST_TOPIC:
            self.hosts_live += 1
            self.hosts_max = max(self.hosts_max, self.hosts_live)

    def unregister_byte_stream_handler(self, topic: str) -> None:
        if topic == HOST_TOPIC and self._byte_stream_handlers.get(topic):
            self.hosts_live -= 1
        super().unregister_byte_stream_handler(topic)


class Job:
    """One job: an election, a transcriber pool, and (on demand) a conversation with p0."""

    def __init__(self, room: HostCountingRoom, ctx: JobContext) -> None:
        self.room, self.ctx = room, ctx
        self.election = SessionElection(ctx, room=room)
        self.pool = TranscriberPool(
            room,
            stt_factory=lambda: ToneSTT(SpeechCodebook()),
            election=self.election,
            job_ctx=ctx,
        )
        self.supervisor: SessionSupervisor | None = None
        self.llm = ScriptedLLM(["Hello there.", "Noted.", "Sure."])

    async def start_conversation(self, greeting: str | None = None) -> SessionSupervisor:
        stack = ModelStack(
            name="scripted", llm=self.llm, tts=ScriptedTTS(), turn_detection="manual"
        )
        supervisor = SessionSupervisor(
            self.room,
            CHAT_USER,
            models=stack,
            agent_factory=lambda chat_ctx: Agent(instructions="test", chat_ctx=chat_ctx),
            job_ctx=self.ctx,
            room_options=room_io.RoomOptions(close_on_disconnect=False),
            policy=RestartPolicy(max_restarts=1000, base_delay=0, max_delay=0),
        )
        async with self.election.starting(SupervisedConversation(supervisor, CHAT_USER)):
            await supervisor.start(greeting=greeting)
        self.supervisor = supervisor
        return supervisor

    async def settle(self) -> None:
        for _ in range(3):
            await self.pool.settled()
            await self.election.settled()
            await asyncio.sleep(0.02)

    def sessions(self) -> list[AgentSession]:
        return [m.session for m in self.election.members if m.session is not None]

    def check(self) -> None:
        """The invariants: one primary, holding the only SessionHost and the recording."""
        assert self.room.hosts_max <= 1 and self.room.host_refusals == 0
        sessions = self.sessions()
        primary = self.election.primary
        if not sessions:
            assert primary is None and self.room.hosts_live == 0
            return
        assert primary is not None and primary.session is not None
        assert _livekit.primary_session(self.ctx) is primary.session
        for session in sessions:
            is_primary = session is primary.session
            assert _livekit.has_session_host(session) is is_primary
            records = self.ctx.job.enable_recording and is_primary
            assert recording_enabled(session.options.recording_options) is records
        assert self.room.hosts_live == 1

    async def aclose(self) -> None:
        await self.election.aclose()
        await self.pool.aclose()
        if self.supervisor is not None:
            await self.supervisor.aclose()
        await self.room.disconnect()


async def test_conversation_is_primary_and_transcribers_start_without_host_or_recording() -> None:
    room = HostCountingRoom()
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        ctx.job.enable_recording = True  # so "the primary records" is observable
        job = Job(room, ctx)
        job.pool.follow()
        for who in ("p1", CHAT_USER, "p2"):
            room.add_participant(who)
        await job.settle()
        assert job.election.primary is job.pool.transcribers["p1"]  # the earliest, for now
        job.check()

        supervisor = await job.start_conversation()
        await job.settle()
        # a conversation outranks listen-only sessions: it took the designation on start
        assert job.election.primary is not None
        assert job.election.primary.session is supervisor.session
        job.check()
        assert [t.role for t in job.election.timeline] == ["listen-only", "conversational"]
        assert len(job.sessions()) == 4
        await job.aclose()


async def test_primary_participant_leaving_promotes_a_transcriber_and_the_report_covers_it(
    caplog,
) -> None:
    room = HostCountingRoom()
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        ctx.job.enable_recording = True
        job = Job(room, ctx)
        room.add_participant(CHAT_USER)
        supervisor = await job.start_conversation(greeting="Greet the user.")
        await room.wait_until(lambda r: len(supervisor.transcript) >= 1)
        await room.send_chat(CHAT_USER, "Please note the budget is final.")
        await room.wait_until(lambda r: len(supervisor.transcript) >= 3)
        job.pool.follow()
        room.add_participant("p1")
        await job.settle()
        job.check()

        room.remove_participant(CHAT_USER)  # the conversation waits for a return (no close)
        await job.settle()
        job.check()
        promoted = job.pool.transcribers["p1"]
        assert job.election.primary is promoted
        assert not supervisor.closed and supervisor.session is not None
        assert [t.reason for t in job.election.timeline][-1] == "primary participant left"

        # the job's report (made from the primary) still holds the conversation so far
        report = ctx.make_session_report()
        texts = [m.text_content for m in report.chat_history.messages()]
        assert "Please note the budget is final." in texts and "Noted." in texts

        room.add_participant(CHAT_USER)  # back: the conversation outranks again
        await job.settle()
        job.check()
        assert job.election.primary is not None
        assert job.election.primary.session is supervisor.session
        assert "already set" not in caplog.text
        await job.aclose()


async def test_no_primary_once_every_session_closed_and_the_next_start_takes_it() -> None:
    room = HostCountingRoom()
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        job = Job(room, ctx)
        job.pool.follow()
        room.add_participant("p1")
        await job.settle()
        room.remove_participant("p1")
        await job.settle()
        job.check()
        assert job.election.primary is None
        # livekit alone would leave the closed session primary forever; the election frees it
        room.add_participant("p2")
        await job.settle()
        job.check()
        assert job.election.primary is job.pool.transcribers["p2"]
        await job.aclose()


STEPS = st.lists(
    st.tuples(st.sampled_from(["join", "leave"]), st.sampled_from([CHAT_USER, "p1", "p2"])),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=STEPS)
def test_any_join_and_leave_order_keeps_one_primary_holding_the_only_host(steps) -> None:
    """After every step: at most one primary, the SessionHost registered at most once (never
    refused), only the primary records, and a primary whenever a session runs."""
    logging.getLogger("livekit").setLevel(logging.ERROR)

    async def run() -> None:
        room = HostCountingRoom()
        with fake_job_context(room=room, agent_identity=AGENT) as ctx:
            ctx.job.enable_recording = True
            job = Job(room, ctx)
            job.pool.follow()
            for action, who in steps:
                present = who in room.remote_participants
                if action == "join" and not present:
                    room.add_participant(who)
                    if who == CHAT_USER and job.supervisor is None:
                        await job.start_conversation()
                elif action == "leave" and present:
                    room.remove_participant(who)
                await job.settle()
                job.check()
            await job.aclose()

    asyncio.run(run())


def test_a_participant_kind_agent_gets_no_transcriber() -> None:
    async def run() -> None:
        room = HostCountingRoom()
        with fake_job_context(room=room, agent_identity=AGENT) as ctx:
            job = Job(room, ctx)
            job.pool.follow()
            room.add_participant("other-agent", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
            await job.settle()
            assert job.pool.transcribers == {} and job.election.primary is None
            await job.aclose()

    asyncio.run(run())
