"""The room lease across workers: one primary per room, failover, and fencing by token.

In-process tests cover the lease and the fenced store on a real Redis server and in memory;
the last two run two real worker processes (``election_worker_proc.py``) against one real
redis-server and kill -9 or freeze the primary.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import pytest
from store_fixtures import ManualClock, new_prefix, redis_server  # noqa: F401 - fixture

from {{ cookiecutter.package_name }}.resilience.primary.room_lease import (
    LocalRoomLease,
    RedisRoomLease,
    RoomPrimacy,
)
from {{ cookiecutter.package_name }}.resilience.store import (
    FencedStore,
    MemoryStore,
    RedisStore,
    StaleLeaseError,
    StoreUnavailableError,
)
from {{ cookiecutter.package_name }}.resilience.store.leases import LocalLeaseTable
from {{ cookiecutter.package_name }}.resilience.store.redis import connect
from {{ cookiecutter.package_name }}.testing.netfault import FaultyLink
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

ROOM = "room-1"
CALLER = "caller"
WORKER = Path(__file__).with_name("election_worker_proc.py")
# long enough that a loaded machine cannot lapse a lease between two steps of a test
LAPSE_S = 1.0


def item(item_id: str) -> dict:
    return {"id": item_id, "type": "message", "role": "user", "content": [item_id]}


async def test_one_holder_at_a_time_and_tokens_only_grow(redis_server: RedisServer) -> None:  # noqa: F811
    client, prefix = connect(redis_server.url), new_prefix()
    a = RedisRoomLease(client, ROOM, "worker-a", ttl=LAPSE_S, prefix=prefix)
    b = RedisRoomLease(client, ROOM, "worker-b", ttl=LAPSE_S, prefix=prefix)
    first = await a.acquire()
    assert first is not None and await b.acquire() is None
    assert await a.acquire() == first  # the holder asking again keeps its token
    assert (await a.state()).owner == "worker-a"
    await asyncio.sleep(LAPSE_S + 0.1)  # lapsed, nobody took it: the holder reclaims it
    assert await a.renew(first) and (await a.state()).owner == "worker-a"
    await asyncio.sleep(LAPSE_S + 0.1)  # lapsed again, and this time another worker takes it
    second = await b.acquire()
    assert second is not None and second > first
    assert not await a.renew(first) and not await a.release(first)
    assert (await b.state()).owner == "worker-b"
    assert await b.release(second) and (await b.state()).owner is None
    third = await a.acquire()
    assert third is not None and third > second
    await client.aclose()


async def test_local_lease_behaves_the_same() -> None:
    clock = ManualClock()
    table = LocalLeaseTable(monotonic=clock.monotonic, clock=clock.time)  # the jobs' table
    a = LocalRoomLease("local-room", "worker-a", ttl=0.2, table=table)
    b = LocalRoomLease("local-room", "worker-b", ttl=0.2, table=table)
    first = await a.acquire()
    assert first is not None and await b.acquire() is None and await a.renew(first)
    clock.advance(0.25)
    assert await a.renew(first)  # a stalled loop is not a lost lease
    clock.advance(0.25)
    second = await b.acquire()
    assert second is not None and second > first
    assert not await a.renew(first)
    assert await b.release(second)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_lapsed_holder_loses_nothing_and_overwrites_nothing_after_a_takeover(
    kind: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    prefix, clock = new_prefix(), ManualClock()
    store: MemoryStore | RedisStore
    leases: list[LocalRoomLease] | list[RedisRoomLease]
    if kind == "memory":
        # the room leases live in the store's own lease table, as with every other store
        store = MemoryStore(clock=clock.time, monotonic=clock.monotonic)
        leases = [LocalRoomLease(ROOM, w, ttl=LAPSE_S, table=store.leases) for w in ("a", "b")]
    else:
        store = RedisStore(connect(redis_server.url), prefix=prefix)
        client = connect(redis_server.url)
        leases = [RedisRoomLease(client, ROOM, w, ttl=LAPSE_S, prefix=prefix) for w in ("a", "b")]
    lost = asyncio.Event()
    old = RoomPrimacy(leases[0], renew_every=10, poll_every=10, on_lost=lost.set)
    new = RoomPrimacy(leases[1], renew_every=10, poll_every=10)
    old_store, new_store = FencedStore(store, old), FencedStore(store, new)
    assert await old.start() and not await new.start()
    await old_store.append(ROOM, CALLER, items=[item("a-1")])
    with pytest.raises(StaleLeaseError):
        await new_store.set_gemini_handle(ROOM, CALLER, "b-handle", [])  # a standby writes nothing

    # the old holder stalls past its lease (a pause...); Redis runs on its own clock
    if kind == "memory":
        clock.advance(LAPSE_S + 0.1)
    else:
        await asyncio.sleep(LAPSE_S + 0.1)
    assert old.is_primary  # nothing it can see says otherwise yet
    assert await new.start()
    await new_store.append(ROOM, CALLER, items=[item("b-1")])
    await new_store.set_gemini_handle(ROOM, CALLER, "b-handle", ["b-1"])
    # the stalled holder wakes up: its turns are merged after the successor's, never lost...
    merged = await old_store.append(ROOM, CALLER, items=[item("a-2")])
    assert merged.merged
    with pytest.raises(StaleLeaseError):  # ...and it overwrites nothing
        await old_store.set_gemini_handle(ROOM, CALLER, "a-handle", ["a-1"])
    record = await store.load(ROOM, CALLER)
    assert record is not None and [i["id"] for i in record.items] == ["a-1", "b-1", "a-2"]
    assert record.gemini is not None and record.gemini.handle == "b-handle"
    # its heartbeat finds the successor: it steps down
    await old.aclose(release=False)
    old = RoomPrimacy(leases[0], on_lost=lost.set)
    assert not await old.start()
    await new.aclose()
    await store.aclose()


async def test_a_worker_cut_off_from_redis_keeps_its_room_and_its_token() -> None:
    with RedisServer(durable=False) as server:
        lease = RedisRoomLease(connect(server.url), ROOM, "worker-a", ttl=0.5)
        lost = asyncio.Event()
        primacy = RoomPrimacy(lease, on_lost=lost.set, renew_every=0.1)
        assert await primacy.start()
        token = primacy.token
        server.kill()
        await asyncio.sleep(1.5)  # three lease times without an answer: nobody else can take it
        assert not lost.is_set() and primacy.is_primary and primacy.token == token
        await asyncio.to_thread(server.restart)  # back without its data
        async with asyncio.timeout(5):
            while (await lease.state()).owner != "worker-a":  # noqa: ASYNC110 - Redis is polled
                await asyncio.sleep(0.05)
        assert (await lease.state()).token == token and not lost.is_set()
        await primacy.aclose()


async def test_a_job_started_during_an_outage_serves_then_takes_the_lease() -> None:
    with RedisServer(durable=False) as server:
        server.kill()
        lease = RedisRoomLease(connect(server.url), ROOM, "worker-a", ttl=0.5)
        primacy = RoomPrimacy(lease)
        assert await primacy.start()  # served at once, provisionally
        assert primacy.token is None and primacy.is_primary
        with pytest.raises(StoreUnavailableError):
            primacy.fencing_token()  # its writes wait in the store's queue
        await asyncio.to_thread(server.restart)
        async with asyncio.timeout(5):
            while primacy.token is None:  # noqa: ASYNC110 - the heartbeat polls Redis
                await asyncio.sleep(0.05)
        assert primacy.fencing_token() == primacy.token
        await primacy.aclose()


async def test_a_provisional_worker_steps_down_when_redis_shows_another_holder(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    prefix = new_prefix()
    async with FaultyLink(redis_server.url) as link:
        link.cut()  # this worker cannot reach Redis; another worker can
        lost = asyncio.Event()
        primacy = RoomPrimacy(
            RedisRoomLease(connect(link.url), ROOM, "worker-a", ttl=5, prefix=prefix),
            on_lost=lost.set,
            poll_every=0.05,
        )
        assert await primacy.start() and primacy.token is None  # serving provisionally
        holder = RedisRoomLease(connect(redis_server.url), ROOM, "worker-b", ttl=5, prefix=prefix)
        assert await holder.acquire() is not None
        link.heal()
        await asyncio.wait_for(lost.wait(), 5)
        assert not primacy.is_primary
        with pytest.raises(StaleLeaseError):
            primacy.fencing_token()
        await primacy.aclose()


# -- two worker processes --------------------------------------------------------------------


class WorkerProcess:
    """One election_worker_proc.py; its JSON lines arrive on a queue."""

    def __init__(self, url: str, prefix: str, name: str, ttl: float, window: float) -> None:
        self.name = name
        self.events: list[dict] = []
        self._lines: Queue[dict] = Queue()
        args = [sys.executable, str(WORKER), "--redis", url, "--room", ROOM, "--name", name,
                "--prefix", prefix, "--ttl", str(ttl), "--window", str(window)]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=os.environ)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))

    def wait_for(self, event: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                raise TimeoutError(f"{self.name}: no {event!r} within {timeout}s") from None
            self.events.append(found)
            if found["event"] == event:
                return found

    def drain(self) -> None:
        while not self._lines.empty():
            self.events.append(self._lines.get())

    def ids(self, event: str) -> list[str]:
        return [e["id"] for e in self.events if e["event"] == event]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def stored_ids(server: RedisServer, prefix: str) -> list[str]:
    async def load() -> list[str]:
        store = RedisStore(connect(server.url), prefix=prefix)
        record = await store.load(ROOM, "caller")
        await store.aclose()
        return [i["id"] for i in record.items] if record else []

    return asyncio.run(load())


def test_kill_9_the_primary_and_the_standby_continues_from_the_store(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    prefix, ttl = new_prefix(), 1.0
    a = WorkerProcess(redis_server.url, prefix, "A", ttl, window=0.02)
    try:
        a.wait_for("primary")
        b = WorkerProcess(redis_server.url, prefix, "B", ttl, window=0.02)
        try:
            b.wait_for("started")
            for _ in range(5):
                a.wait_for("wrote")
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            killed_at = time.time()
            taken = b.wait_for("primary", timeout=3 * ttl + 5)
            b.wait_for("wrote")
            a.drain()
            # the standby took over after the kill and started from everything A stored
            assert taken["t"] > killed_at
            assert set(a.ids("wrote")) <= set(taken["loaded"])
            assert all(i.startswith("A-") for i in taken["loaded"])
            ids = stored_ids(redis_server, prefix)
            first_b = next(n for n, i in enumerate(ids) if i.startswith("B-"))
            assert ids[:first_b] == taken["loaded"]
            assert not [i for i in ids[first_b:] if i.startswith("A-")]  # nothing of A after
        finally:
            b.stop()
    finally:
        a.stop()


def test_a_frozen_primary_that_wakes_up_after_the_takeover_has_its_turns_merged(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """A primary frozen (SIGSTOP) between taking its token and writing: its lease lapses, the
    standby takes over; when it wakes (SIGCONT) its in-flight turn is merged after the
    successor's (turns are never lost), and it steps down."""
    prefix, ttl = new_prefix(), 1.0
    a = WorkerProcess(redis_server.url, prefix, "A", ttl, window=1.5)
    b = None
    try:
        a.wait_for("primary")
        b = WorkerProcess(redis_server.url, prefix, "B", ttl, window=0.02)
        b.wait_for("started")
        a.wait_for("wrote")
        a.wait_for("fenced")
        a.proc.send_signal(signal.SIGSTOP)  # frozen with a token in hand
        time.sleep(0.2)  # whatever it printed before the stop has arrived
        a.drain()
        in_flight = [e for e in a.events if e["event"] in ("fenced", "wrote")][-1]
        assert in_flight["event"] == "fenced"  # stopped between its token and its write
        taken = b.wait_for("primary", timeout=3 * ttl + 5)
        b.wait_for("wrote")
        a.proc.send_signal(signal.SIGCONT)
        merged = a.wait_for("merged")
        a.wait_for("standby")  # and it knows it is no longer primary
        a.drain()
        assert merged["id"] == in_flight["id"]
        assert not [e for e in a.events if e["event"] == "wrote" and e["t"] > taken["t"]]
        ids = stored_ids(redis_server, prefix)
        assert ids.count(in_flight["id"]) == 1 and len(ids) == len(set(ids))
        first_b = next(n for n, i in enumerate(ids) if i.startswith("B-"))
        assert ids[:first_b] == taken["loaded"]
        # everything A wrote after the takeover came after B's first turn, merged
        assert set(a.ids("merged")) <= set(ids[first_b:])
    finally:
        if a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
        a.stop()
        if b is not None:
            b.stop()
