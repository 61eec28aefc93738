"""Fixtures for the session store tests: a real redis-server and stores of either kind.

Test modules import the fixtures they use (``from store_fixtures import ...``); conftest.py
belongs to the whole suite and stays free of store details.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.resilience.store import (
    KeyRing,
    MemoryStore,
    RedisStore,
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


def build_store(kind: str, server: RedisServer | None, **options: Any) -> MemoryStore | RedisStore:
    """A store of ``kind`` ("memory"/"redis"); ``encryption_keys`` becomes a key ring."""
    keys = options.pop("encryption_keys", None)
    keyring = KeyRing.parse(keys) if keys else None
    if kind == "memory":
        options.pop("prefix", None)
        return MemoryStore(keyring=keyring, **options)
    assert server is not None
    options.setdefault("prefix", new_prefix())
    return RedisStore(connect(server.url), keyring=keyring, **options)


@pytest.fixture(params=["memory", "redis"])
async def make_store(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[StoreFactory]:
    """Factory for the parametrized store kind; every store made is closed afterwards."""
    made: list[MemoryStore | RedisStore] = []

    def factory(**options: Any) -> MemoryStore | RedisStore:
        store = build_store(request.param, redis_server, **options)
        made.append(store)
        return store

    factory.kind = request.param  # type: ignore[attr-defined]
    yield factory
    for store in made:
        await store.aclose()


@pytest.fixture
def store(make_store: StoreFactory) -> MemoryStore | RedisStore:
    """A store of the parametrized kind with default settings."""
    return make_store()
