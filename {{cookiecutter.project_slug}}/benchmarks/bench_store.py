"""Session store benchmark against a real local redis-server (figures, not pass/fail).

    uv run python benchmarks/bench_store.py [--storm 10000] [--concurrency 100] [--quick]

1. Restore on join (one Lua call that joins and returns the whole record) for 10/100/1000-turn
   conversations, against a raw redis-py GET of the same bytes in the same run (target: within
   1.5x). Also shown: raw GET + json.loads, the least a client must do to use the bytes.
2. Reconnect storm: N identities joining at concurrency C, against raw redis-py doing the same
   number of round trips (SET) at the same concurrency, through a client built by the same
   ``connect()`` (same timeouts and pool) (target: at least 0.5x the throughput).
3. Bytes Redis holds per idle participant (left, inside retention): MEMORY USAGE of its keys.
4. The embedded SQLite store: restore on join for 10/100/1000 turns against a raw SELECT of
   the same bytes (one row) from the same file, each hopping once to a thread as the store does.

The server runs without an append-only file so disk speed does not blur the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from {{ cookiecutter.package_name }}.resilience.store import RedisStore, SqliteStore
from {{ cookiecutter.package_name }}.resilience.store.redis import (
    connect,
    participant_keys,
)
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

ROOM = "bench-room"


def turn(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    text = f"turn {n}: " + "a sentence of ordinary conversational length, said aloud. " * 2
    item = {"id": f"item_{n:05d}", "type": "message", "role": "user" if n % 2 else "assistant",
            "content": [text], "interrupted": False, "created_at": 1718000000.0 + n}  # fmt: skip
    segment = {"id": f"seg_{n:05d}", "speaker": "alice", "text": text, "final": True,
               "track_id": "TR_AMabc123"}  # fmt: skip
    return item, segment


async def timed(fn: Any, repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def restore(store: RedisStore, raw: Redis, turns: int, runs: int) -> dict[str, float]:
    identity = f"restore-{turns}"
    await store.join(ROOM, identity, "s0")
    for start in range(0, turns, 100):
        pairs = [turn(n) for n in range(start, min(turns, start + 100))]
        await store.append(ROOM, identity, items=[p[0] for p in pairs],
                           transcript=[p[1] for p in pairs])  # fmt: skip
    keys = participant_keys(store.prefix, ROOM, identity)
    # the same bytes as one value: the record's fields and every stored item and segment
    fields = await raw.hgetall(keys.record)
    items = await raw.lrange(keys.items, 0, -1)
    segments = await raw.lrange(keys.transcript, 0, -1)
    # replies are bytes: the client does not decode them
    blob = b"".join(
        v.encode() if isinstance(v, str) else v for v in [*fields.values(), *items, *segments]
    )
    await raw.set("bench:blob:" + identity, blob)
    as_json = json.dumps({"items": [json.loads(i) for i in items],
                          "transcript": [json.loads(s) for s in segments]})  # fmt: skip
    await raw.set("bench:json:" + identity, as_json)
    sessions = iter(range(1, 10**6))
    repeat = runs if turns <= 100 else max(1, runs // 4)

    async def join() -> None:
        outcome = await store.join(ROOM, identity, f"s{next(sessions)}")
        assert len(outcome.record.items) == turns

    async def get() -> None:
        await raw.get("bench:blob:" + identity)

    async def get_and_parse() -> None:
        value = await raw.get("bench:json:" + identity)
        assert value is not None
        json.loads(value)

    for fn in (join, get, get_and_parse):  # warm up connections and script cache
        await fn()
    return {
        "bytes": len(blob),
        "join": await timed(join, repeat),
        "get": await timed(get, repeat),
        "get_json": await timed(get_and_parse, repeat),
    }


async def storm(store: RedisStore, raw: Redis, count: int, concurrency: int) -> dict[str, float]:
    async def run(op: Any) -> float:
        todo = iter(range(count))

        async def worker() -> None:
            for n in todo:
                await op(n)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - start)

    async def join(n: int) -> None:
        await store.join(ROOM, f"storm-{n}", "s1")

    async def set_raw(n: int) -> None:
        await raw.set(f"bench:storm:{n}", b"x" * 64)

    await run(join)  # first pass creates the records; the measured pass is the reconnect
    rejoin_store = store

    async def rejoin(n: int) -> None:
        await rejoin_store.join(ROOM, f"storm-{n}", "s2")

    return {"store": await run(rejoin), "raw": await run(set_raw)}


async def idle_bytes(store: RedisStore, raw: Redis, turns: int) -> int:
    identity = f"idle-{turns}"
    await store.join(ROOM, identity, "s1")
    if turns:
        pairs = [turn(n) for n in range(turns)]
        await store.append(ROOM, identity, items=[p[0] for p in pairs],
                           transcript=[p[1] for p in pairs])  # fmt: skip
    await store.leave(ROOM, identity, "s1")
    keys = participant_keys(store.prefix, ROOM, identity)
    sizes = [await raw.memory_usage(k, samples=0) for k in keys.data]
    return sum(s for s in sizes if s)


async def sqlite_restore(path: Path, turns: int, runs: int) -> dict[str, float]:
    store = SqliteStore(path)
    identity = f"restore-{turns}"
    await store.join(ROOM, identity, "s0")
    pairs = [turn(n) for n in range(turns)]
    await store.append(ROOM, identity, items=[p[0] for p in pairs],
                       transcript=[p[1] for p in pairs])  # fmt: skip
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    raw.execute("CREATE TABLE IF NOT EXISTS bench (k TEXT PRIMARY KEY, v BLOB)")
    stored = b"".join(row[0] for row in raw.execute("SELECT blob FROM entries"))
    as_json = json.dumps({"items": [p[0] for p in pairs], "transcript": [p[1] for p in pairs]})
    raw.execute("INSERT OR REPLACE INTO bench VALUES (?, ?), (?, ?)",
                ("blob", stored, "json", as_json))  # fmt: skip
    sessions = iter(range(1, 10**6))
    repeat = runs if turns <= 100 else max(1, runs // 4)

    async def join() -> None:
        outcome = await store.join(ROOM, identity, f"s{next(sessions)}")
        assert len(outcome.record.items) == turns

    def select(key: str) -> Any:
        return raw.execute("SELECT v FROM bench WHERE k = ?", (key,)).fetchone()[0]

    async def get() -> None:
        await asyncio.to_thread(select, "blob")

    async def get_and_parse() -> None:
        json.loads(await asyncio.to_thread(select, "json"))

    for fn in (join, get, get_and_parse):  # warm up the threads and the page cache
        await fn()
    result = {
        "bytes": len(stored),
        "join": await timed(join, repeat),
        "get": await timed(get, repeat),
        "get_json": await timed(get_and_parse, repeat),
    }
    raw.close()
    await store.aclose()
    return result


def print_restore(rows: list[tuple[int, dict[str, float]]], raw: str) -> None:
    print(f"{'turns':>6} {'bytes':>9} {'join ms':>8} {raw + ' ms':>9} {'ratio':>6} "
          f"{raw + '+json ms':>14} {'ratio':>6}")  # fmt: skip
    for turns, r in rows:
        print(f"{turns:>6} {r['bytes']:>9} {r['join'] * 1e3:>8.3f} {r['get'] * 1e3:>9.3f} "
              f"{r['join'] / r['get']:>6.2f} {r['get_json'] * 1e3:>14.3f} "
              f"{r['join'] / r['get_json']:>6.2f}")  # fmt: skip


async def main(storm_count: int, concurrency: int, runs: int) -> None:
    with RedisServer(durable=False) as server:
        store = RedisStore(connect(server.url), prefix="bench")
        # the raw side uses the store's own client settings (timeouts, retry, unbounded pool):
        # the comparison is then the store's work per round trip, not a client configuration
        raw = connect(server.url)
        assert isinstance(raw, Redis)  # one server, not a cluster
        print("restore on join (median; one round trip each)")
        print_restore([(t, await restore(store, raw, t, runs)) for t in (10, 100, 1000)], "GET")
        s = await storm(store, raw, storm_count, concurrency)
        print(f"\nreconnect storm: {storm_count} identities, concurrency {concurrency}")
        print(f"  store join  {s['store']:>9.0f} /s")
        print(f"  raw SET     {s['raw']:>9.0f} /s")
        print(f"  ratio       {s['store'] / s['raw']:>9.2f}  (target >= 0.5)")
        print("\nbytes held in Redis per idle participant (MEMORY USAGE of its keys)")
        for turns in (0, 10):
            print(f"  {turns:>2} turns: {await idle_bytes(store, raw, turns):>7} bytes")
        await store.aclose()
        await raw.aclose()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sessions.sqlite3"
        print("\nSQLite store: restore on join (median; one transaction each)")
        print_restore([(t, await sqlite_restore(path, t, runs)) for t in (10, 100, 1000)], "SELECT")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storm", type=int, default=10_000, help="identities in the storm")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=200, help="joins timed per size (1000: 1/4)")
    parser.add_argument("--quick", action="store_true", help="storm 500 at 50, 20 runs (seconds)")
    options = parser.parse_args()
    if options.quick:
        options.storm, options.concurrency, options.runs = 500, 50, 20
    asyncio.run(main(options.storm, options.concurrency, options.runs))
