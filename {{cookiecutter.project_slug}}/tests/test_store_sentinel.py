"""REDIS_URL=redis+sentinel://...: the store finds the primary through a real Sentinel."""

from __future__ import annotations

from {{ cookiecutter.package_name }}.resilience.store import JoinKind, open_store
from {{ cookiecutter.package_name }}.testing.redis_server import RedisSentinel, RedisServer


async def test_the_store_works_through_a_sentinel() -> None:
    with RedisServer() as primary, RedisSentinel(primary) as sentinel:
        store = open_store(redis_url=sentinel.url)
        try:
            first = await store.join("room", "ada", "visit-1")
            await store.append("room", "ada", items=[{"id": "m1", "type": "message"}])
            await store.leave("room", "ada", "visit-1")
            again = await store.join("room", "ada", "visit-2")
        finally:
            await store.aclose()
        # what the store wrote is on the primary the sentinel named
        with primary.client() as direct:
            written = direct.dbsize()
    assert first.kind is JoinKind.NEW
    assert again.kind is JoinKind.RETURNING
    assert again.record.item_ids == ["m1"]
    assert written > 0
