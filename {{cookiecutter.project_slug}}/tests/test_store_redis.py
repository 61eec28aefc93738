"""What only the Redis store promises: key layout, one round trip, outages, Cluster."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import store_fixtures
from redis.crc import key_slot
from store_fixtures import KEY_A, build_store, list_records, new_prefix, purge

from {{ cookiecutter.package_name }}.resilience.store import JoinKind, open_store
from {{ cookiecutter.package_name }}.resilience.store.redis import participant_keys
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

# fixtures shared by the store tests (conftest.py is the whole suite's)
redis_server = store_fixtures.redis_server

ROOM = "room-r"


def turn(n: int) -> dict[str, Any]:
    return {"id": f"item_{n}", "role": "user", "content": [f"turn {n}"]}


def segment(n: int) -> dict[str, Any]:
    return {"id": f"seg_{n}", "speaker": "alice", "text": f"words {n}", "final": True}


async def test_join_and_append_are_one_round_trip(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = build_store("redis", redis_server)
    # the first call of each script loads it into Redis (NOSCRIPT, SCRIPT LOAD, EVALSHA)
    await store.join(ROOM, "warm-up", "s0")
    await store.append(ROOM, "warm-up", items=[turn(0)])
    await store.load(ROOM, "warm-up")
    sent: list[bytes] = []
    execute = store._client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        sent.append(args[0])
        return await execute(*args, **options)

    monkeypatch.setattr(store._client, "execute_command", counting)
    operations = [
        lambda: store.join(ROOM, "alice", "s1"),
        lambda: store.append(ROOM, "alice", items=[turn(n) for n in range(20)]),
        lambda: store.join(ROOM, "alice", "s2"),  # returning: join + full load
        lambda: store.load(ROOM, "alice"),
    ]
    for operation in operations:
        sent.clear()
        await operation()
        assert sent == ["EVALSHA"]
    await store.aclose()


async def test_keys_share_one_slot_hide_identities_and_expire(redis_server: RedisServer) -> None:
    store = build_store("redis", redis_server)
    identity = "alice@example.com"
    await store.join(ROOM, identity, "s1")
    await store.append(ROOM, identity, items=[turn(1)], transcript=[segment(1)])
    token = await store.acquire_lease(ROOM, identity, "w", ttl=30)
    with redis_server.client() as admin:
        keys = [k.decode() for k in admin.keys("{" + store.prefix + ":*")]
        assert len(keys) == 5
        assert len({key_slot(k.encode()) for k in keys}) == 1
        assert not any("alice" in k for k in keys)
        lease_key = participant_keys(store.prefix, ROOM, identity).lease
        assert all(0 < admin.pttl(k) <= 3600_000 for k in keys if k != lease_key)
        # a lease's token is remembered a day after it lapses, so fences never go back
        assert 86_400_000 < admin.pttl(lease_key) <= 86_430_000
        await store.leave(ROOM, identity, "s1", fence=token)
        record_key = participant_keys(store.prefix, ROOM, identity).record
        # retention runs on Redis's clock: the record's own TTL, 300 s by default
        assert 295_000 < admin.pttl(record_key) <= 300_000
    await store.aclose()


async def test_encrypted_at_rest_and_tampering_is_caught(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = build_store("redis", redis_server, encryption_keys=KEY_A)
    await store.join(ROOM, "bo", "s1")
    await store.append(ROOM, "bo", items=[turn(1), turn(2)])
    await store.update_profile(ROOM, "bo", metadata={"email": "bo@example.com"})
    keys = participant_keys(store.prefix, ROOM, "bo")
    with redis_server.client() as admin:
        dump = b"".join(admin.lrange(keys.items, 0, -1)) + b"".join(admin.hvals(keys.record))
        assert b"turn 1" not in dump and b"bo@example.com" not in dump and b'"bo"' not in dump
        blob = bytearray(admin.lindex(keys.items, 1))
        blob[-1] ^= 1
        admin.lset(keys.items, 1, bytes(blob))
    with caplog.at_level(logging.ERROR):
        assert await store.load(ROOM, "bo") is None
    (logged,) = [vars(r) for r in caplog.records if "quarantine" in r.getMessage()]
    assert "authentication failed" in logged["reason"] and "bo" not in logged["participant"]
    assert (await store.join(ROOM, "bo", "s2")).kind is JoinKind.NEW
    await store.aclose()


async def test_outage_answers_from_memory_and_replays_in_order() -> None:
    with RedisServer() as server:
        store = build_store("redis", server)
        await store.join(ROOM, "cy", "s1")
        await store.append(ROOM, "cy", items=[turn(0)])
        server.kill()
        await store.append(ROOM, "cy", items=[turn(1)], transcript=[segment(1)])
        await store.set_gemini_handle(ROOM, "cy", "handle-1", ["item_0", "item_1"])
        again = await store.join(ROOM, "cy", "s1")
        assert again.kind is JoinKind.DUPLICATE and again.record.item_ids == ["item_0", "item_1"]
        assert store.pending_writes == 3
        server.start()
        assert await store.wait_flushed(15)
        store._cache.forget(ROOM, "cy")  # the answer below must come from Redis
        record = await store.load(ROOM, "cy")
        assert record.item_ids == ["item_0", "item_1"] and record.gemini.handle == "handle-1"
        await store.aclose()


async def test_a_full_queue_drops_loudly_and_a_live_conversation_is_rewritten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RedisServer() as server:
        store = build_store("redis", server, max_queued_writes=5)
        await store.join(ROOM, "di", "s1")
        await store.join(ROOM, "gone", "s2")
        await store.leave(ROOM, "gone", "s2")
        server.kill()
        with caplog.at_level(logging.ERROR):
            for n in range(10):
                await store.append(ROOM, "di", items=[turn(n)])
                await store.append(ROOM, "gone", items=[turn(n)])
        drops = [vars(r) for r in caplog.records if "queue full" in r.getMessage()]
        assert drops and drops[0]["levelno"] == logging.ERROR and drops[0]["max_writes"] == 5
        assert store.write_queue.dropped == 15
        assert (await store.load(ROOM, "di")).item_ids == [f"item_{n}" for n in range(10)]
        server.start()
        assert await store.wait_flushed(15)
        store._cache.forget(ROOM)
        # the live participant's conversation is given to Redis again from memory...
        assert (await store.load(ROOM, "di")).item_ids == [f"item_{n}" for n in range(10)]
        # ...one who had left keeps what the queue held: the first writes, in order
        assert (await store.load(ROOM, "gone")).item_ids == [f"item_{n}" for n in range(2)]
        await store.aclose()


async def test_redis_emptied_between_two_writes_gets_the_live_conversation_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart without persistence between two writes: the client reconnects without ever
    seeing an outage, so only the next write can notice that Redis lost the record."""
    store = build_store("redis", redis_server)
    await store.join(ROOM, "ida", "s1")
    await store.append(ROOM, "ida", items=[turn(0), turn(1)], transcript=[segment(0)])
    await store.join(ROOM, "left-early", "s2")
    await store.leave(ROOM, "left-early", "s2")
    with redis_server.client() as admin:  # what a restart without persistence leaves
        admin.delete(*admin.keys("{" + store.prefix + ":*"))
    with caplog.at_level(logging.INFO):
        await store.append(ROOM, "ida", items=[turn(2)], transcript=[segment(1)])
        await store.set_gemini_handle(ROOM, "ida", "handle-1", ["item_0", "item_1", "item_2"])
        # one who left is not live: a write creates their record afresh, as before
        await store.append(ROOM, "left-early", items=[turn(9)])
    assert store.write_queue.outages == 0 and store.records_given_back == 1
    assert [r.getMessage() for r in caplog.records].count(
        "live conversation given to redis again from memory"
    ) == 1
    fresh = build_store("redis", redis_server, prefix=store.prefix)
    record = await fresh.load(ROOM, "ida")
    # every item once, in the order said, the segments too, and the handle written after
    assert record.item_ids == ["item_0", "item_1", "item_2"]
    assert [s["id"] for s in record.transcript] == ["seg_0", "seg_1"]
    assert record.gemini.handle == "handle-1"
    assert (await fresh.load(ROOM, "left-early")).item_ids == ["item_9"]
    await fresh.aclose()
    await store.aclose()


async def test_a_join_that_restores_the_newest_lines_still_gives_every_line_back(
    redis_server: RedisServer,
) -> None:
    """The job restores only the newest transcript lines, but a Redis that loses its data
    gets the whole transcript back from memory, not just those."""
    store = build_store("redis", redis_server)
    await store.join(ROOM, "ida", "s1")
    await store.append(ROOM, "ida", items=[turn(0)], transcript=[segment(n) for n in range(5)])
    await store.leave(ROOM, "ida", "s1")
    rejoined = await store.join(ROOM, "ida", "s2", transcript_tail=2)
    assert [s["id"] for s in rejoined.record.transcript] == ["seg_3", "seg_4"]
    await asyncio.sleep(0.2)  # the older lines are read into memory in the background
    with redis_server.client() as admin:  # a restart without persistence
        admin.delete(*admin.keys("{" + store.prefix + ":*"))
    await store.append(ROOM, "ida", transcript=[segment(5)])
    fresh = build_store("redis", redis_server, prefix=store.prefix)
    record = await fresh.load(ROOM, "ida")
    assert [s["id"] for s in record.transcript] == [f"seg_{n}" for n in range(6)]
    await fresh.aclose()
    await store.aclose()


async def test_kill_9_during_a_50_turn_conversation_loses_nothing() -> None:
    """Redis is SIGKILLed and restarted five times, some kills landing mid-write."""
    kills = {6: "between", 15: "mid-write", 24: "between", 33: "mid-write", 41: "mid-write"}
    with RedisServer() as server:
        store = build_store("redis", server)
        assert (await store.join(ROOM, "eve", "s1")).kind is JoinKind.NEW
        for n in range(50):
            write = store.append(ROOM, "eve", items=[turn(n)], transcript=[segment(n)])
            how = kills.get(n)
            if how == "between":
                server.kill()
                await write
            elif how == "mid-write":
                await asyncio.gather(write, asyncio.to_thread(server.kill))
            else:
                await write
            if n - 3 in kills:  # down for three turns, then back before the next kill
                await asyncio.to_thread(server.start)
                assert await store.wait_flushed(15)
            # the conversation so far is readable whether Redis is up or not
            record = await store.load(ROOM, "eve")
            assert record.item_ids == [f"item_{i}" for i in range(n + 1)]
            await asyncio.sleep(0.01)
        assert await store.wait_flushed(20)
        keys = participant_keys(store.prefix, ROOM, "eve")
        with server.client() as admin:
            items = [json.loads(b)["id"] for b in admin.lrange(keys.items, 0, -1)]
            segments = [json.loads(b)["id"] for b in admin.lrange(keys.transcript, 0, -1)]
            reconnects = int(admin.hget(keys.record, "reconnects"))
        assert items == [f"item_{n}" for n in range(50)]
        assert segments == [f"seg_{n}" for n in range(50)]
        assert reconnects == 0
        assert store.write_queue.outages == len(kills)
        await store.aclose()


async def test_cluster_url_keeps_every_script_in_one_slot() -> None:
    with RedisServer(cluster=True) as server:
        store = open_store(redis_url=server.url, prefix=new_prefix())
        assert (await store.join(ROOM, "fi", "s1")).kind is JoinKind.NEW
        token = await store.acquire_lease(ROOM, "fi", "w", ttl=10)
        await store.append(ROOM, "fi", items=[turn(1)], fence=token)
        await store.leave(ROOM, "fi", "s1", fence=token)
        again = await store.join(ROOM, "fi", "s2", fence=token)
        assert again.kind is JoinKind.RETURNING and again.record.item_ids == ["item_1"]
        assert [r.identity for r in await list_records(store, ROOM)] == ["fi"]
        assert await purge(store, ROOM) == 1
        await store.aclose()
