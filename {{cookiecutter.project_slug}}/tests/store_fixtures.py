"""Fixtures for the session store tests: a real redis-server and stores of every kind
(memory, redis, sqlite: a file in a temporary directory), a clock the tests move, and the
operator calls the tests make on any store.

Test modules import the fixtures they use (``from store_fixtures import ...``); conftest.py
belongs to the whole suite and stays free of store details.

The memory and SQLite stores run on clocks given to them (``ManualClock``): a test moves time
with ``pause`` instead of sleeping. Redis keeps its own clock (``TIME``), so with Redis
``pause`` really sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.resilience.store import (
    KeyRing,
    MemoryStore,
    RedisStore,
    SqliteStore,
)
from {{ cookiecutter.package_name }}.resilience.store.redis import connect
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

KEY_A = "k1:" + "A" * 43 + "="
KEY_B = "k2:" + "B" * 43 + "="
_prefixes = itertools.count()

Pause = Callable[[float], Awaitable[None]]


class ManualClock:
    """A wall clock and a monotonic clock that move only when told (``advance``)."""

    def __init__(self) -> None:
        self.now = time.time()
        self.mono = 1_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One server per test module; tests keep apart by key prefix."""
    with RedisServer() as server:
        yield server


@pytest.fixture(name="redis")
def empty_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """``redis``: the module's Redis server, emptied for each test (for commands that see
    every key)."""
    with redis_server.client() as client:
        client.flushall()
    yield redis_server


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{next(_prefixes)}"


def build_store(
    kind: str, server: RedisServer | None, clock: ManualClock | None = None, **options: Any
) -> Any:
    """A store of ``kind`` ("memory"/"redis"/"sqlite"); ``encryption_keys`` becomes a key ring.

    For "sqlite" the ``prefix`` names the file (in ``directory``, default a new temporary
    one), so two stores given one prefix share a file as two Redis stores share a prefix.
    ``clock``: the memory and SQLite stores' clocks (Redis has its own).
    """
    keys = options.pop("encryption_keys", None)
    keyring = KeyRing.parse(keys) if keys else None
    if clock is not None and kind != "redis":
        options.update(clock=clock.time, monotonic=clock.monotonic)
    if kind == "memory":
        options.pop("prefix", None)
        return MemoryStore(keyring=keyring, **options)
    if kind == "sqlite":
        prefix = options.pop("prefix", None) or new_prefix()
        directory = Path(options.pop("directory", None) or tempfile.mkdtemp(prefix="store-"))
        store = SqliteStore(directory / f"{prefix}.sqlite3", keyring=keyring, **options)
        # the namespace, as the tests call it for every kind; a SqliteStore has none of its own
        store.prefix = prefix  # type: ignore[attr-defined]
        return store
    assert server is not None
    options.setdefault("prefix", new_prefix())
    return RedisStore(connect(server.url), keyring=keyring, **options)


class StoreFactory:
    """``make_store(**options)``: a store of one ``kind`` (see ``build_store``). The stores
    share one ``ManualClock`` (``clock``; Redis keeps its own)."""

    def __init__(self, kind: str, server: RedisServer, directory: Path) -> None:
        self.kind = kind
        self.clock = ManualClock()
        self.made: list[Any] = []
        self._server = server
        self._directory = directory

    def __call__(self, **options: Any) -> Any:
        if self.kind == "sqlite":
            options.setdefault("directory", self._directory)
        store = build_store(self.kind, self._server, self.clock, **options)
        self.made.append(store)
        return store


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def make_store(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Factory for the parametrized store kind; every store made is closed afterwards."""
    factory = StoreFactory(request.param, redis_server, tmp_path)
    yield factory
    for store in factory.made:
        await store.aclose()


@pytest.fixture
def store(make_store: StoreFactory) -> Any:
    """A store of the parametrized kind with default settings."""
    return make_store()


@pytest.fixture
def pause(make_store: StoreFactory) -> Pause:
    """Let ``seconds`` pass for the parametrized stores: the clock moves (Redis: a sleep)."""

    async def elapse(seconds: float) -> None:
        if make_store.kind == "redis":
            await asyncio.sleep(seconds)
        else:
            make_store.clock.advance(seconds)
            await asyncio.sleep(0)

    return elapse


async def list_records(store: Any, room: str | None = None) -> list[Any]:
    """Every readable live record (of one room), as an operator lists them."""
    return (await store.admin.inventory(room)).records


async def purge(store: Any, room: str, identity: str | None = None) -> int:
    """Delete a participant's or a room's records as an operator does; how many were live."""
    return (await store.admin.purge(room, identity)).sessions


async def release_lease(store: Any, room: str, identity: str, owner: str, token: int) -> bool:
    """Give a participant's lease up (the worker never does: its leases lapse)."""
    return await store.leases.release(store.leases.participant(room, identity), owner, token)


def sqlite_exec(store: SqliteStore, sql: str, *args: Any) -> list[Any]:
    """Run SQL on a SQLite store's file through a connection of its own (another process
    would see the same), committed at once; the rows it returned."""
    with sqlite3.connect(store.path, isolation_level=None) as conn:
        return conn.execute(sql, args).fetchall()
