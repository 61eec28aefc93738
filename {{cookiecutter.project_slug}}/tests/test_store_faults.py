"""Store faults never end a call or lose a turn, in the production wiring.

``run_job`` gets settings with ``redis_url`` set and no ``store``: it opens the session store
and the room lease from the same settings, as ``python agent.py start`` does, with the
production room lease (ROOM_LEASE_S, 3 s). A real redis-server is killed, frozen, wiped,
filled or failed over while a scripted user says a line about every second. Each call must go
on (the job is never ended, the agent answers every turn), and afterwards a fresh store client,
with no in-process copy, must read every conversation item from Redis once, in order.

The calls (and the ``simulate --scenario redis-outage`` run) go concurrently in one event loop,
each against its own redis-server, so the module takes about as long as the longest call (a
30 s outage) rather than their sum; each case is then checked by a test of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_asyncio

from {{ cookiecutter.package_name }}.backends import open_session_store
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import (
    SCENARIOS,
    Observations,
    Simulation,
    run_scenario,
)
from {{ cookiecutter.package_name }}.simulation.scenario_redis import (
    GREETING_REPLY,
    FaultRun,
    call_through_fault,
    compare,
    conversation_script,
    expected_messages,
    stored_messages,
)
from {{ cookiecutter.package_name }}.simulation.scenarios import USER
from {{ cookiecutter.package_name }}.testing import ScriptedLLM
from {{ cookiecutter.package_name }}.testing.redis_faults import (
    Failover,
    Kill,
    OutOfMemory,
    Pause,
    Wipe,
)

# label -> how to run the call (fresh fault objects: each call owns its servers)
CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "kill-1s": lambda: {"fault": Kill(1)},
    "kill-6s": lambda: {"fault": Kill(6)},
    "kill-12s": lambda: {"fault": Kill(12)},
    "kill-30s": lambda: {"fault": Kill(30)},
    "sigstop-12s": lambda: {"fault": Pause(12)},
    "restart-without-persistence": lambda: {"fault": Wipe(1)},
    "maxmemory-noeviction-then-lifted": lambda: {"fault": OutOfMemory(8)},
    "sentinel-failover": lambda: {"fault": Failover(), "during": 6},
    # the job starts and the participant joins while Redis is down (15 s)
    "join-during-outage-new": lambda: {"fault": Kill(15), "join_during": True, "before": 0},
    "join-during-outage-known": lambda: {
        "fault": Kill(15),
        "join_during": True,
        "before": 0,
        "known": True,
    },
}
# a blip this short may fall between two writes: the store need not notice it
UNNOTICEABLE = {"kill-1s"}
JOINED_DURING = {"join-during-outage-new", "join-during-outage-known"}


SIMULATE = "simulate redis-outage"
LOG = "log"


class LogMessages(logging.Handler):
    """The worker's log lines (INFO and up) while the calls run."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def simulate_redis_outage() -> tuple[Observations, list[str]]:
    """The scenario as `simulate --scenario redis-outage` runs it; what it printed."""
    chosen = SCENARIOS["redis-outage"]
    lines: list[str] = []
    async with chosen.prepare(load_settings()) as settings:
        observations = await run_scenario(
            chosen.name,
            chosen.run,
            settings=settings,
            llm=chosen.scripted_llm(),
            checks=chosen.checks,
            printer=lines.append,
        )
    return observations, lines


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fault_runs() -> dict[str, Any]:
    """Every call through a fault, run together; label -> the run (or what it raised)."""
    worker_log, log = logging.getLogger("{{ cookiecutter.package_name }}"), LogMessages()
    level = worker_log.level
    worker_log.setLevel(logging.INFO)
    worker_log.addHandler(log)
    started = time.monotonic()
    try:
        runs = await asyncio.gather(
            *(call_through_fault(**make()) for make in CASES.values()),
            simulate_redis_outage(),
            return_exceptions=True,
        )
    finally:
        worker_log.removeHandler(log)
        worker_log.setLevel(level)
    print(f"\n{len(runs)} calls through faults took {time.monotonic() - started:.1f} s")
    return {**dict(zip([*CASES, SIMULATE], runs, strict=True)), LOG: log.messages}


def run_of(fault_runs: dict[str, Any], case: str) -> Any:
    run = fault_runs[case]
    if isinstance(run, BaseException):
        raise run
    return run


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", list(CASES))
async def test_the_call_goes_on_and_redis_holds_every_turn_once_in_order(
    fault_runs: dict[str, Any], case: str
) -> None:
    run: FaultRun = run_of(fault_runs, case)
    m = run.measures
    # the call went on: never ended, every turn answered (and seen by the model), one greeting
    assert run.observations.job_ended == []
    assert run.violations == []
    # the fault happened while the user talked, and the store noticed it: an outage, or (a
    # restart that fell between two writes) a live record Redis lost, given back from memory
    assert m.turns_during >= 1
    if case not in UNNOTICEABLE:
        assert m.outages + m.given_back >= 1
    # a fresh client reads every conversation item from Redis once, in order
    assert m.stored == m.expected
    assert run.record is not None
    assert len(set(run.record.item_ids)) == len(run.record.item_ids)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", sorted(JOINED_DURING))
async def test_a_participant_who_joins_during_an_outage_is_greeted_at_once(
    fault_runs: dict[str, Any], case: str
) -> None:
    run: FaultRun = run_of(fault_runs, case)
    # served from memory at once, not after the 15 s outage
    assert run.measures.greeted_after_join_s is not None
    assert run.measures.greeted_after_join_s < 5.0
    agent_turns = [s["text"] for s in run.observations.segments if s["role"] == "agent"]
    assert agent_turns.count(GREETING_REPLY) == 1


@pytest.mark.asyncio(loop_scope="module")
async def test_the_log_says_why_a_job_serves_during_an_outage(
    fault_runs: dict[str, Any],
) -> None:
    messages = fault_runs[LOG]
    reason = "lease store unavailable: serving this room at once"
    serving = [m for m in messages if m.startswith(reason)]
    assert len(serving) >= len(JOINED_DURING)
    # not the false reason the worker used to give
    assert not [m for m in messages if "another worker is primary" in m]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_known_participant_s_earlier_turns_reach_the_model_once_redis_answers(
    fault_runs: dict[str, Any],
) -> None:
    run: FaultRun = run_of(fault_runs, "join-during-outage-known")
    earlier_lines, _ = conversation_script(2, tag="Earlier")
    first, last = run.observations.model_requests[0], run.observations.model_requests[-1]
    # during the outage the store could not say who they were: greeted as new...
    assert not any(item["text"] in earlier_lines for item in first)
    # ...and once Redis answered, their earlier turns joined the model's context, once
    seen = [item["text"] for item in last if item["role"] == "user"]
    assert seen[:2] == earlier_lines
    assert all(seen.count(line) == 1 for line in earlier_lines)


@pytest.mark.asyncio(loop_scope="module")
async def test_simulate_redis_outage_shows_the_outage_and_loses_nothing(
    fault_runs: dict[str, Any],
) -> None:
    observations, lines = run_of(fault_runs, SIMULATE)
    assert observations.job_ended == []
    assert observations.violations == []
    shown = "\n".join(lines)
    assert "redis killed (SIGKILL); back in 12 s" in shown
    assert "redis restarted with its data" in shown
    outage = observations.timings["redis_outage"]
    assert outage["turns_during"] >= 10
    stored = outage["items_stored"]
    assert stored == outage["items_expected"] == 1 + 2 * 18
    assert f"redis holds {stored} conversation items, {stored} expected" in shown


def test_a_read_back_that_lacks_items_is_a_loss() -> None:
    """What makes the scenario (and `simulate`) fail: Redis holding less than was said."""
    lines, replies = conversation_script(2)
    expected = expected_messages(GREETING_REPLY, lines, replies)
    assert compare(expected, None) == ["redis lacks 5 of 5 conversation items"]


async def test_a_blocked_event_loop_does_not_end_a_call_on_the_default_store() -> None:
    """No REDIS_URL, one worker: a 9 s stall (a blocking callback) outlives the 3 s room
    lease; with nobody else asking, the holder keeps the room and every write lands."""
    settings = load_settings()
    assert settings.redis_url is None
    lines, replies = conversation_script(5)

    def block_once(event: Any) -> None:
        if event.item.type == "message" and event.item.text_content == lines[2]:
            time.sleep(9)  # what a blocking tool or callback does to the event loop

    async def talk(sim: Simulation) -> None:
        await sim.join(USER, name="Simulated User")
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        assert sim.session is not None
        sim.session.on("conversation_item_added", block_once)
        for line in lines:
            await sim.say(USER, line)

    obs = await run_scenario(
        "blocked-loop",
        talk,
        settings=settings,
        llm=ScriptedLLM([GREETING_REPLY, *replies]),
        printer=lambda _: None,
    )
    assert obs.job_ended == []
    assert obs.violations == []
    assert max(obs.timings["turns_s"]) >= 9  # the loop really stalled
    # a fresh store on the same settings reads every item once, in order
    store = open_session_store(settings)
    try:
        record = await store.load("sim-room", USER)
    finally:
        await store.aclose()
    assert record is not None
    assert stored_messages(record) == expected_messages(GREETING_REPLY, lines, replies)
    assert len(set(record.item_ids)) == len(record.item_ids)
