"""The watch list of held rooms, on Redis and SQLite: kept by the room lease, each lapse claimed
exactly once (across clients, database handles and, for SQLite, processes)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from store_fixtures import ManualClock, new_prefix, redis_server  # noqa: F401 - fixture

from {{ cookiecutter.package_name }}.resilience.primary.room_lease import (
    RedisRoomLease,
    SqliteRoomLease,
)
from {{ cookiecutter.package_name }}.resilience.primary.room_registry import (
    LapsedRoom,
    RedisRoomRegistry,
    SqliteRoomRegistry,
)
from {{ cookiecutter.package_name }}.resilience.store import StoreUnavailableError
from {{ cookiecutter.package_name }}.resilience.store.file import SqliteDatabase
from {{ cookiecutter.package_name }}.resilience.store.redis import connect
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

ROOM = "room-1"
AGENT = "agent-a"
HELD_S = 30.0  # a lease that cannot lapse during a test
LAPSE_S = 0.3  # a lease left to lapse

# one claiming process: lists the lapsed rooms, waits for the others, claims them all
CLAIMER = """
import asyncio, json, sys, time
from pathlib import Path
from {{ cookiecutter.package_name }}.resilience.primary.room_registry import (
    SqliteRoomRegistry,
)

async def main(db, barrier, name, parties):
    registry = SqliteRoomRegistry(db)
    rooms = await registry.lapsed(limit=1000)
    (Path(barrier) / name).touch()
    while len(list(Path(barrier).iterdir())) < int(parties):
        time.sleep(0.001)
    won = [room.room for room in rooms if await registry.claim(room)]
    await registry.aclose()
    print(json.dumps(won))

asyncio.run(main(*sys.argv[1:]))
"""


class Backend:
    """Room leases and registries on one store: a Redis prefix, or one SQLite file (whose
    handles share a clock the test moves: ``pause``)."""

    def __init__(self, kind: str, server: RedisServer, path: Path) -> None:
        self.kind, self.server, self.path = kind, server, path
        self.prefix = new_prefix()
        self.clock = ManualClock()
        self._closers: list[Any] = []

    async def pause(self, seconds: float) -> None:
        """Let ``seconds`` pass: Redis runs on its own clock, the file on ``clock``."""
        if self.kind == "redis":
            await asyncio.sleep(seconds)
        else:
            self.clock.advance(seconds)
            await asyncio.sleep(0)

    def _db(self) -> SqliteDatabase:
        db = SqliteDatabase(self.path, clock=self.clock.time)
        self._closers.append(db.close)
        return db

    def lease(
        self, owner: str, *, room: str = ROOM, ttl: float = HELD_S, watch_as: str | None = AGENT
    ) -> Any:
        """A new worker's room lease: a client (or database handle) of its own."""
        if self.kind == "redis":
            client = connect(self.server.url)
            self._closers.append(client.aclose)
            return RedisRoomLease(
                client, room, owner, ttl=ttl, prefix=self.prefix, watch_as=watch_as
            )
        return SqliteRoomLease(self._db(), room, owner, ttl=ttl, watch_as=watch_as)

    def registry(self) -> Any:
        """A new watcher's registry: a client (or database handle) of its own."""
        if self.kind == "redis":
            made: Any = RedisRoomRegistry(connect(self.server.url), prefix=self.prefix)
        else:
            made = SqliteRoomRegistry(self._db())
        self._closers.append(made.aclose)
        return made

    async def entry(self, room: str = ROOM) -> tuple[str, int] | None:
        """(agent name, until) of the room's entry as stored, or None."""
        if self.kind == "redis":
            async with connect(self.server.url) as client:
                tag = "{" + self.prefix + ":rooms}"
                until = await client.zscore(tag, room)
                agent = await client.hget(tag + ":agent", room)
            if until is None:
                return None
            assert isinstance(agent, bytes)
            return agent.decode(), int(until)
        with sqlite3.connect(self.path) as conn:
            row = conn.execute("SELECT agent, until FROM rooms WHERE room = ?", (room,)).fetchone()
        return None if row is None else (row[0], row[1])

    async def lease_until(self, lease: Any) -> int:
        """The lease's own until, as stored."""
        if self.kind == "redis":
            async with connect(self.server.url) as client:
                until = await client.hget(lease.key, "until")
                assert until is not None
                return int(until)
        with sqlite3.connect(self.path) as conn:
            row = conn.execute("SELECT until FROM leases WHERE key = ?", (lease.key,)).fetchone()
        return row[0]

    async def aclose(self) -> None:
        for close in reversed(self._closers):
            if asyncio.iscoroutine(done := close()):
                await done


@pytest.fixture(params=["redis", "sqlite"])
async def backend(request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path) -> Any:  # noqa: F811
    made = Backend(request.param, redis_server, tmp_path / "sessions.sqlite3")
    yield made
    await made.aclose()


async def lapsed_soon(
    registry: Any, room: str = ROOM, pause: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> LapsedRoom:
    """The room's entry once it shows as lapsed (polled, for at most 5 s)."""
    async with asyncio.timeout(5):
        while True:
            found = [entry for entry in await registry.lapsed() if entry.room == room]
            if found:
                return found[0]
            await pause(0.02)


async def lapsed_rooms(registry: Any) -> list[str]:
    return [entry.room for entry in await registry.lapsed()]


# -- the holder keeps its entry ----------------------------------------------------------------


async def test_the_holder_records_renews_and_removes_its_room(backend: Backend) -> None:
    lease, registry = backend.lease("worker-a"), backend.registry()
    token = await lease.acquire()
    assert token is not None
    first = await backend.entry()
    assert first == (AGENT, await backend.lease_until(lease))  # the lease's own until
    assert await registry.lapsed() == []  # held: not lapsed
    await backend.pause(0.01)
    assert await lease.renew(token)
    renewed = await backend.entry()
    assert renewed == (AGENT, await backend.lease_until(lease)) and renewed[1] > first[1]
    assert await lease.release(token)
    assert await backend.entry() is None


async def test_an_unwatched_lease_records_nothing(backend: Backend) -> None:
    lease = backend.lease("worker-a", ttl=LAPSE_S, watch_as=None)
    token = await lease.acquire()
    assert token is not None and await lease.renew(token)
    assert await backend.entry() is None
    await backend.pause(LAPSE_S + 0.1)
    assert await backend.registry().lapsed() == []


async def test_a_lease_left_to_lapse_is_listed(backend: Backend) -> None:
    lease = backend.lease("worker-a", ttl=LAPSE_S, watch_as="")  # "": automatic dispatch
    assert await lease.acquire() is not None
    entry = await lapsed_soon(backend.registry(), pause=backend.pause)
    assert entry.room == ROOM and entry.agent_name == "" and entry.lapsed_s > 0
    assert entry.until_ms == await backend.lease_until(lease)


async def test_a_room_name_of_any_characters_round_trips(backend: Backend) -> None:
    room = 'salle "été" \'ü\'\n🎧 {x} ["a", 1] \\ ;--'
    lease = backend.lease("worker-a", room=room, ttl=LAPSE_S, watch_as='agent "q"\n')
    assert await lease.acquire() is not None
    registry = backend.registry()
    entry = await lapsed_soon(registry, room, backend.pause)
    assert (entry.room, entry.agent_name) == (room, 'agent "q"\n')
    assert await registry.claim(entry) and await backend.entry(room) is None


async def test_lapsed_lists_oldest_first_up_to_the_limit(backend: Backend) -> None:
    rooms = ["room-c", "room-a", "room-b"]  # lapsing in this order
    for n, room in enumerate(rooms):
        assert await backend.lease(f"worker-{n}", room=room, ttl=LAPSE_S).acquire() is not None
        await backend.pause(0.02)
    registry = backend.registry()
    await lapsed_soon(registry, rooms[-1], backend.pause)
    found = await registry.lapsed()
    assert [entry.room for entry in found] == rooms
    assert found[0].until_ms < found[1].until_ms < found[2].until_ms
    assert found[0].lapsed_s > found[1].lapsed_s > found[2].lapsed_s > 0
    assert [entry.room for entry in await registry.lapsed(limit=2)] == rooms[:2]


# -- claims --------------------------------------------------------------------------------------


async def test_two_watchers_claim_each_lapse_exactly_once(backend: Backend) -> None:
    rooms = [f"room-{n}" for n in range(5)]
    for room in rooms:
        assert await backend.lease("worker-a", room=room, ttl=LAPSE_S).acquire() is not None
    a, b = backend.registry(), backend.registry()
    await lapsed_soon(a, rooms[-1], backend.pause)
    seen_a, seen_b = await asyncio.gather(a.lapsed(), b.lapsed())
    assert [e.room for e in seen_a] == [e.room for e in seen_b] == rooms
    for entry_a, entry_b in zip(seen_a, seen_b, strict=True):  # each lapse raced by both
        won = await asyncio.gather(a.claim(entry_a), b.claim(entry_b))
        assert sorted(won) == [False, True], entry_a.room
    assert await a.lapsed() == [] and await b.claim(seen_b[0]) is False


async def test_two_processes_claim_each_lapse_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    rooms = [f"room-{n:03}" for n in range(200)]
    holder = SqliteDatabase(db)
    for room in rooms:
        lease = SqliteRoomLease(holder, room, "worker-a", ttl=0.05, watch_as=AGENT)
        assert await lease.acquire() is not None
    holder.close()
    await asyncio.sleep(0.1)
    barrier = tmp_path / "ready"
    barrier.mkdir()
    args, pipe = [sys.executable, "-c", CLAIMER, str(db), str(barrier)], asyncio.subprocess.PIPE
    procs = [
        await asyncio.create_subprocess_exec(*args, name, "2", stdout=pipe, stderr=pipe)
        for name in ("a", "b")
    ]
    won = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        won.append(json.loads(out))
    assert sorted(won[0] + won[1]) == sorted(rooms)  # every lapse claimed, none twice
    registry = SqliteRoomRegistry(str(db))
    assert await registry.lapsed() == []
    await registry.aclose()


async def test_a_claim_loses_to_the_holder_renewing(backend: Backend) -> None:
    lease, registry = backend.lease("worker-a", ttl=LAPSE_S), backend.registry()
    token = await lease.acquire()
    entry = await lapsed_soon(registry, pause=backend.pause)
    # a holder that was only cut off reclaims its lease (for longer: nothing lapses meanwhile)
    assert await backend.lease("worker-a").renew(token)
    assert not await registry.claim(entry)  # the entry changed: this lapse is over
    now = await backend.entry()
    assert await lapsed_rooms(registry) == [] and now is not None and now[1] > entry.until_ms


async def test_a_holder_renewing_after_a_claim_records_its_room_again(backend: Backend) -> None:
    lease, registry = backend.lease("worker-a", ttl=LAPSE_S), backend.registry()
    token = await lease.acquire()
    entry = await lapsed_soon(registry, pause=backend.pause)
    assert await registry.claim(entry) and await backend.entry() is None
    assert await lease.renew(token)
    assert await backend.entry() == (AGENT, await backend.lease_until(lease))


async def test_restore_puts_a_claim_back_but_never_over_a_newer_entry(backend: Backend) -> None:
    lease, registry = backend.lease("worker-a", ttl=LAPSE_S), backend.registry()
    token = await lease.acquire()
    entry = await lapsed_soon(registry, pause=backend.pause)
    assert await registry.claim(entry)
    assert await registry.lapsed() == []
    await registry.restore(entry)  # the dispatch failed: retried later
    (again,) = await registry.lapsed()
    assert (again.room, again.agent_name, again.until_ms) == (ROOM, AGENT, entry.until_ms)
    assert await registry.claim(again)
    assert await backend.lease("worker-a").renew(token)  # meanwhile the holder came back
    await registry.restore(entry)
    assert await registry.lapsed() == []
    assert await backend.entry() == (AGENT, await backend.lease_until(lease))


async def test_a_new_owner_makes_the_lapsed_entry_live_again(backend: Backend) -> None:
    old = backend.lease("worker-a", ttl=LAPSE_S)
    assert await old.acquire() is not None
    registry = backend.registry()
    entry = await lapsed_soon(registry, pause=backend.pause)
    new = backend.lease("worker-b", watch_as="agent-b")
    assert await new.acquire() is not None
    assert await registry.lapsed() == [] and not await registry.claim(entry)
    assert await backend.entry() == ("agent-b", await backend.lease_until(new))


async def test_a_release_never_removes_a_successor_s_entry(backend: Backend) -> None:
    old = backend.lease("worker-a", ttl=LAPSE_S)
    token = await old.acquire()
    await lapsed_soon(backend.registry(), pause=backend.pause)
    new = backend.lease("worker-b", watch_as="agent-b")
    assert await new.acquire() is not None
    assert not await old.release(token)  # taken over: nothing of the old holder's is left
    assert await backend.entry() == ("agent-b", await backend.lease_until(new))


# -- the store cannot answer -------------------------------------------------------------------


async def test_an_unreachable_redis_raises_store_unavailable() -> None:
    entry = LapsedRoom(ROOM, AGENT, 1, 1.0)
    with RedisServer(durable=False) as server:
        registry = RedisRoomRegistry(connect(server.url))
        lease = RedisRoomLease(connect(server.url), ROOM, "worker-a", watch_as=AGENT)
        server.kill()
        for call in (registry.lapsed(), registry.claim(entry), registry.restore(entry)):
            with pytest.raises(StoreUnavailableError):
                await call
        with pytest.raises(StoreUnavailableError):
            await lease.acquire()
        await registry.aclose()


async def test_a_locked_file_raises_store_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    SqliteDatabase(db).close()
    # another process holds the whole file (exclusive locking mode): not even a read gets in
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("PRAGMA locking_mode = EXCLUSIVE")
    blocker.execute("BEGIN EXCLUSIVE")
    registry = SqliteRoomRegistry(SqliteDatabase(db, busy_timeout=0.1))
    try:
        with pytest.raises(StoreUnavailableError):
            await registry.lapsed()
        with pytest.raises(StoreUnavailableError):
            await registry.claim(LapsedRoom(ROOM, AGENT, 1, 1.0))
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert await registry.lapsed() == []


# -- where it lives ----------------------------------------------------------------------------


async def test_a_file_of_the_previous_release_gets_the_table(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    SqliteDatabase(db).close()
    with sqlite3.connect(db) as conn:  # as the previous release wrote it
        conn.execute("DROP TABLE rooms")
    lease = SqliteRoomLease(str(db), ROOM, "worker-a", ttl=LAPSE_S, watch_as=AGENT)
    assert await lease.acquire() is not None
    assert (await lapsed_soon(SqliteRoomRegistry(str(db)))).agent_name == AGENT


async def test_the_watch_list_works_on_a_redis_cluster() -> None:
    with RedisServer(cluster=True) as server:  # a script touching two slots fails there
        client = connect(server.url)
        lease = RedisRoomLease(client, ROOM, "worker-a", ttl=LAPSE_S, watch_as=AGENT)
        token = await lease.acquire()
        assert token is not None and await lease.renew(token)
        registry = RedisRoomRegistry(connect(server.url))
        entry = await lapsed_soon(registry)
        assert await registry.claim(entry)
        await registry.restore(entry)
        # the holder renews, for longer: nothing lapses while the test looks
        holder = RedisRoomLease(client, ROOM, "worker-a", ttl=HELD_S, watch_as=AGENT)
        assert await holder.renew(token) and await registry.lapsed() == []
        assert await holder.release(token) and await client.zscore(registry.keys[0], ROOM) is None
        await registry.aclose()
        await client.aclose()
