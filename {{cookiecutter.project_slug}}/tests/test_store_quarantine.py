"""Unreadable records are moved aside with a logged reason, and the participant starts fresh."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import store_fixtures
from store_fixtures import KEY_A, KEY_B, build_store

from {{ cookiecutter.package_name }}.resilience.store import JoinKind
from {{ cookiecutter.package_name }}.resilience.store.records import (
    identity_hash,
    participant_hash,
)
from {{ cookiecutter.package_name }}.resilience.store.redis_client import (
    participant_keys,
)
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

# fixtures shared by the store tests (conftest.py is the whole suite's)
make_store = store_fixtures.make_store
redis_server = store_fixtures.redis_server

ROOM = "room-q"
WHO = "zoe@example.com"

# (what to break, how in the memory store's stored form, how in Redis)
CORRUPTIONS: dict[str, tuple[Callable[[Any], None], Callable[[Any, Any], None]]] = {
    "bad json": (
        lambda entry: entry.fields.__setitem__("meta", b"{not json"),
        lambda admin, keys: admin.hset(keys.record, "meta", b"{not json"),
    ),
    "unknown schema version": (
        lambda entry: entry.fields.__setitem__("v", b"99"),
        lambda admin, keys: admin.hset(keys.record, "v", 99),
    ),
    "garbage item": (
        lambda entry: entry.items.append(b"\xff\xfe"),
        lambda admin, keys: admin.rpush(keys.items, b"\xff\xfe"),
    ),
    "item without id": (
        lambda entry: entry.items.append(b'{"role":"user"}'),
        lambda admin, keys: admin.rpush(keys.items, b'{"role":"user"}'),
    ),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
async def test_corrupt_record_is_quarantined_and_participant_starts_fresh(
    make_store: Any,
    redis_server: RedisServer,
    corruption: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_store()
    await store.join(ROOM, WHO, "s1")
    await store.append(ROOM, WHO, items=[{"id": "i1", "text": "secret words"}])
    break_memory, break_redis = CORRUPTIONS[corruption]
    if make_store.kind == "memory":
        break_memory(store._entries[(ROOM, WHO)])
    else:
        with redis_server.client() as admin:
            break_redis(admin, participant_keys(store.prefix, ROOM, WHO))

    with caplog.at_level(logging.ERROR):
        outcome = await store.join(ROOM, WHO, "s2")
    assert outcome.kind is JoinKind.NEW and outcome.record.items == ()
    (logged,) = [r for r in caplog.records if "quarantine" in r.getMessage()]
    assert logged.participant == identity_hash(WHO) and logged.reason
    assert WHO not in caplog.text and "secret words" not in caplog.text

    if make_store.kind == "memory":
        assert [h for h, _ in store.quarantined()] == [participant_hash(ROOM, WHO)]
    else:
        tag = participant_keys(store.prefix, ROOM, WHO).tag
        with redis_server.client() as admin:
            moved = sorted(k.decode() for k in admin.keys(tag + ":q*"))
            assert [k.rsplit(":", 1)[1] for k in moved] == ["ids", "items", "rec", "why"]
            assert all(admin.pttl(k) > 0 for k in moved)
            why = admin.get(next(k for k in moved if k.endswith(":why"))).decode()
            assert why == logged.reason
            kept = admin.lrange(next(k for k in moved if k.endswith(":items")), 0, -1)
            assert any(b"secret words" in blob for blob in kept)  # moved aside, not dropped


async def test_wrong_redis_type_is_quarantined(redis_server: RedisServer) -> None:
    store = build_store("redis", redis_server)
    keys = participant_keys(store.prefix, ROOM, WHO)
    with redis_server.client() as admin:
        admin.set(keys.record, "a string where a hash belongs")
    assert (await store.join(ROOM, WHO, "s1")).kind is JoinKind.NEW
    await store.append(ROOM, WHO, items=[{"id": "i1"}])
    assert (await store.load(ROOM, WHO)).item_ids == ["i1"]
    await store.aclose()


async def test_record_under_a_missing_key_is_quarantined_not_lost(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    writer = build_store("redis", redis_server, encryption_keys=KEY_A)
    await writer.join(ROOM, WHO, "s1")
    await writer.append(ROOM, WHO, items=[{"id": "i1"}])
    reader = build_store("redis", redis_server, encryption_keys=KEY_B, prefix=writer.prefix)
    with caplog.at_level(logging.ERROR):
        assert await reader.load(ROOM, WHO) is None
    (logged,) = [r for r in caplog.records if "quarantine" in r.getMessage()]
    assert "'k1'" in logged.reason and "not in SESSION_ENCRYPTION_KEYS" in logged.reason
    with redis_server.client() as admin:
        assert admin.keys(participant_keys(writer.prefix, ROOM, WHO).tag + ":q*")
    await writer.aclose()
    await reader.aclose()
