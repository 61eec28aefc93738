"""The AgentServer and the job entrypoint: the one place where the parts are wired.

`python agent.py dev|start` runs `server` through livekit's own entry point; each job
(one room) calls `entrypoint`, which builds the real model stack and hands it to
`run_job`. `simulate` and the tests call `run_job` with a simulated room and a scripted
model stack, so they exercise exactly this wiring.
"""

from __future__ import annotations

from collections.abc import Awaitable

from livekit import api, rtc
from livekit.agents import AgentServer, JobContext, JobProcess

from . import metrics
from .assistant import GREETING, WELCOME_BACK
from .backends import Backends, in_memory, open_backends, open_room_registry
from .conversation import Conversation, JobParts, ModelFactory
from .devices import USER_KEY_ATTRIBUTE, conversation_key
from .log import (
    bind_job_context,
    configure_identity_hash,
    get_logger,
    redact_personal_data_in_logs,
    setup_structlog,
)
from .models import build_models, modules_to_preload
from .resilience.gemini.resume import ExhaustedEvent, GeminiResume, ModelRefusedError
from .resilience.primary.election import SessionElection
from .resilience.primary.recovery import RoomWatcher, is_redispatch
from .resilience.primary.room_lease import MAX_POLL_S, RoomPrimacy
from .resilience.returning import (
    ConversationRecorder,
    ParticipantPresence,
    chat_ctx_from_record,
    transcript_from_record,
)
from .resilience.rpc import RpcRoutes
from .resilience.store import FencedStore, JoinKind, JoinOutcome, SessionRecord
from .resilience.transcribers import (
    MeetingTranscript,
    TranscribedLine,
    TranscriberPool,
    listen_only_stt,
    may_read,
)
from .settings import Settings, load_settings

logger = get_logger(__name__)

# a store that has not answered a join by then does not keep the participant waiting
JOIN_ANSWER_S = 1.0
MODEL_REFUSED = "model_refused"
"""The ``closed`` reason when the model refused the session for good and no fallback is set."""


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
    if settings.worker_load_threshold is not None:
        options["load_threshold"] = settings.worker_load_threshold
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
    if not settings.livekit_url or in_memory(settings):
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


async def claim_room(ctx: JobContext, settings: Settings, backends: Backends) -> RoomPrimacy | None:
    """Become this room's primary worker: at once, or after waiting as a standby.

    With Redis the room lease is shared by every worker; without it the lease is local.
    While Redis cannot answer the job serves the room at once and takes the lease later.
    Returns None when another worker holds the room and ``ROOM_STANDBY=leave``.
    """
    lease = backends.room_lease(ctx.room.name, f"{ctx.worker_id}/{ctx.job.id}")

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
    backends: Backends | None = None,
) -> Conversation | None:
    """Wire one job: claim the room, wait for the participant, restore their conversation,
    greet once; in multi-participant mode also transcribe everyone.

    A participant the store knows is welcomed back with their earlier turns in context;
    one who leaves is waited for (the retention period) and welcomed back on return.
    ``fallback`` builds the model stack a conversation moves to when its model stays
    unreachable (None: restart on ``models``). ``backends``: the store and room leases to
    use and leave open (None: opened from ``settings`` and closed with the job). Returns the
    running conversation (None when another worker keeps the room).
    """
    await start_job(ctx, settings)
    parts = await claim_job(ctx, settings, backends)
    if parts is None:
        ctx.shutdown(reason="another worker is primary for this room")
        return None
    participant = await ctx.wait_for_participant()
    ctx.log_context_fields = bind_job_context(
        job_id=ctx.job.id, room=ctx.room.name, participant=participant.identity
    )
    key = conversation_key(participant)  # their user key, else their identity
    logger.info(
        "participant joined",
        kind=rtc.ParticipantKind.Name(participant.kind),
        user_key=key != participant.identity,
    )
    conversation = assemble(ctx, settings, participant.identity, key, models, fallback, parts)
    ctx.add_shutdown_callback(conversation.aclose)
    outcome = await conversation.presence.join(participant, answer_within=JOIN_ANSWER_S)
    # what to continue: the record of a participant the store knows (None: a new one)
    earlier = outcome.record if outcome and outcome.kind is JoinKind.RETURNING else None
    if settings.room_mode == "multi-participant":  # before the conversation's first line
        await open_meeting(ctx, conversation)
    await open_conversation(conversation, outcome, earlier)
    follow_participant(ctx, settings, conversation)
    if settings.room_mode == "multi-participant":
        conversation.transcribers = start_transcribers(ctx, settings, models, conversation, key)
    return conversation


async def start_job(ctx: JobContext, settings: Settings) -> None:
    """Log context, connect to the room, and say when the room will not wait as long as we."""
    redact_personal_data_in_logs()
    ctx.log_context_fields = bind_job_context(job_id=ctx.job.id, room=ctx.room.name)
    logger.info("job started", agent_name=ctx.job.agent_name or None)
    await ctx.connect()
    warn_if_room_closes_early(ctx.room, settings)


async def claim_job(
    ctx: JobContext, settings: Settings, backends: Backends | None
) -> JobParts | None:
    """The job's parts once it is the room's primary; None when another worker keeps it."""
    owns_backends = backends is None
    backends = backends if backends is not None else open_backends(settings)
    primacy = await claim_room(ctx, settings, backends)
    if primacy is None:
        if owns_backends:
            await backends.aclose()
        return None
    routes = RpcRoutes(ctx.room.local_participant, room_name=ctx.room.name)
    # every write carries the room lease's fencing token: a worker that lost it cannot write
    writer = FencedStore(backends.store, primacy)
    return JobParts(backends, primacy, SessionElection(ctx), routes, writer, owns_backends)


def assemble(
    ctx: JobContext,
    settings: Settings,
    identity: str,
    key: str,
    models: ModelFactory,
    fallback: ModelFactory | None,
    parts: JobParts,
) -> Conversation:
    """The participant's conversation and the parts that carry it through the store, where
    it is kept under ``key`` (their user key, else ``identity``: see ``devices``)."""
    writer, room = parts.writer, ctx.room.name
    presence = ParticipantPresence(
        ctx.room,
        writer,
        key,
        job_id=ctx.job.id,
        wait_s=settings.session_retention_s,
        key_of=conversation_key,
    )

    # Gemini Live sessions resume by handle (kept in the store); when its reconnect budget
    # is spent the conversation restarts, on the fallback stack when there is one. Refused
    # for good (a bad key, no access, a spent quota) with no fallback: the caller hears the
    # shipped apology clip and the call ends, with no retries in silence.
    def on_gemini_exhausted(ev: ExhaustedEvent) -> Awaitable[object]:
        if fallback is None and isinstance(ev.error, ModelRefusedError):
            return conversation.supervisor.end_with_apology(MODEL_REFUSED)
        return conversation.supervisor.restart("gemini_unavailable", models=fallback)

    gemini = GeminiResume(writer, room, key, on_exhausted=on_gemini_exhausted)
    metrics.watch_gemini(gemini)
    recorder = ConversationRecorder(writer, room, key)
    conversation = Conversation(ctx, settings, identity, models, parts, recorder, presence, gemini)
    return conversation


async def open_meeting(ctx: JobContext, conversation: Conversation) -> None:
    """The room's transcript so far, served to everyone in the room by transcript.history."""
    meeting = await MeetingTranscript.load(
        conversation.parts.writer, ctx.room.name, session_id=f"meeting/{ctx.job.id}"
    )
    conversation.meeting = meeting
    conversation.parts.routes.share_history(
        meeting.log, may_read=lambda who: may_read(ctx.room, who)
    )


async def open_conversation(
    conversation: Conversation, outcome: JoinOutcome | None, earlier: SessionRecord | None
) -> None:
    """Greet a new participant, or welcome a known one back with their earlier turns."""
    if earlier is not None:
        metrics.RETURNING.inc()
    await conversation.open(
        greeting=WELCOME_BACK if earlier else GREETING,
        chat_ctx=chat_ctx_from_record(earlier) if earlier else None,
        transcript=transcript_from_record(earlier) if earlier else (),
    )
    logger.info("conversation started", returning=earlier is not None)
    if outcome is not None and outcome.settled is not None and earlier is None:
        # answered from memory during a store outage: the store may still know them
        conversation.adopt_late_join(outcome.settled)


def follow_participant(ctx: JobContext, settings: Settings, conversation: Conversation) -> None:
    """Welcome the participant back on each return, and listen to the device they use (with
    a user key, a second device takes the conversation over); when they stay away, end the
    job (one-to-one) or only their conversation (multi-participant: the others are still
    transcribed)."""

    def gone() -> None:
        if settings.room_mode == "multi-participant":
            conversation.end_supervisor("participant did not return")
        else:
            ctx.shutdown(reason="participant did not return")

    conversation.presence.follow(
        on_return=lambda _outcome: conversation.welcome_back(),
        on_gone=gone,
        on_device=conversation.switch_device,
    )


def transcribed(meeting: MeetingTranscript | None, line: TranscribedLine) -> None:
    """A participant's line, heard by their transcriber: into the room's transcript."""
    metrics.TRANSCRIPT_LINES.labels("user").inc()
    if meeting is not None:
        meeting.add_line(line)


def start_transcribers(
    ctx: JobContext,
    settings: Settings,
    models: ModelFactory,
    conversation: Conversation,
    person: str,
) -> TranscriberPool:
    """One listen-only transcription session per remote participant but the conversation's
    (key ``person``, on any of their devices: its own session publishes their lines), for the
    whole job; every line goes to the room's transcript."""
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
        exclude=lambda p: (
            p.identity == conversation.identity or p.attributes.get(USER_KEY_ATTRIBUTE) == person
        ),
    )
    pool.follow()
    return pool
