"""The AgentServer and the job entrypoint: the one place where the parts are wired.

`python agent.py dev|start` runs `server` through livekit's own entry point; each job
(one room) calls `entrypoint`, which builds the real model stack and hands it to
`run_job`. `simulate` and the tests call `run_job` with a simulated room and a scripted
model stack, so they exercise exactly this wiring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import AgentServer, AgentSession, JobContext, JobProcess, room_io

from .assistant import GREETING, WELCOME_BACK, Assistant
from .log import bind_job_context, get_logger, redact_personal_data_in_logs, setup_structlog
from .models import ModelStack, build_models
from .resilience.election import SessionElection, SupervisedConversation
from .resilience.gemini_resume import GeminiResume
from .resilience.persistence import (
    ConversationRecorder,
    chat_ctx_from_record,
    transcript_from_record,
)
from .resilience.presence import ParticipantPresence
from .resilience.room_lease import FencedStore, LocalRoomLease, RedisRoomLease, RoomPrimacy
from .resilience.store import JoinKind, SessionStore, open_store
from .resilience.store.redis_client import connect
from .resilience.supervisor import SessionSupervisor
from .resilience.transcribers import TranscriberPool, listen_only_stt
from .settings import Settings, load_settings

logger = get_logger(__name__)

ModelFactory = Callable[[], ModelStack]


def prewarm(proc: JobProcess) -> None:
    """Load what every job of this process needs once, before jobs arrive."""
    setup_structlog()
    settings = load_settings()
    # the pipeline's turn detection and the transcribers' segmentation both need a VAD
    if settings.model_stack == "openai-pipeline" or settings.room_mode == "multi-participant":
        from livekit.plugins import silero

        proc.userdata["vad"] = silero.VAD.load()


server = AgentServer(setup_fnc=prewarm)


@server.rtc_session(agent_name=load_settings().agent_name)
async def entrypoint(ctx: JobContext) -> None:
    """A job: one room, one conversation."""
    settings = load_settings()
    vad_model = ctx.proc.userdata.get("vad")
    fallback = settings.fallback_settings()
    await run_job(
        ctx,
        settings=settings,
        models=lambda: build_models(settings, vad_model=vad_model),
        fallback=(lambda: build_models(fallback, vad_model=vad_model)) if fallback else None,
    )


@dataclass
class Conversation:
    """What one job runs; ``aclose`` ends it and saves what is pending."""

    supervisor: SessionSupervisor
    store: SessionStore
    recorder: ConversationRecorder
    presence: ParticipantPresence
    election: SessionElection
    primacy: RoomPrimacy
    gemini: GeminiResume
    transcribers: TranscriberPool | None = None
    owns_store: bool = True

    @property
    def session(self) -> AgentSession | None:
        """The current AgentSession (it changes on every restart)."""
        return self.supervisor.session

    async def aclose(self, reason: str = "job ended") -> None:
        self.presence.close()
        # the election first, so closing sessions do not promote each other
        await self.election.aclose()
        if self.transcribers is not None:
            await self.transcribers.aclose()
        await self.supervisor.aclose(reason)
        await self.gemini.aclose()
        await self.recorder.aclose()
        await self.primacy.aclose()
        if self.owns_store:
            await self.store.aclose()


def open_session_store(settings: Settings) -> SessionStore:
    """The store the settings choose: Redis when REDIS_URL is set, else in memory."""
    return open_store(
        redis_url=settings.redis_url,
        redis_cluster=settings.redis_cluster,
        retention=settings.session_retention_s,
        encryption_keys=(
            settings.session_encryption_keys.get_secret_value()
            if settings.session_encryption_keys
            else None
        ),
        max_records=settings.session_max_records,
    )


def welcome_back(supervisor: SessionSupervisor) -> None:
    """Greet a participant who came back (once per return; presence sees to that)."""
    if supervisor.session is not None:
        supervisor.session.generate_reply(instructions=WELCOME_BACK)


async def claim_room(ctx: JobContext, settings: Settings) -> RoomPrimacy | None:
    """Become this room's primary worker: at once, or after waiting as a standby.

    With Redis the room lease is shared by every worker; without it the lease is local.
    Returns None when another worker holds the room and ``ROOM_STANDBY=leave``.
    """
    owner = f"{ctx.worker_id}/{ctx.job.id}"
    lease = (
        RedisRoomLease(
            connect(settings.redis_url, cluster=settings.redis_cluster),
            ctx.room.name,
            owner,
            ttl=settings.room_lease_s,
        )
        if settings.redis_url
        else LocalRoomLease(ctx.room.name, owner, ttl=settings.room_lease_s)
    )
    primacy = RoomPrimacy(lease, on_lost=lambda: ctx.shutdown(reason="room lease lost"))
    if await primacy.start():
        return primacy
    if settings.room_standby == "leave":
        logger.info("another worker is primary for this room; leaving")
        await primacy.aclose()
        return None
    logger.info("another worker is primary for this room; standing by")
    await primacy.wait_until_primary()
    logger.info("took over the room")
    return primacy


async def run_job(
    ctx: JobContext,
    *,
    settings: Settings,
    models: ModelFactory,
    fallback: ModelFactory | None = None,
    store: SessionStore | None = None,
) -> Conversation | None:
    """Wire one job: claim the room, wait for the participant, restore their conversation,
    greet once; in multi-participant mode also transcribe everyone.

    A participant the store knows is welcomed back with their earlier turns in context;
    one who leaves is waited for (the retention period) and welcomed back on return.
    ``fallback`` builds the model stack a conversation moves to when its model stays
    unreachable (None: restart on ``models``). Returns the running conversation (None when
    another worker keeps the room).
    """
    redact_personal_data_in_logs()
    ctx.log_context_fields = bind_job_context(job_id=ctx.job.id, room=ctx.room.name)
    logger.info("job started", agent_name=ctx.job.agent_name or None)
    await ctx.connect()
    primacy = await claim_room(ctx, settings)
    if primacy is None:
        ctx.shutdown(reason="another worker is primary for this room")
        return None
    election = SessionElection(ctx)
    multi = settings.room_mode == "multi-participant"

    participant = await ctx.wait_for_participant()
    identity = participant.identity
    ctx.log_context_fields = bind_job_context(
        job_id=ctx.job.id, room=ctx.room.name, participant=identity
    )
    logger.info("participant joined", kind=rtc.ParticipantKind.Name(participant.kind))

    owns_store = store is None
    store = store if store is not None else open_session_store(settings)
    # every write carries the room lease's fencing token: a worker that lost it cannot write
    writer = FencedStore(store, primacy)
    presence = ParticipantPresence(
        ctx.room, writer, identity, job_id=ctx.job.id, wait_s=settings.session_retention_s
    )
    outcome = await presence.join(participant)
    # what to continue: the record of a participant the store knows (None: a new one)
    earlier = outcome.record if outcome and outcome.kind is JoinKind.RETURNING else None

    recorder = ConversationRecorder(writer, ctx.room.name, identity)
    # Gemini Live sessions resume by handle (kept in the store); when its reconnect budget
    # is spent the conversation restarts, on the fallback stack when there is one
    gemini = GeminiResume(
        writer,
        ctx.room.name,
        identity,
        on_exhausted=lambda _ev: supervisor.restart("gemini_unavailable", models=fallback),
    )
    supervisor = SessionSupervisor(
        ctx.room,
        identity,
        models=models,
        agent_factory=lambda chat_ctx: Assistant(chat_ctx=chat_ctx),
        job_ctx=ctx,
        # a refresh or network drop is not the end: presence waits for the return
        room_options=room_io.RoomOptions(close_on_disconnect=False),
        note_restarts=settings.note_restarts,
        initial_transcript=transcript_from_record(earlier) if earlier else (),
        before_start=gemini.before_start,
    )
    supervisor.on("session_started", lambda ev: recorder.attach(ev.session))
    supervisor.on("transcript_segment", lambda ev: recorder.add(transcript=[ev.segment.to_dict()]))
    if not multi:
        # one-to-one: the conversation is the job; with transcribers the job outlives it
        supervisor.on("closed", lambda ev: ctx.shutdown(reason=f"conversation closed: {ev.reason}"))
    conversation = Conversation(
        supervisor, store, recorder, presence, election, primacy, gemini, owns_store=owns_store
    )
    ctx.add_shutdown_callback(conversation.aclose)

    async with election.starting(SupervisedConversation(supervisor, identity)):
        await supervisor.start(
            greeting=WELCOME_BACK if earlier else GREETING,
            chat_ctx=chat_ctx_from_record(earlier) if earlier else None,
        )
    logger.info("conversation started", returning=earlier is not None)
    presence.follow(
        on_return=lambda _outcome: welcome_back(supervisor),
        # one-to-one: the job ends; multi-participant: the others are still transcribed
        on_gone=(
            (lambda: asyncio.ensure_future(supervisor.aclose("participant did not return")))
            if multi
            else (lambda: ctx.shutdown(reason="participant did not return"))
        ),
    )
    if multi:
        conversation.transcribers = start_transcribers(ctx, settings, models, election)
    return conversation


def start_transcribers(
    ctx: JobContext, settings: Settings, models: ModelFactory, election: SessionElection
) -> TranscriberPool:
    """One listen-only transcription session per remote participant, for the whole job."""
    stack = models()
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    pool = TranscriberPool(
        ctx.room,
        stt_factory=lambda: listen_only_stt(
            models().stt, openai_api_key=key, model=settings.openai_stt_model
        ),
        vad=stack.vad or ctx.proc.userdata.get("vad"),
        election=election,
        job_ctx=ctx,
    )
    pool.follow()
    return pool
