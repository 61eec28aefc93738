"""The AgentServer and the job entrypoint: the one place where the parts are wired.

`python agent.py dev|start` runs `server` through livekit's own entry point; each job
(one room) calls `entrypoint`, which builds the real model stack and hands it to
`run_job`. `simulate` and the tests call `run_job` with a simulated room and a scripted
model stack, so they exercise exactly this wiring.
"""

from __future__ import annotations

from collections.abc import Callable

from livekit import rtc
from livekit.agents import AgentServer, AgentSession, JobContext, JobProcess, room_io

from .assistant import GREETING, Assistant
from .log import bind_job_context, get_logger, setup_structlog
from .models import ModelStack, build_models
from .settings import Settings, load_settings

logger = get_logger(__name__)

ModelFactory = Callable[[], ModelStack]


def prewarm(proc: JobProcess) -> None:
    """Load what every job of this process needs once, before jobs arrive."""
    setup_structlog()
    settings = load_settings()
    if settings.model_stack == "openai-pipeline":
        from livekit.plugins import silero

        proc.userdata["vad"] = silero.VAD.load()


server = AgentServer(setup_fnc=prewarm)


@server.rtc_session(agent_name=load_settings().agent_name)
async def entrypoint(ctx: JobContext) -> None:
    """A job: one room, one conversation."""
    settings = load_settings()
    vad_model = ctx.proc.userdata.get("vad")
    await run_job(
        ctx, settings=settings, models=lambda: build_models(settings, vad_model=vad_model)
    )


async def run_job(ctx: JobContext, *, settings: Settings, models: ModelFactory) -> AgentSession:
    """Wire one job: wait for the participant, start the session, greet once.

    Returns the running session; the job ends when the session closes.
    """
    ctx.log_context_fields = bind_job_context(job_id=ctx.job.id, room=ctx.room.name)
    logger.info("job started", agent_name=ctx.job.agent_name or None)
    await ctx.connect()
    participant = await ctx.wait_for_participant()
    ctx.log_context_fields = bind_job_context(
        job_id=ctx.job.id, room=ctx.room.name, participant=participant.identity
    )
    logger.info("participant joined", kind=rtc.ParticipantKind.Name(participant.kind))

    stack = models()
    turn_handling = {"turn_detection": stack.turn_detection} if stack.turn_detection else {}
    session = AgentSession(
        llm=stack.llm, stt=stack.stt, tts=stack.tts, vad=stack.vad, turn_handling=turn_handling
    )

    @session.on("close")
    def _on_close(event: object) -> None:
        reason = getattr(event, "reason", None)
        error = getattr(event, "error", None)
        logger.info("session closed", reason=str(reason), error=repr(error) if error else None)
        ctx.shutdown(reason=f"session closed: {reason}")

    await session.start(
        agent=Assistant(),
        room=ctx.room,
        room_options=room_io.RoomOptions(participant_identity=participant.identity),
    )
    logger.info("session started", model_stack=stack.name)
    session.generate_reply(instructions=GREETING)
    return session
