"""Property tests: any names, any JSON metadata, any stored bytes."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import store_fixtures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot
from store_fixtures import KEY_A, build_store

from {{ cookiecutter.package_name }}.resilience.store import (
    InvalidInputError,
    MissingKeyError,
)
from {{ cookiecutter.package_name }}.resilience.store._crypto import MAGIC
from {{ cookiecutter.package_name }}.resilience.store.redis import participant_keys
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

# fixtures shared by the store tests (conftest.py is the whole suite's)
redis_server = store_fixtures.redis_server

names = st.text(
    alphabet=st.sampled_from("ab:*{}\\ ü😀\x00") | st.characters(blacklist_categories=["Cs"]),
    max_size=40,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
metadata_values = st.dictionaries(st.text(), json_values, max_size=6)
redis_only = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@given(a=st.tuples(names, names), b=st.tuples(names, names))
def test_distinct_participants_never_share_a_key(a: tuple[str, str], b: tuple[str, str]) -> None:
    keys_a, keys_b = participant_keys("p", *a), participant_keys("p", *b)
    assert re.fullmatch(r"\{p:[0-9a-f]{32}\}", keys_a.tag)
    assert len({key_slot(k.encode()) for k in keys_a.data}) == 1
    if a != b:
        assert not set(keys_a.data) & set(keys_b.data)


@redis_only
@given(pairs=st.lists(st.tuples(names, names), min_size=2, max_size=5, unique=True))
def test_any_names_address_only_their_own_record(
    redis_server: RedisServer, pairs: list[tuple[str, str]]
) -> None:
    async def scenario() -> None:
        store = build_store("redis", redis_server)
        for n, (room, identity) in enumerate(pairs):
            await store.append(room, identity, items=[{"id": "x", "owner": n}])
        for n, (room, identity) in enumerate(pairs):
            record = await store.load(room, identity)
            assert (record.room, record.identity) == (room, identity)
            assert record.items == ({"id": "x", "owner": n},)
        await store.aclose()

    asyncio.run(scenario())


@settings(max_examples=20)
@given(name=st.text(min_size=1).map(lambda s: s + "\ud800"))
def test_names_that_are_not_unicode_are_refused(name: str) -> None:
    async def scenario() -> None:
        store = build_store("memory", None)
        for room, identity in ((name, "i"), ("r", name)):
            try:
                await store.join(room, identity, "s1")
            except InvalidInputError as exc:
                assert "Unicode" in str(exc)
            else:
                raise AssertionError("accepted a name Redis and JSON cannot hold")

    asyncio.run(scenario())


@redis_only
@given(metadata=metadata_values, kind=st.sampled_from(["memory", "redis"]),
       encrypted=st.booleans())  # fmt: skip
def test_metadata_round_trips_exactly(
    redis_server: RedisServer, metadata: dict[str, Any], kind: str, encrypted: bool
) -> None:
    async def scenario() -> None:
        keys = KEY_A if encrypted else None
        store = build_store(kind, redis_server, encryption_keys=keys)
        await store.update_profile("r", "i", metadata=metadata)
        assert (await store.load("r", "i")).metadata == metadata
        await store.aclose()

    asyncio.run(scenario())


@given(bad=st.sampled_from([(1, 2), {1, 2}, b"bytes", float("inf"), object()]))
def test_non_json_metadata_is_refused(bad: Any) -> None:
    async def scenario() -> None:
        store = build_store("memory", None)
        try:
            await store.update_profile("r", "i", metadata={"k": bad})
        except InvalidInputError:
            assert await store.load("r", "i") is None
        else:
            raise AssertionError("accepted metadata that does not survive JSON")

    asyncio.run(scenario())


@redis_only
@given(field=st.sampled_from(["meta", "lang", "gem", "who", "v", "joined", "reconnects"]),
       blob=st.binary(max_size=64) | st.binary(max_size=40).map(lambda b: MAGIC + b"\x02k9" + b),
       encrypted=st.booleans())  # fmt: skip
def test_any_stored_bytes_never_crash_a_read(
    redis_server: RedisServer, field: str, blob: bytes, encrypted: bool
) -> None:
    async def scenario() -> None:
        store = build_store("redis", redis_server, encryption_keys=KEY_A if encrypted else None)
        await store.join("r", "i", "s1")
        await store.append("r", "i", items=[{"id": "a"}])
        keys = participant_keys(store.prefix, "r", "i")
        with redis_server.client() as admin:
            admin.hset(keys.record, field, blob)
        try:
            record = await store.load("r", "i")  # readable, or quarantined
        except MissingKeyError:
            # sealed under a key this worker lacks: not corrupt, so left exactly as it is
            with redis_server.client() as admin:
                assert admin.hget(keys.record, field) == blob
                assert admin.lrange(keys.items, 0, -1)
            await store.aclose()
            return
        outcome = await store.join("r", "i", "s2")
        if record is None:
            assert outcome.record.items == ()
        else:
            assert outcome.record.item_ids == ["a"]
        await store.aclose()

    asyncio.run(scenario())
