"""A returning participant: recognised, welcomed back once, with the whole conversation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from {{ cookiecutter.package_name }}.backends import Backends, open_backends
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import (
    SCENARIOS,
    Simulation,
    run_scenario,
)
from {{ cookiecutter.package_name }}.simulation.scenarios import (
    REFRESH_AFTER,
    REFRESH_BEFORE,
)
from {{ cookiecutter.package_name }}.testing import ScriptedLLM
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

USER = "user-1"


@pytest.fixture(params=["memory", "redis"])
async def backends(request: pytest.FixtureRequest) -> AsyncIterator[Backends]:
    """The store and room leases two jobs share, as production pairs them."""
    if request.param == "memory":
        shared = open_backends(load_settings(session_db_path=":memory:"))
        yield shared
        await shared.aclose()
        return
    with RedisServer() as server:
        shared = open_backends(load_settings(redis_url=server.url))
        yield shared
        await shared.aclose()


def stored_messages(record) -> list[tuple[str, str]]:
    return [
        (item["role"], " ".join(item["content"]))
        for item in record.items
        if item["type"] == "message"
    ]


async def test_refresh_welcomes_back_once_and_keeps_every_turn(backends: Backends) -> None:
    refresh = SCENARIOS["refresh"]
    obs = await run_scenario(
        "refresh",
        refresh.run,
        settings=backends.settings,
        llm=refresh.scripted_llm(),
        backends=backends,
        printer=lambda _: None,
    )
    assert obs.violations == []
    # the model answered after the return knowing what was said before it
    users_seen = [i["text"] for i in obs.model_requests[-1] if i["role"] == "user"]
    assert users_seen == [*REFRESH_BEFORE, *REFRESH_AFTER]

    record = await backends.store.load("sim-room", USER)
    assert record is not None and record.reconnect_count == 1
    assert stored_messages(record) == [
        ("assistant", refresh.replies[0]),
        ("user", REFRESH_BEFORE[0]),
        ("assistant", refresh.replies[1]),
        ("user", REFRESH_BEFORE[1]),
        ("assistant", refresh.replies[2]),
        ("assistant", refresh.replies[3]),
        ("user", REFRESH_AFTER[0]),
        ("assistant", refresh.replies[4]),
    ]
    assert len(set(record.item_ids)) == len(record.item_ids)


async def test_a_new_worker_picks_the_conversation_up(backends: Backends) -> None:
    """Another job (a restarted worker) in the same room: welcome back, full context."""
    basic = SCENARIOS["basic"]
    first = await run_scenario(
        "basic",
        basic.run,
        settings=backends.settings,
        llm=basic.scripted_llm(),
        backends=backends,
        printer=lambda _: None,
    )
    assert first.violations == []

    async def comes_back(sim: Simulation) -> None:
        await sim.join(USER)
        sim.expect_agent_turn("welcome back")
        await sim.wait_for_agent_replies(1)
        await sim.say(USER, "Can you remind me what you can do?")

    model = ScriptedLLM(["Welcome back!", "I answer questions and tell the time."])
    second = await run_scenario(
        "comes-back",
        comes_back,
        settings=backends.settings,
        llm=model,
        backends=backends,
        printer=lambda _: None,
    )
    assert second.violations == []
    first_request = [(i["role"], i["text"]) for i in second.model_requests[0]]
    earlier = [(i["role"], i["text"]) for i in first.model_requests[-1] if i["role"] != "system"]
    earlier.append(("assistant", basic.replies[-1]))
    assert [m for m in first_request if m[0] != "system"] == earlier
    record = await backends.store.load("sim-room", USER)
    assert record is not None and record.reconnect_count == 1


async def test_repeated_join_events_do_not_welcome_twice() -> None:
    async def join_event_twice(sim: Simulation) -> None:
        await sim.join(USER)
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        # the same connection announced again (an event replayed by a reconnecting SDK)
        sim.room.emit("participant_connected", sim.room.remote_participants[USER])
        await sim.say(USER, "Hello?")

    obs = await run_scenario(
        "twice",
        join_event_twice,
        settings=load_settings(),
        llm=ScriptedLLM(["Hi!", "Yes, I'm here."]),
        printer=lambda _: None,
    )
    assert obs.violations == []


class _Waiter(logging.Handler):
    """Sets an event when a log line with ``message`` arrives."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.seen.set()


async def test_the_job_ends_when_the_participant_does_not_return() -> None:
    gone = _Waiter("participant did not return")

    async def leaves_for_good(sim: Simulation) -> None:
        await sim.join(USER)
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        await sim.leave(USER)
        sim.expect_job_end("participant did not return")
        await asyncio.wait_for(gone.seen.wait(), timeout=10)

    logger = logging.getLogger("{{ cookiecutter.package_name }}.resilience.returning")
    logger.addHandler(gone)
    logger.setLevel(logging.INFO)
    try:
        settings = load_settings().model_copy(update={"session_retention_s": 0.2})
        obs = await run_scenario(
            "gone",
            leaves_for_good,
            settings=settings,
            llm=ScriptedLLM(["Hi!"]),
            printer=lambda _: None,
        )
    finally:
        logger.removeHandler(gone)
    assert obs.violations == []
    assert gone.seen.is_set() and obs.job_ended == ["participant did not return"]
