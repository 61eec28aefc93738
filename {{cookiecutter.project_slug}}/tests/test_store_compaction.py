"""Store compaction: a summary lands and the store drops the items it covers, atomically
(``append(compact_through=...)``), on every backend, sealed or not, and through an outage.

The transcript is never compacted; a covered id stays seen (a late re-append is ignored);
the byte counter follows and dropped items count as trimmed, as storage limits count theirs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import store_fixtures
from store_fixtures import KEY_A, build_store, sqlite_exec

from {{ cookiecutter.package_name }}.resilience.store import (
    LeaveInfo,
    SqliteStore,
    StaleLeaseError,
)
from {{ cookiecutter.package_name }}.resilience.store.redis import participant_keys
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

make_store = store_fixtures.make_store
redis_server = store_fixtures.redis_server

ROOM = "room-c"
WHO = "alice"


def turn(n: int) -> dict[str, Any]:
    return {"id": f"item_{n}", "type": "message", "role": "user", "content": [f"turn {n}"]}


def segment(n: int) -> dict[str, Any]:
    return {"id": f"seg_{n}", "speaker": WHO, "text": f"words {n}"}


def summary(covers: str, name: str = "summary_1") -> dict[str, Any]:
    return {"id": name, "type": "message", "role": "assistant", "content": ["<s>...</s>"],
            "extra": {"is_summary": True, "covers": covers}}  # fmt: skip


async def stored_bytes(store: Any, kind: str) -> tuple[int, int]:
    """(the item byte counter, the bytes of the items actually held), from the backend."""
    if kind == "memory":
        entry = store._entries[(ROOM, WHO)]
        return int(entry.fields["ib"]), sum(map(len, entry.items))
    if kind == "sqlite":
        (pkey,) = sqlite_exec(store, "SELECT pkey FROM records WHERE note IS NULL")[0]
        (counted,) = sqlite_exec(store, "SELECT ib FROM records WHERE pkey = ?", pkey)[0]
        rows = sqlite_exec(
            store, "SELECT length(blob) FROM entries WHERE pkey = ? AND list = 0 "
            "AND blob IS NOT NULL", pkey,
        )  # fmt: skip
        return counted, sum(n for (n,) in rows)
    keys = participant_keys(store.prefix, ROOM, WHO)
    counted = int(await store._client.hget(keys.record, "ib"))
    return counted, sum(map(len, await store._client.lrange(keys.items, 0, -1)))


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
async def test_a_summary_drops_the_items_it_covers(make_store: Any, sealed: bool) -> None:
    left: list[LeaveInfo] = []

    def policy(info: LeaveInfo) -> float:
        left.append(info)
        return 300.0

    store = make_store(encryption_keys=KEY_A if sealed else None, retention_policy=policy)
    await store.join(ROOM, WHO, "s1")
    await store.append(ROOM, WHO, [turn(n) for n in range(10)], [segment(n) for n in range(10)])
    result = await store.append(ROOM, WHO, [summary("item_5")], compact_through="item_5")
    assert result.items_added == 1
    record = await store.load(ROOM, WHO)
    assert record.item_ids == ["item_6", "item_7", "item_8", "item_9", "summary_1"]
    assert [s["id"] for s in record.transcript] == [f"seg_{n}" for n in range(10)]
    assert record.items_trimmed == 6 and record.transcript_trimmed == 0
    # a covered item written again (a late retry) does not come back; a new one is kept
    again = await store.append(ROOM, WHO, [turn(3), turn(10)])
    assert again.items_added == 1
    # the same compaction again (a replay) and one naming an item not held drop nothing
    await store.append(ROOM, WHO, [summary("item_5")], compact_through="item_5")
    await store.append(ROOM, WHO, [], compact_through="item_404")
    record = await store.load(ROOM, WHO)
    assert record.item_ids == ["item_6", "item_7", "item_8", "item_9", "summary_1", "item_10"]
    assert record.items_trimmed == 6
    counted, held = await stored_bytes(store, make_store.kind)
    assert counted == held
    # retention counts what was ever said: 11 turns and the summary, as trimming counts
    await store.leave(ROOM, WHO, "s1")
    assert left[-1].item_count == 12 and left[-1].transcript_count == 10


async def test_a_stale_writer_s_summary_is_merged_without_dropping(make_store: Any) -> None:
    store = make_store()
    old = await store.acquire_lease(ROOM, WHO, "worker-a", 30)
    await store.append(ROOM, WHO, [turn(n) for n in range(4)], fence=old)
    await store.acquire_lease(ROOM, WHO, "worker-b", 30, force=True)
    result = await store.append(ROOM, WHO, [summary("item_2")], fence=old, compact_through="item_2")
    assert result.merged
    record = await store.load(ROOM, WHO)
    assert record.item_ids == ["item_0", "item_1", "item_2", "item_3", "summary_1"]
    with pytest.raises(StaleLeaseError):
        await store.leave(ROOM, WHO, "s1", fence=old)


async def test_a_join_returns_the_transcript_s_newest_lines(make_store: Any) -> None:
    store = make_store()
    await store.join(ROOM, WHO, "s1")
    await store.append(ROOM, WHO, [turn(0)], [segment(n) for n in range(30)])
    joined = await store.join(ROOM, WHO, "s2", transcript_tail=5)
    assert [s["id"] for s in joined.record.transcript] == [f"seg_{n}" for n in range(25, 30)]
    assert joined.record.item_ids == ["item_0"]
    record = await store.load(ROOM, WHO)
    assert len(record.transcript) == 30, "the store keeps every line"


async def test_redis_outage_queues_the_compaction_and_it_lands_in_order() -> None:
    with RedisServer() as server:
        store = build_store("redis", server, encryption_keys=KEY_A)
        await store.join(ROOM, WHO, "s1")
        await store.append(ROOM, WHO, [turn(n) for n in range(6)], [segment(0)])
        server.kill()
        await store.append(ROOM, WHO, [turn(6)], [segment(1)])
        await store.append(ROOM, WHO, [summary("item_4")], compact_through="item_4")
        await store.append(ROOM, WHO, [turn(7)])
        assert store.pending_writes == 3
        cached = await store.load(ROOM, WHO)  # from memory meanwhile, compacted there too
        assert cached.item_ids == ["item_5", "item_6", "summary_1", "item_7"]
        server.start()
        assert await store.wait_flushed(15)
        store._cache.forget(ROOM, WHO)  # the answer below must come from Redis
        record = await store.load(ROOM, WHO)
        assert record.item_ids == ["item_5", "item_6", "summary_1", "item_7"]
        assert record.items_trimmed == 5 and len(record.transcript) == 2
        assert (await store.append(ROOM, WHO, [turn(2)])).items_added == 0
        await store.aclose()


async def test_a_locked_file_queues_the_compaction_and_it_lands_in_order(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    store = SqliteStore(db, busy_timeout=0.1)
    await store.join(ROOM, WHO, "s1")
    await store.append(ROOM, WHO, [turn(n) for n in range(6)], [segment(0)])
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        await store.append(ROOM, WHO, [summary("item_3")], compact_through="item_3")
        await store.append(ROOM, WHO, [turn(6)], [segment(1)])
        assert store.pending_writes == 2
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert await store.wait_flushed(10)
    await store.aclose()
    fresh = SqliteStore(db)
    record = await fresh.load(ROOM, WHO)
    assert record is not None
    assert record.item_ids == ["item_4", "item_5", "summary_1", "item_6"]
    assert record.items_trimmed == 4 and len(record.transcript) == 2
    await fresh.aclose()
