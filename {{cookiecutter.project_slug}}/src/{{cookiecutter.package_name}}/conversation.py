"""What one job runs: a participant's supervised conversation and what goes with it.

``worker.run_job`` wires the parts (:class:`JobParts`, the recorder, presence, Gemini resume)
and hands them to a :class:`Conversation`, which opens the supervised conversation (and
reopens it when the participant comes back after it gave up), welcomes back, adopts a join
the store answered late, keeps the model's context within its budget (``summary.py``), and
on ``aclose`` ends it all and saves what is pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from livekit.agents import AgentSession, JobContext, llm, room_io

from . import metrics
from .assistant import WELCOME_BACK, Assistant
from .backends import Backends
from .devices import DeviceFollower
from .log import get_logger
from .models import ModelStack
from .resilience.apology import GAVE_UP
from .resilience.events import ClosedEvent, SessionSpec
from .resilience.gemini.resume import GeminiResume
from .resilience.primary.election import SessionElection, SupervisedConversation
from .resilience.primary.room_lease import RoomPrimacy
from .resilience.returning import (
    ConversationRecorder,
    ParticipantPresence,
    chat_ctx_from_record,
    item_to_dict,
)
from .resilience.rpc import RpcRoutes
from .resilience.store import FencedStore, JoinKind, JoinOutcome, StoreError
from .resilience.supervisor import SessionSupervisor
from .resilience.transcribers import MeetingTranscript, TranscriberPool
from .resilience.transcript import TranscriptSegment
from .settings import Settings
from .summary import ConversationSummarizer, SummaryBudget, summary_model

__all__ = ["Conversation", "JobParts", "ModelFactory"]

logger = get_logger(__name__)

ModelFactory = Callable[[], ModelStack]


@dataclass
class JobParts:
    """What the job owns for the whole room, whoever the participant: where records and
    leases are, the room lease it holds, its session election and its RPC routes."""

    backends: Backends
    primacy: RoomPrimacy
    election: SessionElection
    routes: RpcRoutes
    writer: FencedStore  # the store, every write fenced by the room lease
    owns_backends: bool = True


class Conversation:
    """What one job runs: the participant's supervised conversation (reopened when they come
    back after it gave up), and in a multi-participant room the room's transcript and the
    transcribers. ``aclose`` ends it all and saves what is pending."""

    def __init__(
        self,
        ctx: JobContext,
        settings: Settings,
        identity: str,
        models: ModelFactory,
        parts: JobParts,
        recorder: ConversationRecorder,
        presence: ParticipantPresence,
        gemini: GeminiResume,
    ) -> None:
        self.ctx, self.settings, self.identity, self.models = ctx, settings, identity, models
        self.parts, self.recorder, self.presence, self.gemini = parts, recorder, presence, gemini
        self.store, self.election, self.primacy = (
            parts.backends.store,
            parts.election,
            parts.primacy,
        )
        # the device the participant uses now (another one with their user key may take over)
        self.devices = DeviceFollower(identity, parts.routes)
        self.meeting: MeetingTranscript | None = None
        self.transcribers: TranscriberPool | None = None
        self._supervisor: SessionSupervisor | None = None
        self._late_join: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None
        # older turns folded into a stored summary once the model's context passes its budget
        self.summarizer = ConversationSummarizer(
            SummaryBudget.from_settings(settings),
            lambda: summary_model(settings, models),
            on_summary=lambda summary: recorder.add(items=[item_to_dict(summary)]),
        )

    @property
    def supervisor(self) -> SessionSupervisor:
        """The participant's supervisor (a new one after a reopen)."""
        if self._supervisor is None:
            raise RuntimeError("the conversation has not been opened")
        return self._supervisor

    @property
    def session(self) -> AgentSession | None:
        """The current AgentSession (it changes on every restart)."""
        return self._supervisor.session if self._supervisor is not None else None

    async def open(
        self,
        *,
        greeting: str,
        chat_ctx: llm.ChatContext | None = None,
        transcript: Iterable[TranscriptSegment] = (),
    ) -> None:
        """Start a supervised conversation with the participant, registered in the election."""
        supervisor = SessionSupervisor(
            self.ctx.room,
            self.identity,
            models=self.models,
            agent_factory=lambda chat_ctx: Assistant(chat_ctx=chat_ctx),
            job_ctx=self.ctx,
            # a refresh or network drop is not the end: presence waits for the return
            room_options=room_io.RoomOptions(close_on_disconnect=False),
            note_restarts=self.settings.note_restarts,
            initial_transcript=transcript,
            before_start=self._before_start,
            routes=self.parts.routes,
        )
        if self.devices.current != self.identity:  # a reopen after another device took over
            supervisor.set_participant(self.devices.current)
        # cut Gemini replies are marked interrupted before the recorder stores them
        supervisor.on("session_started", lambda ev: self.gemini.watch(ev.session))
        supervisor.on("session_started", lambda ev: self.recorder.attach(ev.session))
        supervisor.on("session_started", lambda ev: self.summarizer.attach(ev.session))
        supervisor.on(
            "transcript_segment", lambda ev: self.recorder.add(transcript=[ev.segment.to_dict()])
        )
        if (meeting := self.meeting) is not None:
            supervisor.on("transcript_segment", lambda ev: meeting.add_segment(ev.segment))
        supervisor.on("closed", self._on_closed)
        metrics.watch_supervisor(supervisor)
        self._supervisor = supervisor
        if greeting == WELCOME_BACK:
            metrics.WELCOME_BACKS.inc()
        async with self.election.starting(_DeviceConversation(supervisor, self.devices)):
            await supervisor.start(greeting=greeting, chat_ctx=chat_ctx)

    async def _before_start(self, spec: SessionSpec) -> None:
        self.summarizer.before_start(spec)  # every session starts from the compact context
        await self.gemini.before_start(spec)

    def welcome_back(self) -> None:
        """The participant came back: welcome them (once per return), or reopen the
        conversation if it gave up (its restart budget was spent) while they were away."""
        metrics.RETURNING.inc()
        supervisor = self.supervisor
        if supervisor.closed:
            self._spawn_reopen(supervisor)
        elif supervisor.session is not None:
            metrics.WELCOME_BACKS.inc()
            supervisor.session.generate_reply(instructions=WELCOME_BACK)

    def switch_device(self, identity: str) -> None:
        """Listen to another of the participant's devices from now on (it joined with their
        user key, or the one in use left): in this session and every later one."""
        self.devices.switch(identity, self._supervisor)

    def _spawn_reopen(self, closed: SessionSupervisor) -> None:
        async def reopen() -> None:
            logger.info("participant came back to a conversation that gave up; reopening it")
            await self.open(
                greeting=WELCOME_BACK,
                chat_ctx=closed.chat_ctx(),
                transcript=list(closed.transcript),
            )

        self._late_join = asyncio.create_task(reopen(), name="reopen_conversation")

    def end_supervisor(self, reason: str) -> None:
        """End the participant's conversation but not the job (the others are transcribed)."""
        self._ending = asyncio.create_task(self.supervisor.aclose(reason), name="end_conversation")

    def _on_closed(self, ev: ClosedEvent) -> None:
        if ev.reason == GAVE_UP:
            # the agent apologised; the participant gets a fresh session when they reconnect
            logger.info("conversation gave up; it reopens when the participant comes back")
        elif self.settings.room_mode != "multi-participant":
            # one-to-one: the conversation is the job; with transcribers the job outlives it
            self.ctx.shutdown(reason=f"conversation closed: {ev.reason}")

    def adopt_late_join(self, settled: asyncio.Future[JoinOutcome]) -> None:
        """When the store answers a join it could not answer at once, continue the earlier
        conversation it knew of: its turns join the model's context, with no second greeting."""

        async def adopt() -> None:
            try:
                outcome = await settled
                if outcome.kind is not JoinKind.RETURNING and outcome.settled is not None:
                    outcome = await outcome.settled  # it too was answered from memory
            except StoreError as exc:
                logger.error("participant join refused by the store", error=str(exc))
                return
            if outcome.kind is JoinKind.RETURNING:
                added = await self.supervisor.add_earlier_context(
                    chat_ctx_from_record(outcome.record)
                )
                logger.info("participant recognised once the store answered", earlier_items=added)

        self._late_join = asyncio.create_task(adopt(), name="adopt_late_join")

    async def aclose(self, reason: str = "job ended") -> None:
        self.presence.close()
        if self._late_join is not None:
            self._late_join.cancel()
        # the election first, so closing sessions do not promote each other
        await self.election.aclose()
        if self.transcribers is not None:
            await self.transcribers.aclose()
        if self._supervisor is not None:
            await self._supervisor.aclose(reason)
        await self.summarizer.aclose()
        if self.meeting is not None:
            self.parts.routes.share_history(None)
            await self.meeting.aclose()
        await self.gemini.aclose()
        await self.recorder.aclose()
        if self.primacy.token is not None:
            metrics.LEASES_HELD.dec()
        await self.primacy.aclose()
        if self.parts.owns_backends:
            await self.parts.backends.aclose()


class _DeviceConversation(SupervisedConversation):
    """The conversation as an election member, present while the device in use is."""

    def __init__(self, supervisor: SessionSupervisor, devices: DeviceFollower) -> None:
        super().__init__(supervisor, devices.owner)
        self._devices = devices

    @property
    def identity(self) -> str:
        """The participant's device the conversation listens to now."""
        return self._devices.current
