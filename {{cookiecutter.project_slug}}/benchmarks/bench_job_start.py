"""Job start benchmark: job start to the greeting, ours vs a bare AgentSession (figures only).

    uv run python benchmarks/bench_job_start.py [--repeat 15] [--warmup 2] [--quick]

A participant is already in a fresh ``SimulatedRoom`` (subscribed, so audio output starts)
and the time is measured to the agent's first final transcript segment, the greeting, with
the same scripted model (a new ``ScriptedLLM`` per run) and scripted voice:

- ours: ``run_job`` (the composition root: room lease, store join on a SQLite file, the
  session supervisor, presence, recording), timed from calling it;
- bare: ``AgentSession(llm, tts, manual turn detection)`` started with ``room_io`` on the
  room, then ``generate_reply(instructions=GREETING)``, timed from building the session.

Runs alternate (ours first, then bare first) after a warm-up. Ours is also split into its
main steps: the room lease claimed, the store's join answered, the session started.

Target: ours within 1.1x of the bare session.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.testing import fake_job_context

from {{ cookiecutter.package_name }} import worker
from {{ cookiecutter.package_name }}.assistant import GREETING, Assistant
from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience.returning import ParticipantPresence
from {{ cookiecutter.package_name }}.resilience.supervisor import SessionSupervisor
from {{ cookiecutter.package_name }}.settings import Settings, load_settings
from {{ cookiecutter.package_name }}.testing import (
    ScriptedLLM,
    ScriptedTTS,
    SimulatedJob,
    SimulatedRoom,
)

USER, AGENT = "user-1", "agent"
REPLY = "Hello! How can I help?"
STEPS = ("to lease claimed", "to store join answered", "to session started")

# seconds since the current run of ours began, per step (filled in by the wrappers below)
marks: dict[str, float] = {}
began = 0.0


def mark_after(step: str, method: Callable[..., Any]) -> Callable[..., Any]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        result = await method(*args, **kwargs)
        marks[step] = time.perf_counter() - began
        return result

    return timed


def instrument() -> None:
    """Note when run_job's main steps finish (wrappers around what it calls; nothing else)."""
    worker.claim_room = mark_after(STEPS[0], worker.claim_room)
    # wrapping a method in place is what this does on purpose (mypy refuses it by default)
    ParticipantPresence.join = mark_after(STEPS[1], ParticipantPresence.join)  # type: ignore[method-assign]
    SessionSupervisor.start = mark_after(STEPS[2], SessionSupervisor.start)  # type: ignore[method-assign]


def new_room(name: str) -> SimulatedRoom:
    # a new room per run, so each run is a new participant for the store
    room = SimulatedRoom(name=name, agent_identity=AGENT)
    room.add_participant(USER, subscribe=True)
    return room


def stack() -> ModelStack:
    return ModelStack(
        name="scripted", llm=ScriptedLLM([REPLY]), tts=ScriptedTTS(), turn_detection="manual"
    )


async def greeted(room: SimulatedRoom) -> None:
    def final(r: SimulatedRoom) -> bool:
        return any(s.role == "agent" and s.final for s in r.transcript())

    await room.wait_until(final, timeout=10)


async def ours(name: str, settings: Settings) -> float:
    global began
    room, models = new_room(name), stack()
    with SimulatedJob(room, agent_identity=AGENT) as job:
        marks.clear()
        began = time.perf_counter()
        conversation = await worker.run_job(job.ctx, settings=settings, models=lambda: models)
        await greeted(room)
        elapsed = time.perf_counter() - began
        assert conversation is not None
        await conversation.aclose()
        await room.disconnect()
    return elapsed


async def bare(name: str) -> float:
    room, model, voice = new_room(name), ScriptedLLM([REPLY]), ScriptedTTS()  # as stack()
    with fake_job_context(room=room, agent_identity=AGENT):
        start = time.perf_counter()
        session: AgentSession = AgentSession(
            llm=model, tts=voice, turn_handling={"turn_detection": "manual"}
        )
        await session.start(agent=Assistant(), room=room)
        session.generate_reply(instructions=GREETING)
        await greeted(room)
        elapsed = time.perf_counter() - start
        await session.aclose()
        await room.disconnect()
    return elapsed


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:>8.1f} | {max(samples) * 1000:>8.1f}"


async def main(repeat: int, warmup: int) -> None:
    logging.disable(logging.WARNING)  # livekit's per-session info lines would drown the table
    instrument()
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    steps: dict[str, list[float]] = {step: [] for step in STEPS}
    with tempfile.TemporaryDirectory(prefix="bench-job-start-") as tmp:
        db = str(Path(tmp) / "sessions.sqlite3")
        settings = load_settings(session_db_path=db, room_mode="one-to-one")
        for run in range(warmup + repeat):
            order = ("ours", "bare") if run % 2 == 0 else ("bare", "ours")
            for which in order:
                name = f"{which}-{run}"
                took = await (ours(name, settings) if which == "ours" else bare(name))
                if run >= warmup:
                    times[which].append(took)
                    if which == "ours":
                        for step in STEPS:
                            steps[step].append(marks[step])
    print(f"{repeat} runs each after {warmup} warm-up; ms from job start to the greeting's final")
    print(f"{'':>30} | {'median':>8} | {'max':>8}")
    print(f"{'ours (run_job)':>30} | {ms(times['ours'])}")
    for step in STEPS:
        print(f"{'  .. ' + step:>30} | {ms(steps[step])}")
    print(f"{'bare AgentSession':>30} | {ms(times['bare'])}")
    ours_ms, bare_ms = (statistics.median(times[w]) * 1000 for w in ("ours", "bare"))
    print(f"ours - bare (medians): {ours_ms - bare_ms:.1f} ms")
    print(f"ratio ours / bare (medians): {ours_ms / bare_ms:.2f}; target <= 1.1")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs timed per way")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per way first")
    parser.add_argument("--quick", action="store_true", help="2 runs per way after 1 warm-up")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.warmup = 2, 1
    asyncio.run(main(args.repeat, args.warmup))
