"""Redis dies mid-call: the call goes on, and afterwards Redis holds every turn once, in order."""

from __future__ import annotations

import asyncio

from {{ cookiecutter.package_name }}.resilience.store import open_store
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import Simulation, run_scenario
from {{ cookiecutter.package_name }}.testing import RedisServer, ScriptedLLM

USER = "user-1"
TURNS = 20
KILL_AT = {4, 9, 15}


async def test_redis_killed_and_restarted_during_a_conversation() -> None:
    with RedisServer() as server:
        store = open_store(redis_url=server.url)

        async def talk_through_outages(sim: Simulation) -> None:
            await sim.join(USER)
            sim.expect_agent_turn("greeting")
            await sim.wait_for_agent_replies(1)
            for n in range(TURNS):
                if n in KILL_AT:
                    sim.progress(f"killing redis before turn {n}")
                    server.kill()
                    await sim.say(USER, f"question {n}")  # answered while Redis is down
                    await asyncio.to_thread(server.restart)
                else:
                    await sim.say(USER, f"question {n}")

        replies = ["Hello!"] + [f"answer {n}" for n in range(TURNS)]
        try:
            obs = await run_scenario(
                "outage",
                talk_through_outages,
                settings=load_settings(),
                llm=ScriptedLLM(replies),
                store=store,
                printer=lambda _: None,
            )
            assert obs.violations == []
            # the queued writes reach Redis once it is back
            async with asyncio.timeout(30):
                while True:
                    record = await store.load("sim-room", USER)
                    if record is not None and len(record.items) == 1 + 2 * TURNS:
                        break
                    await asyncio.sleep(0.1)  # noqa: ASYNC110 - Redis is polled, not evented
        finally:
            await store.aclose()

        # a fresh client, so nothing is answered from the worker's memory
        fresh = open_store(redis_url=server.url)
        try:
            record = await fresh.load("sim-room", USER)
        finally:
            await fresh.aclose()
    texts = [" ".join(item["content"]) for item in record.items]
    expected = ["Hello!"]
    for n in range(TURNS):
        expected += [f"question {n}", f"answer {n}"]
    assert texts == expected
    assert len(set(record.item_ids)) == len(record.item_ids)
