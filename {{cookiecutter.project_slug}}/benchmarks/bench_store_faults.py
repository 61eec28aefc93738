"""Calls through Redis faults (figures, not pass/fail).

    uv run python benchmarks/bench_store_faults.py [--quick] [--only kill-12s,oom-8s]

Each call runs the worker in its production wiring (``REDIS_URL`` set: the session store and
the room lease in a real redis-server, the production room lease, ROOM_LEASE_S) with a scripted user
saying a line about every second, and the fault happens after three turns: Redis killed for
1/6/12/30 s (restarted with its data), frozen by SIGSTOP for 12 s, restarted without
persistence, or full (``maxmemory`` + ``noeviction``) for 8 s and then lifted. The calls run one
after another (a few minutes). ``--quick``: one fault of each kind, 1-2 s long, with one turn
before and after it (about half a minute).

For each fault:
- ran through: how long after the fault began the agent was still answering (at least the
  fault's length when the call goes on);
- turns in fault, and their median time to an answer against a call with no fault, run first
  in the same process (the ratio: 1.00x means the fault did not slow the conversation);
- writes queued at peak (each is one append: a conversation item or a transcript segment);
- items lost: conversation items a fresh client does not read back from Redis (target 0);
- drain: from Redis answering again until every queued write had landed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import statistics
from collections.abc import Callable
from typing import Any

from {{ cookiecutter.package_name }}.simulation.scenario_redis import (
    FaultMeasures,
    FaultRun,
    call_through_fault,
)
from {{ cookiecutter.package_name }}.testing.redis_faults import (
    Kill,
    OutOfMemory,
    Pause,
    RedisFault,
    Wipe,
)


class NoFault(RedisFault):
    """The baseline: the same call, and Redis answers throughout."""

    name = "no fault"
    breaks = "nothing happens to redis"
    heals = "still nothing"

    def _break(self) -> None:
        pass

    def _heal(self) -> None:
        pass


def faults(quick: bool) -> dict[str, Callable[[], RedisFault]]:
    if quick:  # one of each kind
        return {
            "kill-1s": lambda: Kill(1),
            "sigstop-2s": lambda: Pause(2),
            "wipe-1s": lambda: Wipe(1),
            "oom-2s": lambda: OutOfMemory(2),
        }
    table: dict[str, Callable[[], RedisFault]] = {
        f"kill-{s}s": functools.partial(Kill, s) for s in (1, 6, 12, 30)
    }
    table["sigstop-12s"] = lambda: Pause(12)
    table["wipe-1s"] = lambda: Wipe(1)
    table["oom-8s"] = lambda: OutOfMemory(8)
    return table


def turn_times(m: FaultMeasures, *, in_fault: bool) -> list[float]:
    """Seconds from saying each turn to its answer (only the turns during the fault, or all)."""
    began = m.fault_began_s if m.fault_began_s is not None else 0.0
    ended = m.fault_ended_s if m.fault_ended_s is not None else began
    return [
        answered - said
        for said, answered in zip(m.said_s, m.answered_s, strict=False)
        if not in_fault or (said <= ended and answered >= began)
    ]


def row(label: str, run: FaultRun, baseline_turn: float) -> str:
    m = run.measures
    lasted = (m.fault_ended_s or 0.0) - (m.fault_began_s or 0.0)
    during = turn_times(m, in_fault=True)
    turn = statistics.median(during) if during else float("nan")
    ended = "" if not run.observations.job_ended else "  CALL ENDED"
    problems = "" if not run.violations else f"  ({len(run.violations)} violations)"
    drained = f"{m.drained_s:>7.2f}" if m.drained_s is not None else f"{'never':>7}"
    return (
        f"{label:<14} {lasted:>8.1f} {m.ran_through_s or 0.0:>12.1f} {m.turns_during:>8} "
        f"{turn:>7.2f} {turn / baseline_turn:>6.2f}x {m.queued_peak:>7} {m.lost:>5} "
        f"{drained}{ended}{problems}"
    )


async def main(quick: bool, only: set[str]) -> None:
    print("calls through redis faults: production wiring, one user turn a second")
    # FaultCall's options; its default: 3 and 3
    turns: dict[str, Any] = {"before": 1, "after": 1} if quick else {}
    baseline = await call_through_fault(NoFault(), during=3 if quick else 6, **turns)
    base_turn = statistics.median(turn_times(baseline.measures, in_fault=False))
    print(f"baseline (no fault): median turn {base_turn:.2f} s, items lost "
          f"{baseline.measures.lost}\n")  # fmt: skip
    print(f"{'fault':<14} {'lasted s':>8} {'ran through s':>12} {'turns in':>8} "
          f"{'turn s':>7} {'x base':>7} {'queued':>7} {'lost':>5} {'drain s':>7}")  # fmt: skip
    for label, make in faults(quick).items():
        if only and label not in only:
            continue
        run = await call_through_fault(make(), **turns)
        print(row(label, run, base_turn), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one fault of each kind, 1-2 s")
    parser.add_argument("--only", default="", help="comma-separated fault labels to run")
    options = parser.parse_args()
    # the store logs each outage at WARNING; the table is the output here
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(options.quick, {o for o in options.only.split(",") if o}))
