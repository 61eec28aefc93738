"""The AgentServer and the job entrypoint: the one place where the parts are wired.

`python agent.py dev|start` runs `server` through livekit's own entry point; each job
(one room) calls `entrypoint`, which builds the real model stack and hands it to
`run_job`. `simulate` and the tests call `run_job` with a simulated room and a scripted
model stack, so they exercise exactly this wiring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from livekit import api, rtc
from livekit.agents import AgentServer, AgentSession, JobContext, JobProcess, llm, room_io

from . import metrics
from .assistant import GREETING, WELCOME_BACK, Assistant
from .log import (
    bind_job_context,
    configure_identity_hash,
    get_logger,
    redact_personal_data_in_logs,
    setup_structlog,
)
from .models import ModelStack, build_models, modules_to_preload
from .resilience.events import ClosedEvent
from .resilience.gemini.resume import GeminiResume
from .resilience.meeting import MeetingTranscript, may_read
from .resilience.primary.election import SessionElection, SupervisedConversation
from .resilience.primary.recovery import RoomWatcher, is_redispatch
from .resilience.primary.room_lease import (
    MAX_POLL_S,
    FencedStore,
    LocalRoomLease,
    RedisRoomLease,
    RoomLease,
    RoomPrimacy,
    SqliteRoomLease,
)
from .resilience.primary.room_registry import RedisRoomRegistry, RoomRegistry, SqliteRoomRegistry
from .resilience.returning import (
    ConversationRecorder,
    ParticipantPresence,
    chat_ctx_from_record,
    transcript_from_record,
)
from .resilience.rpc import routes_for
from .resilience.store import (
    MEMORY,
    JoinKind,
    JoinOutcome,
    SessionStore,
    StorageLimits,
    StoreError,
    open_store,
)
from .resilience.store.redis_client import connect
from .resilience.supervisor import GAVE_UP, SessionSupervisor
from .resilience.transcribers import TranscribedLine, TranscriberPool, listen_only_stt
from .resilience.transcript import TranscriptSegment
from .settings import Settings, load_settings

logger = get_logger(__name__)

ModelFactory = Callable[[], ModelStack]

# a store that has not answered a join by then does not keep the participant waiting
JOIN_ANSWER_S = 1.0


def prewarm(proc: JobProcess) -> None:
    """Load what every job of this process needs once, before jobs arrive."""
    setup_structlog()
    settings = load_settings()
    configure_identity_hash(settings)  # each job process keys its own identity hashes
    # the pipeline's turn detection and the transcribers' segmentation both need a VAD
    if settings.model_stack == "openai-pipeline" or settings.room_mode == "multi-participant":
        from livekit.plugins import silero

        proc.userdata["vad"] = silero.VAD.load()


def build_server(settings: Settings) -> AgentServer:
    """The worker: its HTTP address, and the modules its jobs import loaded once."""
    options: dict = {"setup_fnc": prewarm, "preload_modules": modules_to_preload(settings)}
    if settings.worker_host is not None:
        options["host"] = settings.worker_host
    if settings.worker_port is not None:
        options["port"] = settings.worker_port
    if settings.metrics_port is not None:
        options["prometheus_port"] = settings.metrics_port
        options["prometheus_multiproc_dir"] = metrics.multiprocess_dir()
    server = AgentServer(**options)
    watcher = room_watcher(settings)
    if watcher is not None:
        # the main process re-dispatches rooms whose worker died (primary/recovery.py)
        server.on("worker_started", watcher.start)
    return server


def room_watcher(settings: Settings) -> RoomWatcher | None:
    """This worker's room watcher (None without a LiveKit server, or with the store in this
    process's memory: nothing outlives the process then)."""
    in_memory = settings.session_db_path == MEMORY and not settings.redis_url
    if not settings.livekit_url or in_memory:
        return None
    secret = settings.livekit_api_secret
    return RoomWatcher(
        lambda: open_room_registry(settings),
        lambda: api.LiveKitAPI(
            settings.livekit_url,
            settings.livekit_api_key,
            secret.get_secret_value() if secret else None,
        ),
        poll_s=min(settings.room_lease_s / 10, MAX_POLL_S),
    )


server = build_server(load_settings())


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
        store: SessionStore,
        recorder: ConversationRecorder,
        presence: ParticipantPresence,
        election: SessionElection,
        primacy: RoomPrimacy,
        gemini: GeminiResume,
        *,
        owns_store: bool = True,
    ) -> None:
        self.ctx, self.settings, self.identity, self.models = ctx, settings, identity, models
        self.store, self.recorder, self.presence = store, recorder, presence
        self.election, self.primacy, self.gemini = election, primacy, gemini
        self.owns_store = owns_store
        self.meeting: MeetingTranscript | None = None
        self.transcribers: TranscriberPool | None = None
        self._supervisor: SessionSupervisor | None = None
        self._late_join: asyncio.Task[None] | None = None

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
            before_start=self.gemini.before_start,
        )
        supervisor.on("session_started", lambda ev: self.recorder.attach(ev.session))
        supervisor.on(
            "transcript_segment", lambda ev: self.recorder.add(transcript=[ev.segment.to_dict()])
        )
        if self.meeting is not None:
            supervisor.on("transcript_segment", lambda ev: self.meeting.add_segment(ev.segment))
        supervisor.on("closed", self._on_closed)
        metrics.watch_supervisor(supervisor)
        self._supervisor = supervisor
        if greeting == WELCOME_BACK:
            metrics.WELCOME_BACKS.inc()
        async with self.election.starting(SupervisedConversation(supervisor, self.identity)):
            await supervisor.start(greeting=greeting, chat_ctx=chat_ctx)

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

    def _spawn_reopen(self, closed: SessionSupervisor) -> None:
        async def reopen() -> None:
            logger.info("participant came back to a conversation that gave up; reopening it")
            await self.open(
                greeting=WELCOME_BACK,
                chat_ctx=closed.chat_ctx(),
                transcript=list(closed.transcript),
            )

        self._late_join = asyncio.create_task(reopen(), name="reopen_conversation")

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
        if self.meeting is not None:
            routes_for(self.ctx.room).share_history(None)
            await self.meeting.aclose()
        await self.gemini.aclose()
        await self.recorder.aclose()
        if self.primacy.token is not None:
            metrics.LEASES_HELD.dec()
        await self.primacy.aclose()
        if self.owns_store:
            await self.store.aclose()


def open_session_store(settings: Settings) -> SessionStore:
    """The store the settings choose: Redis when REDIS_URL is set, else the SQLite file every
    process on this host shares (SESSION_DB_PATH; ":memory:" keeps it in this process)."""
    return open_store(
        redis_url=settings.redis_url,
        db_path=settings.session_db_path,
        redis_cluster=settings.redis_cluster,
        prefix=settings.redis_prefix,
        retention=settings.session_retention_s,
        encryption_keys=(
            settings.session_encryption_keys.get_secret_value()
            if settings.session_encryption_keys
            else None
        ),
        max_records=settings.session_max_records,
        limits=StorageLimits(
            max_entry_bytes=settings.session_max_entry_bytes,
            max_entries=settings.session_max_entries,
            max_list_bytes=settings.session_max_history_bytes,
        ),
        quarantine=settings.session_quarantine_s,
    )


def open_room_lease(settings: Settings, room: str, owner: str) -> RoomLease:
    """The room lease where the session store is (the same settings choose both): Redis,
    the SQLite file, or this process when the store is in memory."""
    ttl, agent = settings.room_lease_s, settings.agent_name
    if settings.redis_url:
        client = connect(settings.redis_url, cluster=settings.redis_cluster)
        return RedisRoomLease(
            client, room, owner, ttl=ttl, prefix=settings.redis_prefix, watch_as=agent
        )
    if settings.session_db_path != MEMORY:
        return SqliteRoomLease(settings.session_db_path, room, owner, ttl=ttl, watch_as=agent)
    return LocalRoomLease(room, owner, ttl=ttl)


def open_room_registry(settings: Settings) -> RoomRegistry:
    """The watch list of held rooms, where the room leases are: Redis or the SQLite file."""
    if settings.redis_url:
        client = connect(settings.redis_url, cluster=settings.redis_cluster)
        return RedisRoomRegistry(client, prefix=settings.redis_prefix)
    return SqliteRoomRegistry(settings.session_db_path)


def warn_if_room_closes_early(room: rtc.Room, settings: Settings) -> None:
    """LiveKit closes a room its departure timeout after the last participant left (20 s
    unless configured), ending this job: a participant away longer comes back to a new room
    and job, which continues the conversation from the store but with a new agent."""
    closes_after = room.departure_timeout
    if 0 < closes_after < settings.session_retention_s:
        logger.warning(
            "this room closes sooner than SESSION_RETENTION_S after its participant leaves; "
            "mint tokens with a departure_timeout (see `token`) to keep the agent waiting",
            departure_timeout_s=closes_after,
            session_retention_s=settings.session_retention_s,
        )


async def claim_room(ctx: JobContext, settings: Settings) -> RoomPrimacy | None:
    """Become this room's primary worker: at once, or after waiting as a standby.

    With Redis the room lease is shared by every worker; without it the lease is local.
    While Redis cannot answer the job serves the room at once and takes the lease later.
    Returns None when another worker holds the room and ``ROOM_STANDBY=leave``.
    """
    lease = open_room_lease(settings, ctx.room.name, f"{ctx.worker_id}/{ctx.job.id}")

    # lost means Redis answered and showed another holder; an outage never ends the call
    def lost() -> None:
        metrics.LEASES_LOST.inc()
        metrics.LEASES_HELD.dec()
        ctx.shutdown(reason="another worker took the room over")

    def acquired(_token: int) -> None:
        metrics.LEASES_ACQUIRED.inc()
        metrics.LEASES_HELD.inc()

    primacy = RoomPrimacy(lease, on_acquired=acquired, on_lost=lost)
    if await primacy.start():
        return primacy
    # a job dispatched after the room's worker died is not needed once another worker has it
    if settings.room_standby == "leave" or is_redispatch(ctx.job.metadata):
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
    warn_if_room_closes_early(ctx.room, settings)
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
    outcome = await presence.join(participant, answer_within=JOIN_ANSWER_S)
    # what to continue: the record of a participant the store knows (None: a new one)
    earlier = outcome.record if outcome and outcome.kind is JoinKind.RETURNING else None
    if earlier is not None:
        metrics.RETURNING.inc()

    recorder = ConversationRecorder(writer, ctx.room.name, identity)
    # Gemini Live sessions resume by handle (kept in the store); when its reconnect budget
    # is spent the conversation restarts, on the fallback stack when there is one
    gemini = GeminiResume(
        writer,
        ctx.room.name,
        identity,
        on_exhausted=lambda _ev: conversation.supervisor.restart(
            "gemini_unavailable", models=fallback
        ),
    )
    metrics.watch_gemini(gemini)
    conversation = Conversation(
        ctx, settings, identity, models, store, recorder, presence, election, primacy, gemini,
        owns_store=owns_store,
    )  # fmt: skip
    ctx.add_shutdown_callback(conversation.aclose)
    if multi:  # the room's transcript, before the conversation's first line
        conversation.meeting = await MeetingTranscript.load(writer, ctx.room.name)
        routes_for(ctx.room).share_history(
            conversation.meeting.log, may_read=lambda who: may_read(ctx.room, who)
        )
    await conversation.open(
        greeting=WELCOME_BACK if earlier else GREETING,
        chat_ctx=chat_ctx_from_record(earlier) if earlier else None,
        transcript=transcript_from_record(earlier) if earlier else (),
    )
    logger.info("conversation started", returning=earlier is not None)
    if outcome is not None and outcome.settled is not None and earlier is None:
        # answered from memory during a store outage: the store may still know them
        conversation.adopt_late_join(outcome.settled)
    presence.follow(
        on_return=lambda _outcome: conversation.welcome_back(),
        # one-to-one: the job ends; multi-participant: the others are still transcribed
        on_gone=(
            (
                lambda: asyncio.ensure_future(
                    conversation.supervisor.aclose("participant did not return")
                )
            )
            if multi
            else (lambda: ctx.shutdown(reason="participant did not return"))
        ),
    )
    if multi:
        conversation.transcribers = start_transcribers(ctx, settings, models, conversation)
    return conversation


def transcribed(meeting: MeetingTranscript | None, line: TranscribedLine) -> None:
    """A participant's line, heard by their transcriber: into the room's transcript."""
    metrics.TRANSCRIPT_LINES.labels("user").inc()
    if meeting is not None:
        meeting.add_line(line)


def start_transcribers(
    ctx: JobContext, settings: Settings, models: ModelFactory, conversation: Conversation
) -> TranscriberPool:
    """One listen-only transcription session per remote participant but the conversation's
    (its own session publishes their lines), for the whole job; every line goes to the
    room's transcript."""
    stack = models()
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    meeting = conversation.meeting
    pool = TranscriberPool(
        ctx.room,
        stt_factory=lambda: listen_only_stt(
            models().stt, openai_api_key=key, model=settings.openai_stt_model
        ),
        vad=stack.vad or ctx.proc.userdata.get("vad"),
        election=conversation.election,
        job_ctx=ctx,
        on_line=lambda line: transcribed(meeting, line),
        exclude={conversation.identity},
    )
    pool.follow()
    return pool
