"""The ``gemini-soak`` scenario: many turns of a Gemini Live call through seeded random
faults, with the worker's own job wiring and resume handler, then its invariants and figures.

``simulate --scenario gemini-soak --turns N [--seed S] [--gemini-url URL]``. Without a URL
the faults come from a local Live server (:class:`~..testing.gemini.chaos.ServerChaos`:
drops, mid-reply drops, goAway, refused and expired handles, ``resumable: false``, slow or
missing setupComplete); with ``--gemini-url`` the scenario soaks that endpoint (or proxy)
with the faults a client can make (aborted websockets, a handle no server issued). Faults
are paced to the handler's drop budget (``ReconnectPolicy.max_drops`` per ``drop_window``),
so the soak measures recovery, not the budget that ends an accept-then-drop loop.

Invariants: every user turn gets a complete reply (the local server's scripted answer, in
as many parts as a cut made; against a URL, whose answers are unknown: one reply, and every
reply a drop cut continued, see ``chaos.reply_problem``); the session is never restarted
and the reconnect budget never spent; the local server holds the worker's conversation;
one agent track, each transcript segment final once.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from ..resilience.gemini.resume import ReconnectedEvent
from ..settings import Settings
from ..testing.gemini.chaos import (
    ClientChaos,
    DropPacer,
    ServerChaos,
    TurnReply,
    reply_problem,
    reply_settled,
    scripted_answer,
)
from .harness import Observations, Simulation
from .invariants import one_agent_audio_track, segments_finalised_once
from .scenario_gemini import (
    GeminiDrill,
    current_drill,
    drill_models,
    gemini_endpoint,
    unlike_the_worker,
)
from .scenarios import USER, scenario

DEFAULT_TURNS = 100
FAULT_RATE = 0.5
"""The chance of a fault before each turn (then paced to the drop budget)."""
GRACE_S = 3.0
"""How long an incomplete reply may stand still before its turn counts as cut for good."""
REPLY_TIMEOUT_S = 30.0
WORDS = ("apples", "rivers", "trains", "music", "clouds", "maps", "tea", "bikes", "stars")


@dataclass(frozen=True)
class SoakOptions:
    """``--turns`` and ``--seed`` (None: a fresh seed, printed so the run can be repeated)."""

    turns: int = DEFAULT_TURNS
    seed: int | None = None


_OPTIONS = SoakOptions()


def _prepare(
    settings: Settings,
    gemini_url: str | None = None,
    turns: int | None = None,
    seed: int | None = None,
    **_options: object,
) -> AbstractAsyncContextManager[Settings]:
    global _OPTIONS
    _OPTIONS = SoakOptions(turns or DEFAULT_TURNS, seed)
    return gemini_endpoint(settings.model_copy(update={"room_mode": "one-to-one"}), gemini_url)


def _checks(obs: Observations, sim: Simulation) -> list[str]:
    return [
        *one_agent_audio_track(obs),
        *segments_finalised_once(obs),
        *sim.findings.get("gemini_soak_violations", []),
    ]


@scenario(
    "gemini-soak",
    summary="a long Gemini Live call through random faults (--turns, --seed); every turn "
    "answered in full",
    models=drill_models,
    checks=_checks,
    prepare=_prepare,
)
async def gemini_soak(sim: Simulation) -> None:
    drill = current_drill("gemini-soak")
    options = _OPTIONS
    seed = options.seed if options.seed is not None else random.randrange(2**31)
    where = "the local Live server" if drill.server is not None else "client-side faults"
    sim.progress(f"seed {seed}, {options.turns} turns, {where} (repeat with --seed {seed})")
    await sim.join(USER, name="Simulated User")
    sim.expect_agent_turn("greeting")
    await sim.wait_for_agent_replies(1)
    soak = Soak(sim, drill, random.Random(seed))
    try:
        await soak.run(options.turns)
    finally:
        await soak.aclose()
    invariants = await soak.invariants()
    sim.findings["gemini_soak_violations"] = [
        f"{name}: {problem}" for name, broken in invariants.items() for problem in broken
    ]
    sim.timings["gemini_soak"] = figures = soak.figures(seed)
    for line in report_lines(figures, invariants):
        sim.progress(line)


class Soak:
    """One soak run: the turns, the faults before them, and what came of each."""

    def __init__(self, sim: Simulation, drill: GeminiDrill, rng: random.Random) -> None:
        self.sim, self.drill, self.rng = sim, drill, rng
        resume = drill.resume
        self.reconnects: list[ReconnectedEvent] = []
        resume.on("reconnected", self.reconnects.append)
        pacer = DropPacer.for_policy(resume.policy)
        self.chaos: ServerChaos | ClientChaos
        if drill.server is not None:
            self.chaos = ServerChaos(drill.server, rng, pacer=pacer)
            self.answer: Callable[[str], str] | None = scripted_answer
        else:
            self.chaos = ClientChaos(lambda: drill.models, rng, pacer=pacer)
            self.answer = None  # an endpoint's own model: only the shape can be checked
        self.turns = 0
        self.broken: list[str] = []

    async def run(self, turns: int) -> None:
        """Say ``turns`` lines, each after a fault now and then; note every broken turn."""
        supervisor = self.sim.supervisor
        assert supervisor is not None, "the job started its conversation on join"
        heard = 0
        for turn in range(turns):
            fault = await self.chaos.inject() if self.rng.random() < FAULT_RATE else None
            text = f"turn {turn}: " + " ".join(self.rng.choice(WORDS) for _ in range(4))
            self.sim.user_lines.append(text)
            await self.sim.room.send_chat(USER, text)
            settled = await reply_settled(
                lambda: supervisor.chat_ctx().items,
                heard,
                self.answer,
                grace=GRACE_S,
                give_up_after=REPLY_TIMEOUT_S,
            )
            heard += settled is not None
            self.turns += 1
            if (problem := self._problem(settled, text)) is not None:
                self.broken.append(f"turn {turn} after {fault or 'no fault'}: {problem}")

    def _problem(self, settled: TurnReply | None, said: str) -> str | None:
        if settled is None:
            return "it never reached the worker's chat context"
        if settled.user != said:
            return f"the worker holds {settled.user!r} instead"
        return reply_problem(settled, self.answer)

    async def aclose(self) -> None:
        if isinstance(self.chaos, ClientChaos):
            await self.chaos.aclose()

    async def invariants(self) -> dict[str, list[str]]:
        """Each invariant (as the report names it) with what broke it (empty: it held)."""
        metrics, supervisor = self.drill.resume.metrics, self.sim.supervisor
        replies = list(self.broken)
        if self.answer is None and metrics.replies_cut > metrics.replies_continued:
            lost = metrics.replies_cut - metrics.replies_continued
            replies.append(f"{lost} reply(ies) cut by a drop never continued")
        kept_up = []
        if metrics.exhausted:
            kept_up.append(f"the reconnect budget was spent {metrics.exhausted} time(s)")
        if supervisor is not None and supervisor.restarts:
            kept_up.append(f"the session was restarted {supervisor.restarts} time(s)")
        found = {
            "every user turn gets a complete reply": replies,
            "no session restart, reconnect budget never spent": kept_up,
        }
        if self.drill.server is not None and supervisor is not None:
            found["the server holds the worker's conversation"] = await unlike_the_worker(
                self.drill.server, supervisor
            )
        return found

    def figures(self, seed: int) -> dict[str, Any]:
        """What the run measured (``simulate --json`` keeps it under timings.gemini_soak)."""
        metrics = self.drill.resume.metrics
        downtimes = sorted(r.downtime for r in self.reconnects)
        return {
            "seed": seed,
            "turns": self.turns,
            "faults": dict(sorted(self.chaos.counts.items())),
            "faults_held_back": self.chaos.held_back,
            "reconnects": len(self.reconnects),
            "resumed": sum(r.resumed for r in self.reconnects),
            "replayed": sum(not r.resumed for r in self.reconnects),
            "items_replayed": sum(r.items_replayed for r in self.reconnects),
            "handle_refusals": metrics.handle_refusals,
            "go_aways": metrics.go_aways,
            "downtime_ms": _spread(downtimes),
            "replies_complete": self.turns - len(self.broken),
            "replies_cut": metrics.replies_cut,
            "replies_continued": metrics.replies_continued,
        }


def _spread(seconds: list[float]) -> dict[str, float] | None:
    """Median, 95th percentile (nearest rank) and maximum of sorted ``seconds``, in ms."""
    if not seconds:
        return None
    p95 = seconds[max(0, math.ceil(0.95 * len(seconds)) - 1)]
    return {
        "median": round(statistics.median(seconds) * 1000, 1),
        "p95": round(p95 * 1000, 1),
        "max": round(seconds[-1] * 1000, 1),
    }


def report_lines(figures: dict[str, Any], invariants: dict[str, list[str]]) -> list[str]:
    """The invariants (held or broken) and the figures, as progress lines."""
    lines = ["invariants:"]
    lines += [f"  {name}: {_held(broken)}" for name, broken in invariants.items()]
    turns, complete = figures["turns"], figures["replies_complete"]
    faults = ", ".join(f"{k} {n}" for k, n in figures["faults"].items()) or "none"
    spread = figures["downtime_ms"]
    downtime = (
        f"median {spread['median']} ms, p95 {spread['p95']} ms, max {spread['max']} ms"
        if spread
        else "no reconnects"
    )
    lines += [
        "figures:",
        f"  turns {turns}; faults {sum(figures['faults'].values())}: {faults}",
        f"  faults held back to stay within the drop budget: {figures['faults_held_back']}",
        f"  reconnects {figures['reconnects']}: {figures['resumed']} resumed, "
        f"{figures['replayed']} replayed ({figures['items_replayed']} items replayed, "
        f"{figures['handle_refusals']} handles refused, {figures['go_aways']} goAway)",
        f"  downtime {downtime}",
        f"  replies completed {complete}/{turns} ({figures['replies_cut']} cut by a drop, "
        f"{figures['replies_continued']} continued)",
    ]
    return lines


def _held(broken: list[str]) -> str:
    return f"BROKEN ({len(broken)})" if broken else "held"
