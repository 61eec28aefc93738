"""The SessionStore contract, run against both the memory store and a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest
import store_fixtures
from store_fixtures import KEY_A, KEY_B, Pause, list_records, purge, release_lease

from {{ cookiecutter.package_name }}.resilience.store import (
    InvalidInputError,
    JoinKind,
    LeaseHeldError,
    LeaveInfo,
    MemoryStore,
    StaleLeaseError,
    StorageLimits,
    identity_hash,
)
from {{ cookiecutter.package_name }}.resilience.store.base import TRIMMED_MARK

# fixtures shared by the store tests (conftest.py is the whole suite's)
make_store = store_fixtures.make_store
redis_server = store_fixtures.redis_server
store = store_fixtures.store
pause = store_fixtures.pause

ROOM = "room-1"


def turn(n: int) -> dict[str, Any]:
    return {"id": f"item_{n}", "type": "message", "role": "user", "content": [f"turn {n}"]}


def segment(n: int) -> dict[str, Any]:
    return {"id": f"seg_{n}", "speaker": "alice", "text": f"words {n}", "final": True,
            "track_id": "TR_1"}  # fmt: skip


async def wait_until_gone(
    store: Any, pause: Pause, room: str, identity: str, limit: float = 6.0
) -> None:
    waited = 0.0
    while await store.load(room, identity) is not None:
        assert waited < limit, "record outlived its retention"
        await pause(0.1)
        waited += 0.1


async def test_join_new_duplicate_returning_keeps_context(store: Any) -> None:
    first = await store.join(ROOM, "alice", "s1")
    assert first.kind is JoinKind.NEW and first.record.reconnect_count == 0
    await store.append(ROOM, "alice", items=[turn(1), turn(2)], transcript=[segment(1)])

    repeat = await store.join(ROOM, "alice", "s1")
    assert repeat.kind is JoinKind.DUPLICATE
    assert repeat.record.reconnect_count == 0

    await store.leave(ROOM, "alice", "s1")
    back = await store.join(ROOM, "alice", "s2")
    assert back.kind is JoinKind.RETURNING
    assert back.record.reconnect_count == 1
    assert back.record.active_session == "s2"
    assert back.record.item_ids == ["item_1", "item_2"]
    assert back.record.transcript == (segment(1),)


async def test_racing_joins_welcome_back_exactly_once(store: Any) -> None:
    outcomes = await asyncio.gather(*(store.join(ROOM, "bob", "s1") for _ in range(20)))
    assert sorted(o.kind for o in outcomes) == [JoinKind.DUPLICATE] * 19 + [JoinKind.NEW]
    await asyncio.gather(*(store.leave(ROOM, "bob", "s1") for _ in range(5)))
    outcomes = await asyncio.gather(*(store.join(ROOM, "bob", "s2") for _ in range(20)))
    kinds = [o.kind for o in outcomes]
    assert kinds.count(JoinKind.RETURNING) == 1 and kinds.count(JoinKind.DUPLICATE) == 19
    record = await store.load(ROOM, "bob")
    assert record.reconnect_count == 1


async def test_a_late_leave_of_an_old_session_does_not_end_the_new_one(store: Any) -> None:
    await store.join(ROOM, "carol", "s1")
    await store.join(ROOM, "carol", "s2")  # a device switch: s1 never left
    await store.leave(ROOM, "carol", "s1")
    record = await store.load(ROOM, "carol")
    assert record.active_session == "s2" and record.left_at is None
    await store.leave(ROOM, "carol", "s2")
    record = await store.load(ROOM, "carol")
    assert record.active_session is None and record.left_at is not None


async def test_append_dedupes_by_id_and_keeps_order(store: Any) -> None:
    await store.join(ROOM, "dave", "s1")
    first = await store.append(ROOM, "dave", items=[turn(1), turn(2)], transcript=[segment(1)])
    assert (first.items_added, first.transcript_added) == (2, 1)
    again = await store.append(
        ROOM, "dave", items=[turn(2), turn(3), turn(1), turn(4), turn(3)],
        transcript=[segment(1), segment(2)],
    )  # fmt: skip
    assert (again.items_added, again.transcript_added) == (2, 1)
    record = await store.load(ROOM, "dave")
    assert record.item_ids == ["item_1", "item_2", "item_3", "item_4"]
    assert [s["id"] for s in record.transcript] == ["seg_1", "seg_2"]
    assert record.items[2] == turn(3)
    assert record.last_seen >= record.joined_at


async def test_same_id_in_items_and_transcript_are_separate(store: Any) -> None:
    await store.append(ROOM, "erin", items=[{"id": "x"}], transcript=[{"id": "x"}])
    record = await store.load(ROOM, "erin")
    assert record.item_ids == ["x"] and record.transcript == ({"id": "x"},)


async def test_gemini_handle_and_profile(store: Any) -> None:
    await store.join(ROOM, "fay", "s1")
    await store.append(ROOM, "fay", items=[turn(1), turn(2)])
    await store.set_gemini_handle(ROOM, "fay", "handle-1", ["item_1"])
    await store.set_gemini_handle(ROOM, "fay", "handle-2", ["item_1", "item_2"])
    await store.update_profile(ROOM, "fay", language="de-DE", metadata={"plan": "pro", "n": [1]})
    await store.update_profile(ROOM, "fay", metadata={"plan": "free"})
    record = await store.load(ROOM, "fay")
    assert record.gemini.handle == "handle-2"
    assert record.gemini.covered_item_ids == ("item_1", "item_2")
    assert math.isclose(record.gemini.issued_at, record.last_seen, abs_tol=5)
    assert record.language == "de-DE" and record.metadata == {"plan": "free"}


async def test_records_inside_retention_return_and_expire_after(
    make_store: Any, pause: Pause
) -> None:
    store = make_store(retention=1.0)
    await store.join(ROOM, "gus", "s1")
    await store.append(ROOM, "gus", items=[turn(1)])
    await store.leave(ROOM, "gus", "s1")
    assert (await store.load(ROOM, "gus")).item_ids == ["item_1"]
    await wait_until_gone(store, pause, ROOM, "gus")
    fresh = await store.join(ROOM, "gus", "s2")
    assert fresh.kind is JoinKind.NEW and fresh.record.items == ()


async def test_retention_policy_keeps_engaged_users_longer(make_store: Any, pause: Pause) -> None:
    seen: list[LeaveInfo] = []

    def policy(info: LeaveInfo) -> float:
        seen.append(info)
        return 60.0 if info.item_count >= 3 else 1.0

    store = make_store(retention=1.0, retention_policy=policy)
    for who, turns in (("brief", 1), ("engaged", 3)):
        await store.join(ROOM, who, "s1")
        await store.append(ROOM, who, items=[turn(n) for n in range(turns)])
        await store.leave(ROOM, who, "s1")
    await wait_until_gone(store, pause, ROOM, "brief")
    assert (await store.load(ROOM, "engaged")).left_at is not None
    assert sorted(i.item_count for i in seen) == [1, 3]


async def test_list_and_purge(store: Any) -> None:
    for who in ("a", "b"):
        await store.join("r1", who, "s")
    await store.join("r2", "a", "s")
    assert sorted(r.identity for r in await list_records(store, "r1")) == ["a", "b"]
    assert len(await list_records(store)) >= 3
    assert await purge(store, "r1", "a") == 1
    assert await store.load("r1", "a") is None
    assert await purge(store, "r1") == 1
    assert await list_records(store, "r1") == []
    assert (await store.load("r2", "a")).identity == "a"


async def test_lease_fences_out_a_stale_writer_and_merges_its_turns(store: Any) -> None:
    await store.join(ROOM, "hal", "s1")
    token = await store.acquire_lease(ROOM, "hal", "worker-a", ttl=30)
    assert await store.acquire_lease(ROOM, "hal", "worker-a", ttl=30) == token  # renewal
    with pytest.raises(LeaseHeldError) as held:
        await store.acquire_lease(ROOM, "hal", "worker-b", ttl=30)
    assert held.value.owner == "worker-a"
    await store.append(ROOM, "hal", items=[turn(1)], fence=token)

    newer = await store.acquire_lease(ROOM, "hal", "worker-b", ttl=30, force=True)
    assert newer > token
    # turns are facts: the stale writer's are merged, never dropped...
    merged = await store.append(ROOM, "hal", items=[turn(2)], fence=token)
    assert merged.merged and merged.items_added == 1
    again = await store.append(ROOM, "hal", items=[turn(2)])  # unfenced while a lease is held
    assert again.merged and again.items_added == 0
    # ...but nothing else it writes lands
    with pytest.raises(StaleLeaseError):
        await store.leave(ROOM, "hal", "s1", fence=token)
    with pytest.raises(StaleLeaseError):
        await store.set_gemini_handle(ROOM, "hal", "h", [], fence=token)
    current = await store.append(ROOM, "hal", items=[turn(3)], fence=newer)
    assert not current.merged
    record = await store.load(ROOM, "hal")
    assert record.item_ids == ["item_1", "item_2", "item_3"] and record.active_session == "s1"
    assert record.gemini is None

    assert not await release_lease(store, ROOM, "hal", "worker-a", token)
    assert await release_lease(store, ROOM, "hal", "worker-b", newer)
    await store.set_gemini_handle(ROOM, "hal", "h", [])  # unfenced once nobody holds it
    with pytest.raises(StaleLeaseError):  # a released lease still outranks older tokens
        await store.set_gemini_handle(ROOM, "hal", "h", [], fence=token)


async def test_fencing_tokens_keep_increasing_after_expiry(store: Any, pause: Pause) -> None:
    first = await store.acquire_lease(ROOM, "ivy", "w1", ttl=0.2)
    await pause(0.4)
    second = await store.acquire_lease(ROOM, "ivy", "w2", ttl=5)
    assert second > first
    with pytest.raises(StaleLeaseError):
        await store.set_gemini_handle(ROOM, "ivy", "h", [], fence=first)


async def test_a_lapsed_lease_nobody_took_stays_its_holders(store: Any, pause: Pause) -> None:
    """An outage or a stalled loop longer than the lease costs the holder nothing."""
    token = await store.acquire_lease(ROOM, "jo", "w1", ttl=0.2)
    await pause(0.4)
    # a write queued during the fault lands after the lease lapsed: still accepted
    await store.join(ROOM, "jo", "s1", fence=token)
    await store.set_gemini_handle(ROOM, "jo", "h", ["a"], fence=token)
    # the holder reclaims it with the same token
    assert await store.acquire_lease(ROOM, "jo", "w1", ttl=5) == token
    with pytest.raises(LeaseHeldError):
        await store.acquire_lease(ROOM, "jo", "w2", ttl=5)
    assert (await store.load(ROOM, "jo")).gemini.handle == "h"


async def test_a_callable_fence_is_resolved_when_the_write_is_sent(store: Any) -> None:
    token = await store.acquire_lease(ROOM, "kim", "w1", ttl=5)
    calls = []

    async def fence() -> int:
        calls.append(1)
        return token

    await store.join(ROOM, "kim", "s1", fence=fence)
    await store.append(ROOM, "kim", items=[turn(1)], fence=fence)
    assert len(calls) == 2
    assert (await store.load(ROOM, "kim")).item_ids == ["item_1"]


async def test_one_participant_cannot_fill_the_store(make_store: Any) -> None:
    limits = StorageLimits(max_entry_bytes=2048, max_entries=5, max_list_bytes=64 * 1024)
    store = make_store(limits=limits)
    huge = {"id": "big", "type": "message", "role": "user", "content": ["x" * 1_000_000]}
    await store.append(ROOM, "lou", items=[huge], transcript=[{"id": "seg", "text": "y" * 50_000}])
    record = await store.load(ROOM, "lou")
    (item,) = record.items
    assert item["content"][0].endswith(TRIMMED_MARK) and item["trimmed_bytes"] > 990_000
    assert len(item["content"][0]) < 2048
    assert record.transcript[0]["text"].endswith(TRIMMED_MARK)
    # the whole history: the oldest go first, counted, and the newest always stays
    await store.append(ROOM, "lou", items=[turn(n) for n in range(8)])
    record = await store.load(ROOM, "lou")
    assert record.item_ids == [f"item_{n}" for n in range(3, 8)]
    assert record.items_trimmed == 4


@pytest.mark.parametrize(
    ("items", "metadata"),
    [
        ([{"text": "no id"}], None),
        ([{"id": ""}], None),
        (["not a dict"], None),
        ([{"id": "x", "when": object()}], None),
        ([{"id": "x", "v": float("nan")}], None),
        (None, {"tuple": (1, 2)}),
        (None, {1: "int key"}),
        (None, {"s": {1, 2}}),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_stored(
    store: Any, items: Any, metadata: Any
) -> None:
    await store.join(ROOM, "jo", "s1")
    with pytest.raises(InvalidInputError):
        if items is not None:
            await store.append(ROOM, "jo", items=[turn(1), *items])
        else:
            await store.update_profile(ROOM, "jo", metadata=metadata)
    record = await store.load(ROOM, "jo")
    assert record.items == () and record.metadata == {}


async def test_unusual_names_are_separate_participants(store: Any) -> None:
    names = ["", "*", "a:b", "{x}", "}{", "ünï😀", "a" * 2000]
    for i, name in enumerate(names):
        await store.append(name, name, items=[{"id": "only", "n": i}])
    for i, name in enumerate(names):
        record = await store.load(name, name)
        assert (record.room, record.identity) == (name, name)
        assert record.items == ({"id": "only", "n": i},)
    assert await store.load("a", ":b") is None


async def test_events_for_operators(store: Any) -> None:
    received: list[dict[str, Any]] = []

    async def listen() -> None:
        async for event in store.subscribe_events():
            received.append(event)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.2)  # subscribed
    await store.join(ROOM, "kim", "s1")
    await store.leave(ROOM, "kim", "s1")
    await store.join(ROOM, "kim", "s2")
    await store.events.publish("custom", ROOM, "kim", note="x")
    for _ in range(50):
        if len(received) >= 3:
            break
        await asyncio.sleep(0.05)
    listener.cancel()
    assert [e["type"] for e in received] == ["session_ended", "participant_returned", "custom"]
    assert {e["participant"] for e in received} == {identity_hash("kim")}
    assert received[1]["reconnect_count"] == 1 and received[1]["room"] == ROOM
    assert "kim" not in str(received)


async def test_encrypted_records_survive_key_rotation(make_store: Any) -> None:
    old = make_store(encryption_keys=KEY_A)
    await old.join(ROOM, "lee", "s1")
    await old.append(ROOM, "lee", items=[turn(1)])
    assert (await old.load(ROOM, "lee")).item_ids == ["item_1"]
    if make_store.kind == "memory":
        return  # a memory store does not outlive its object; rotation is a Redis matter
    rotated = make_store(encryption_keys=f"{KEY_B},{KEY_A}", prefix=old.prefix)
    await rotated.append(ROOM, "lee", items=[turn(2)])
    assert (await rotated.load(ROOM, "lee")).item_ids == ["item_1", "item_2"]


async def test_memory_store_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore(max_records=3)
    with caplog.at_level(logging.WARNING):
        for n in range(5):
            await store.join(ROOM, f"user{n}", "s1")
    assert [await store.load(ROOM, f"user{n}") is not None for n in range(5)] == [
        False, False, True, True, True,
    ]  # fmt: skip
    evictions = [r for r in caplog.records if "evicted" in r.getMessage()]
    assert len(evictions) == 2 and "user0" not in caplog.text
