"""Fixtures for the session store tests: a real redis-server and stores of every kind
(memory, redis, sqlite: a file in a temporary directory).

Test modules import the fixtures they use (``from store_fixtures import ...``); conftest.py
belongs to the whole suite and stays free of store details.
"""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.resilience.store import (
    KeyRing,
    MemoryStore,
    RedisStore,
    SqliteStore,
)
from {{ cookiecutter.package_name }}.resilience.store.redis_client import connect
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

KEY_A = "k1:" + "A" * 43 + "="
KEY_B = "k2:" + "B" * 43 + "="
_prefixes = itertools.count()

StoreFactory = Callable[..., Any]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One server per test module; tests keep apart by key prefix."""
    with RedisServer() as server:
        yield server


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{next(_prefixes)}"


def build_store(kind: str, server: RedisServer | None, **options: Any) -> Any:
    """A store of ``kind`` ("memory"/"redis"/"sqlite"); ``encryption_keys`` becomes a key ring.

    For "sqlite" the ``prefix`` names the file (in ``directory``, default a new temporary
    one), so two stores given one prefix share a file as two Redis stores share a prefix.
    """
    keys = options.pop("encryption_keys", None)
    keyring = KeyRing.parse(keys) if keys else None
    if kind == "memory":
        options.pop("prefix", None)
        return MemoryStore(keyring=keyring, **options)
    if kind == "sqlite":
        prefix = options.pop("prefix", None) or new_prefix()
        directory = Path(options.pop("directory", None) or tempfile.mkdtemp(prefix="store-"))
        store = SqliteStore(directory / f"{prefix}.sqlite3", keyring=keyring, **options)
        store.prefix = prefix  # type: ignore[attr-defined] - what the tests call the namespace
        return store
    assert server is not None
    options.setdefault("prefix", new_prefix())
    return RedisStore(connect(server.url), keyring=keyring, **options)


@pytest.fixture(params=["memory", "redis", "sqlite"])
async def make_store(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Factory for the parametrized store kind; every store made is closed afterwards."""
    made: list[Any] = []

    def factory(**options: Any) -> Any:
        if request.param == "sqlite":
            options.setdefault("directory", tmp_path)
        store = build_store(request.param, redis_server, **options)
        made.append(store)
        return store

    factory.kind = request.param  # type: ignore[attr-defined]
    yield factory
    for store in made:
        await store.aclose()


@pytest.fixture
def store(make_store: StoreFactory) -> Any:
    """A store of the parametrized kind with default settings."""
    return make_store()


def sqlite_exec(store: SqliteStore, sql: str, *args: Any) -> list[Any]:
    """Run SQL on a SQLite store's file through a connection of its own (another process
    would see the same), committed at once; the rows it returned."""
    with sqlite3.connect(store.path, isolation_level=None) as conn:
        return conn.execute(sql, args).fetchall()
