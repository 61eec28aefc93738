"""Calls through Redis faults, and the ``redis-outage`` scenario built on them.

The worker runs in its production wiring: ``REDIS_URL`` points at a redis-server started for
the run (never at a user's: it is killed), so ``run_job`` opens the session store and the room
lease from the settings, as ``python agent.py start`` does. The scripted user says a line about
every second while the fault happens. Afterwards a fresh store client (no in-process cache)
reads the conversation back from Redis: every turn must be there once, in order.

:class:`FaultCall` is what the user does (a scenario function) and what it measured;
:func:`call_through_fault` runs one whole call and reads Redis back once the job has ended
(tests and ``benchmarks/bench_store_faults.py`` use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..backends import open_session_store
from ..resilience.store import RedisStore, SessionRecord
from ..settings import Settings, load_settings
from ..testing import ScriptedLLM
from ..testing.redis_faults import Kill, RedisFault
from .harness import Observations, Printer, Simulation, run_scenario
from .invariants import check_conversation
from .scenarios import USER, scenario

CADENCE_S = 1.0  # one user turn about every second, as the measurements in issue 9
DRAIN_LIMIT_S = 60.0
ROOM = "sim-room"
GREETING_REPLY = "Hello! I'm your voice assistant. How can I help you today?"
TOPICS = ["the weather", "train times", "a recipe", "the news", "a museum", "a good book"]

Message = tuple[str, str]  # (role, text) of a conversation item


def conversation_script(turns: int, tag: str = "") -> tuple[list[str], list[str]]:
    """``turns`` user lines and the scripted answers to them (``tag`` keeps calls apart)."""
    prefix = f"{tag} " if tag else ""
    topics = [TOPICS[n % len(TOPICS)] for n in range(turns)]
    lines = [f"{prefix}Question {n + 1}: tell me about {t}." for n, t in enumerate(topics)]
    replies = [
        f"{prefix}Answer {n + 1}: here is what I know about {t}." for n, t in enumerate(topics)
    ]
    return lines, replies


def expected_messages(greeting: str, lines: list[str], replies: list[str]) -> list[Message]:
    """The items a call should leave in the store: the greeting, then each turn."""
    messages: list[Message] = [("assistant", greeting)]
    for line, reply in zip(lines, replies, strict=True):
        messages += [("user", line), ("assistant", reply)]
    return messages


def stored_messages(record: SessionRecord | None) -> list[Message]:
    """The conversation messages of a stored record, in stored order."""
    if record is None:
        return []
    return [
        (item.get("role", ""), " ".join(str(c) for c in item.get("content", [])))
        for item in record.items
        if item.get("type") == "message"
    ]


async def read_back(settings: Settings, room: str = ROOM, identity: str = USER) -> SessionRecord:
    """The participant's record as Redis holds it, through a fresh store (no cached copy)."""
    store = open_session_store(settings)
    try:
        record = await store.load(room, identity)
    finally:
        await store.aclose()
    if record is None:
        raise LookupError("redis holds no record for the participant")
    return record


def compare(expected: list[Message], record: SessionRecord | None) -> list[str]:
    """What a fresh read of Redis shows wrong: lost, doubled or reordered items."""
    stored = stored_messages(record)
    if stored == expected and record is not None and len(set(record.item_ids)) == len(record.items):
        return []
    missing = [m for m in expected if m not in stored]
    doubled = len(stored) - len(set(stored))
    problems = []
    if missing:
        problems.append(f"redis lacks {len(missing)} of {len(expected)} conversation items")
    if doubled:
        problems.append(f"redis holds {doubled} conversation items twice")
    extra = [m for m in stored if m not in expected]
    if extra:
        problems.append(f"redis holds {len(extra)} conversation items nobody said")
    if not problems:
        problems.append("redis holds the conversation items out of order")
    return problems


@dataclass
class FaultMeasures:
    """What one call through a fault measured (seconds are monotonic, from the call's start)."""

    fault: str
    fault_began_s: float | None = None
    fault_ended_s: float | None = None
    greeted_after_join_s: float | None = None
    said_s: list[float] = field(default_factory=list)  # when each user turn was said...
    answered_s: list[float] = field(default_factory=list)  # ...and answered
    turns_during: int = 0  # user turns said or answered while the fault lasted
    queued_peak: int = 0  # writes waiting for Redis, at most
    drained_s: float | None = None  # from the fault's end until every queued write had landed
    outages: int = 0  # outages the store noticed
    given_back: int = 0  # live conversations the store gave Redis again from memory
    expected: list[Message] = field(default_factory=list)
    stored: list[Message] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Expected conversation items Redis does not hold."""
        return sum(1 for m in self.expected if m not in self.stored)

    @property
    def ran_through_s(self) -> float | None:
        """How long after the fault began the agent was still answering."""
        if self.fault_began_s is None or not self.answered_s:
            return None
        return max(0.0, self.answered_s[-1] - self.fault_began_s)


class FaultCall:
    """A scripted user's call through ``fault``: ``before`` turns, ``during`` turns while it
    lasts (default: one a second), then ``after`` turns once Redis is back.

    ``join_during``: the fault has begun before the job starts (the caller begins it), and
    ends ``fault.seconds`` after it began; the participant joins at once.
    """

    def __init__(
        self,
        fault: RedisFault,
        *,
        before: int = 3,
        during: int | None = None,
        after: int = 3,
        join_during: bool = False,
        tag: str = "",
    ) -> None:
        self.fault = fault
        self.before, self.after = before, after
        self.during = during if during is not None else max(3, math.ceil(fault.seconds / CADENCE_S))
        self.join_during = join_during
        self.lines, self.replies = conversation_script(before + self.during + after, tag)
        self.measures = FaultMeasures(fault.label)
        self.measures.expected = expected_messages(GREETING_REPLY, self.lines, self.replies)
        self._started = time.monotonic()
        self._next_turn = 0.0

    def scripted_llm(self) -> ScriptedLLM:
        """The model of this call: the greeting, then one answer per line."""
        return ScriptedLLM([GREETING_REPLY, *self.replies])

    def since_start(self, moment: float | None) -> float | None:
        return None if moment is None else round(moment - self._started, 3)

    async def __call__(self, sim: Simulation) -> None:
        self._started = time.monotonic()
        fault, m = self.fault, self.measures
        healing: asyncio.Task[None] | None = None
        if self.join_during:
            healing = asyncio.create_task(self._end_fault_on_time(sim))
        await sim.join(USER, name="Simulated User")
        joined = time.monotonic()
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        m.greeted_after_join_s = round(time.monotonic() - joined, 3)
        store = await _job_store(sim)
        watcher = asyncio.create_task(self._watch(store))
        lines = iter(self.lines)
        try:
            for _ in range(self.before):
                await self._say(sim, next(lines))
            if healing is None:
                back = f"; back in {fault.seconds:g} s" if fault.seconds else ""
                sim.progress(f"{fault.breaks}{back} ({self.since_start(time.monotonic())} s)")
                healing = asyncio.create_task(self._run_fault(sim))
            for _ in range(self.during):
                await self._say(sim, next(lines))
            await healing
            for _ in range(self.after):
                await self._say(sim, next(lines))
            sim.progress("waiting for the writes queued during the fault to reach redis")
            assert sim.conversation is not None  # set before its store was found
            await sim.conversation.recorder.flush()
            if not await store.wait_flushed(DRAIN_LIMIT_S):
                m.violations.append(f"writes still queued {DRAIN_LIMIT_S:g} s after the fault")
        finally:
            watcher.cancel()
            if healing is not None and not healing.done():
                healing.cancel()
            m.outages = store.write_queue.outages
            m.given_back = store.records_given_back
            m.fault_began_s = self.since_start(fault.started_at)
            m.fault_ended_s = self.since_start(fault.ended_at)
            if m.fault_began_s is not None:
                began, ended = m.fault_began_s, m.fault_ended_s or math.inf
                m.turns_during = sum(
                    1
                    for said, answered in zip(m.said_s, m.answered_s, strict=False)
                    if said <= ended and answered >= began
                )

    async def _run_fault(self, sim: Simulation) -> None:
        await self.fault.run()
        sim.progress(f"{self.fault.heals} ({self.since_start(self.fault.ended_at)} s)")

    async def _end_fault_on_time(self, sim: Simulation) -> None:
        began = self.fault.started_at or time.monotonic()
        await asyncio.sleep(max(0.0, began + self.fault.seconds - time.monotonic()))
        await self.fault.end()
        sim.progress(f"{self.fault.heals} ({self.since_start(self.fault.ended_at)} s)")

    async def _say(self, sim: Simulation, line: str) -> None:
        # about one turn a second: wait out the rest of the second the last turn began in
        await asyncio.sleep(max(0.0, self._next_turn - time.monotonic()))
        self._next_turn = time.monotonic() + CADENCE_S
        self.measures.said_s.append(round(time.monotonic() - self._started, 3))
        await sim.say(USER, line)
        self.measures.answered_s.append(round(time.monotonic() - self._started, 3))

    async def _watch(self, store: RedisStore) -> None:
        m = self.measures
        while True:
            m.queued_peak = max(m.queued_peak, store.pending_writes)
            ended = self.fault.ended_at
            if ended is not None and m.drained_s is None and not store.write_queue.busy:
                m.drained_s = round(time.monotonic() - ended, 3)
            await asyncio.sleep(0.02)


async def _job_store(sim: Simulation) -> RedisStore:
    """The session store the job opened from its settings (a RedisStore)."""
    await sim.room.wait_until(lambda _: sim.conversation is not None)
    store = sim.conversation.store if sim.conversation is not None else None
    if not isinstance(store, RedisStore):
        raise RuntimeError("a Redis fault scenario needs REDIS_URL: the job opened no RedisStore")
    return store


@dataclass
class FaultRun:
    """A whole call through a fault: what the user saw, and what Redis held afterwards."""

    measures: FaultMeasures
    observations: Observations
    record: SessionRecord | None

    @property
    def violations(self) -> list[str]:
        return self.observations.violations + self.measures.violations


async def call_through_fault(
    fault: RedisFault,
    *,
    settings: Settings | None = None,
    known: bool = False,
    printer: Printer = lambda _line: None,
    **options: Any,
) -> FaultRun:
    """One call through ``fault`` in the production wiring; Redis is read back after the job.

    ``known``: the participant had an earlier call in this room (stored before the fault), so
    the store knows them. ``options`` go to :class:`FaultCall`.
    """
    call = FaultCall(fault, **options)
    base = settings or load_settings()
    async with fault.serving() as url:
        run_settings = base.model_copy(update={"redis_url": url, "room_mode": "one-to-one"})
        earlier: list[Message] = []
        if known:
            earlier = await _earlier_call(run_settings, printer)
        if call.join_during:
            await fault.begin()
            printer(f"  .. {fault.breaks} before the participant joins")
        try:
            observations = await run_scenario(
                fault.label,
                call,
                settings=run_settings,
                llm=call.scripted_llm(),
                printer=printer,
                room_name=ROOM,
            )
        finally:
            if fault.started_at is not None and fault.ended_at is None:
                await fault.end()
        call.measures.expected = earlier + call.measures.expected
        record = await read_back(run_settings)
    call.measures.stored = stored_messages(record)
    call.measures.violations += compare(call.measures.expected, record)
    return FaultRun(call.measures, observations, record)


async def _earlier_call(settings: Settings, printer: Printer) -> list[Message]:
    """A short first call that leaves the participant's record in Redis; its messages."""
    lines, replies = conversation_script(2, tag="Earlier")

    async def talk(sim: Simulation) -> None:
        await sim.join(USER, name="Simulated User")
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        for line in lines:
            await sim.say(USER, line)

    obs = await run_scenario(
        "earlier call",
        talk,
        settings=settings,
        llm=ScriptedLLM([GREETING_REPLY, *replies]),
        printer=printer,
        room_name=ROOM,
    )
    if obs.violations:
        raise RuntimeError(f"the earlier call failed: {obs.violations}")
    return expected_messages(GREETING_REPLY, lines, replies)


# -- the `redis-outage` scenario of `simulate` ------------------------------------------------

OUTAGE_S = 12.0
_OUTAGE: tuple[FaultCall, Settings] | None = None  # the running scenario's call and settings


def _outage_call() -> FaultCall:
    return FaultCall(Kill(seconds=OUTAGE_S))


@contextlib.asynccontextmanager
async def own_redis(settings: Settings, **_options: object) -> AsyncIterator[Settings]:
    """A redis-server of the scenario's own, whatever REDIS_URL says: this one is killed."""
    global _OUTAGE
    call = _outage_call()
    async with call.fault.serving() as url:
        print(f"  .. started a local redis-server at {url} (the scenario kills it)")
        run_settings = settings.model_copy(update={"redis_url": url, "room_mode": "one-to-one"})
        _OUTAGE = (call, run_settings)
        try:
            yield run_settings
        finally:
            _OUTAGE = None


def _outage_checks(obs: Observations, sim: Simulation) -> list[str]:
    return [
        *check_conversation(obs, sim.user_lines, sim.expected_roles),
        *sim.timings.get("redis_violations", []),
    ]


@scenario(
    "redis-outage",
    summary=f"redis is killed for {OUTAGE_S:g} s mid-call; the call goes on and nothing is lost",
    replies=[GREETING_REPLY, *_outage_call().replies],
    checks=_outage_checks,
    prepare=own_redis,
)
async def redis_outage(sim: Simulation) -> None:
    if _OUTAGE is None:
        raise RuntimeError("redis-outage needs its own redis-server (run it through simulate)")
    call, settings = _OUTAGE
    await call(sim)
    m = call.measures
    sim.progress(
        f"outage from {m.fault_began_s} s to {m.fault_ended_s} s: the agent answered "
        f"{m.turns_during} turns during it; at most {m.queued_peak} writes waited for redis, "
        f"all landed {m.drained_s} s after it came back"
    )
    record = await read_back(settings)
    stored = stored_messages(record)
    sim.progress(
        f"redis holds {len(stored)} conversation items, {len(m.expected)} expected "
        f"(read back by a fresh client)"
    )
    sim.timings["redis_outage"] = {
        "fault_began_s": m.fault_began_s,
        "fault_ended_s": m.fault_ended_s,
        "turns_during": m.turns_during,
        "queued_peak": m.queued_peak,
        "drained_s": m.drained_s,
        "items_stored": len(stored),
        "items_expected": len(m.expected),
    }
    sim.timings["redis_violations"] = m.violations + compare(m.expected, record)
