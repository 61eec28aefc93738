"""The simulation harness: a room, scripted models, the real job wiring, and observations."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.types import ATTRIBUTE_TRANSCRIPTION_FINAL, TOPIC_CHAT, TOPIC_TRANSCRIPTION

from ..backends import Backends
from ..models import ModelStack
from ..resilience.supervisor import SessionSupervisor
from ..settings import Settings
from ..testing import ScriptedLLM, ScriptedTTS, SimulatedJob, SimulatedRoom, TimelineEvent
from ..worker import Conversation, run_job
from .invariants import check_conversation

AGENT_IDENTITY = "agent"
REPLY_TIMEOUT_S = 30.0
# no scenario takes two minutes, no teardown step half of one: past that a run is stuck, and
# where each of its tasks waits is logged before it is given up
SCENARIO_LIMIT_S = 120.0
TEARDOWN_LIMIT_S = 60.0

logger = logging.getLogger(__name__)

Printer = Callable[[str], None]


@dataclass
class Observations:
    """What the simulation saw; `to_json()` is what `simulate --json` writes."""

    scenario: str
    tracks: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    transcription_streams: list[dict[str, Any]] = field(default_factory=list)
    model_requests: list[list[dict[str, str]]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    # why the job was ended (ctx.shutdown) while the scenario ran; a worker ends the call there
    job_ended: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


class Simulation:
    """What a scenario uses to act as the user and wait for the agent.

    ``expected_roles`` is the transcript a frontend should end up showing, role by role:
    `say` adds the user's line and the agent's answer; a scenario adds the turns the agent
    starts itself (the greeting, a welcome back) with `expect_agent_turn`.
    """

    def __init__(self, room: SimulatedRoom, llm: ScriptedLLM, printer: Printer) -> None:
        self.room = room
        self.llm = llm
        self.conversation: Conversation | None = None
        self.user_lines: list[str] = []
        self.expected_roles: list[str] = []
        self.expected_job_ends: list[str] = []
        self.timings: dict[str, Any] = {"turns_s": []}
        self.findings: dict[str, Any] = {}  # what a scenario notes for its own checks
        self._print = printer
        self._started = time.monotonic()

    @property
    def session(self) -> AgentSession | None:
        """The running AgentSession, once the job started it."""
        return self.conversation.session if self.conversation else None

    @property
    def supervisor(self) -> SessionSupervisor | None:
        """The job's session supervisor, once the job started it."""
        return self.conversation.supervisor if self.conversation else None

    def progress(self, message: str) -> None:
        """Print a progress line (not part of the transcript)."""
        self._print(f"  .. {message}")

    def agent_replies(self) -> int:
        """Agent transcript segments finalised so far."""
        return sum(1 for s in self.room.transcript() if s.role == "agent" and s.final)

    async def wait_for_agent_replies(self, count: int) -> None:
        await self.room.wait_until(lambda _: self.agent_replies() >= count, REPLY_TIMEOUT_S)

    def expect_agent_turn(self, what: str) -> None:
        """The agent should speak once now, unprompted (``what`` names it in progress)."""
        self.expected_roles.append("agent")
        self.progress(f"expecting the agent's {what}")

    def expect_job_end(self, reason: str) -> None:
        """The job should end during the scenario, for ``reason`` (any other end is a fault)."""
        self.expected_job_ends.append(reason)

    async def join(self, identity: str, **kwargs: Any) -> None:
        """A participant joins (a frontend connecting with auto-subscribe)."""
        self.progress(f"{identity} joins")
        self.room.add_participant(identity, **kwargs)

    async def leave(self, identity: str) -> None:
        """The participant's connection ends (a browser refresh, a network drop)."""
        self.progress(f"{identity} leaves")
        self.room.remove_participant(identity)

    async def say(self, identity: str, text: str) -> None:
        """The participant types ``text`` and the agent answers it."""
        before = self.agent_replies()
        started = time.monotonic()
        self.user_lines.append(text)
        self.expected_roles += ["user", "agent"]
        await self.room.send_chat(identity, text)
        await self.wait_for_agent_replies(before + 1)
        self.timings["turns_s"].append(round(time.monotonic() - started, 3))

    def elapsed(self) -> float:
        return round(time.monotonic() - self._started, 3)


ScenarioFn = Callable[[Simulation], Awaitable[None]]


async def run_scenario(
    name: str,
    scenario: ScenarioFn,
    *,
    settings: Settings,
    llm: ScriptedLLM,
    backends: Backends | None = None,
    printer: Printer = print,
    room_name: str = "sim-room",
    departure_timeout: float | None = None,
    models: Callable[[], ModelStack] | None = None,
    fallback: Callable[[], ModelStack] | None = None,
    checks: Callable[[Observations, Simulation], list[str]] | None = None,
) -> Observations:
    """Run ``scenario`` against the real job wiring and return what was observed.

    With ``backends`` (``open_backends(settings)``) the job uses that store and its room
    leases and leaves them open, so several runs can share one: a second run in the same
    room is a worker that picks the conversation up. ``models`` replaces the scripted stack
    built around ``llm``; ``fallback`` is the stack a job moves to when the model is gone
    (``FALLBACK_MODEL_STACK``); ``checks`` replaces the standard one-participant invariants.
    ``departure_timeout``: what the room reports (default ``SESSION_RETENTION_S``, as `token`)."""
    # a room made by `token` outlives its participant as long as their conversation is kept
    room = SimulatedRoom(
        name=room_name,
        agent_identity=AGENT_IDENTITY,
        departure_timeout=departure_timeout or settings.session_retention_s,
    )
    room.add_observer(_transcript_printer(room, printer))
    sim = Simulation(room, llm, printer)
    if models is None:
        # the scripted user types, so user turns are committed by the text input, not detected
        stack = ModelStack(name="scripted", llm=llm, tts=ScriptedTTS(), turn_detection="manual")
        models = lambda: stack  # noqa: E731
    observations = Observations(scenario=name)
    with SimulatedJob(room, agent_identity=AGENT_IDENTITY) as simulated:
        job = asyncio.create_task(
            run_job(
                simulated.ctx,
                settings=settings,
                models=models,
                fallback=fallback,
                backends=backends,
            )
        )
        try:
            await within(scenario_with_job(sim, scenario, job), SCENARIO_LIMIT_S, "the scenario")
        except TimeoutError as exc:
            observations.violations.append(f"the agent stopped answering: {exc}")
        finally:
            observations.job_ended = list(simulated.shutdown_reasons)
            await _end_run(sim, job, observations)
    sim.timings["total_s"] = sim.elapsed()
    _conclude(observations, room, llm, sim, checks)
    return observations


def _conclude(
    observations: Observations,
    room: SimulatedRoom,
    llm: ScriptedLLM,
    sim: Simulation,
    checks: Callable[[Observations, Simulation], list[str]] | None,
) -> None:
    """What the run showed, and what it broke: the job's end, then the invariants."""
    if observations.job_ended != sim.expected_job_ends:
        # a worker ends the job on ctx.shutdown: the call would have ended there
        observations.violations.append(
            f"the job was ended {observations.job_ended or 'never'}, "
            f"expected {sim.expected_job_ends or 'never'}"
        )
    _observe(observations, room, llm, sim)
    if checks is None:
        observations.violations.extend(
            check_conversation(observations, sim.user_lines, sim.expected_roles)
        )
    else:
        observations.violations.extend(checks(observations, sim))


async def scenario_with_job(sim: Simulation, scenario: ScenarioFn, job: asyncio.Task) -> None:
    """Run the scenario; the job's session becomes available once a participant joined."""

    def _on_job_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is None:
            sim.conversation = task.result()

    job.add_done_callback(_on_job_done)
    await scenario(sim)
    if job.done() and not job.cancelled() and (error := job.exception()) is not None:
        raise error


async def _end_run(sim: Simulation, job: asyncio.Task, observations: Observations) -> None:
    """Stop the job, close its conversation and leave the room, each step bounded."""
    if not job.done():
        job.cancel()
    try:
        if sim.conversation is not None:
            closing = sim.conversation.aclose("simulation ended")
            await within(closing, TEARDOWN_LIMIT_S, "closing the conversation")
        await within(sim.room.disconnect(), TEARDOWN_LIMIT_S, "leaving the room")
    except TimeoutError as exc:
        observations.violations.append(f"the run did not end: {exc}")


async def within(step: Awaitable[Any], seconds: float, what: str) -> Any:
    """``step``'s result; TimeoutError after ``seconds``, once where every task of the run
    waits is logged (a stuck run names the await that never ends)."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        waits = [
            f"{t.get_name()}: "
            + " < ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(t.get_stack()))
            for t in asyncio.all_tasks()
            if t is not asyncio.current_task()
        ]
        logger.error("%s did not finish in %.0f s; the tasks wait in:\n%s", what, seconds,
                     "\n".join(waits))  # fmt: skip
        task.cancel()
        raise TimeoutError(f"{what} did not finish in {seconds:.0f} s")
    return task.result()


def _transcript_printer(room: SimulatedRoom, printer: Printer) -> Callable[[TimelineEvent], None]:
    """Print each line of the conversation once it is final, as a frontend shows it: typed
    lines, the agent's lines and the participants' transcribed speech (which the agent
    publishes on their behalf), by speaker."""

    def observe(event: TimelineEvent) -> None:
        record = event.record
        typed = event.kind == "text_stream_received" and record.topic == TOPIC_CHAT
        spoken = (
            event.kind == "text_stream_closed"
            and record.topic == TOPIC_TRANSCRIPTION
            and record.attributes.get(ATTRIBUTE_TRANSCRIPTION_FINAL) == "true"
        )
        if typed or spoken:
            printer(f"[{record.sender_identity}] {record.text}")

    return observe


def _observe(obs: Observations, room: SimulatedRoom, llm: ScriptedLLM, sim: Simulation) -> None:
    obs.tracks = [asdict(t) for t in room.published_tracks]
    obs.segments = [asdict(s) for s in room.transcript()]
    obs.transcription_streams = [
        {
            "stream_id": s.stream_id,
            "sender": s.sender_identity,
            "attributes": s.attributes,
            "closed": s.closed,
            "text": s.text,
        }
        for s in room.text_streams
        if s.topic == TOPIC_TRANSCRIPTION
    ]
    obs.model_requests = [
        [{"id": i.id, "role": i.role, "text": i.text} for i in request.items]
        for request in llm.requests
    ]
    obs.timings = sim.timings
