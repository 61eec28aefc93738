"""The room watcher, in one process: the real watch list in a SQLite file, the real
``livekit.api`` client against the kit's LiveKit server (its Twirp API over HTTP).

The whole path with worker processes killed is in test_crash_recovery.py; these pin the
watcher's rules: exactly one dispatch per lapse among many watchers, a room with nobody
left or closed is dropped, a failed dispatch is retried, the new job's metadata says why.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from livekit import api

from {{ cookiecutter.package_name }}.resilience.primary.recovery import (
    RoomWatcher,
    is_redispatch,
    redispatch_metadata,
)
from {{ cookiecutter.package_name }}.resilience.primary.room_lease import SqliteRoomLease
from {{ cookiecutter.package_name }}.resilience.primary.room_registry import (
    LapsedRoom,
    SqliteRoomRegistry,
)
from {{ cookiecutter.package_name }}.testing.livekit_server.server import (
    LocalLiveKitServer,
)

TTL = 0.2


async def lapse(db: Path, room: str) -> None:
    """A job took the room's lease and died without releasing it."""
    lease = SqliteRoomLease(str(db), room, "dead-worker/job", ttl=TTL, watch_as="")
    assert await lease.acquire() is not None
    await asyncio.sleep(TTL * 2)


def watcher(db: Path, url: str, server: LocalLiveKitServer) -> RoomWatcher:
    return RoomWatcher(
        lambda: SqliteRoomRegistry(str(db)),
        lambda: api.LiveKitAPI(url, server.api_key, server.api_secret),
        poll_s=0.05,
    )


def free_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_many_watchers_dispatch_a_lapsed_room_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    async with LocalLiveKitServer(dispatch_delay_s=3600) as server:
        await server.join("desk", "ada")
        await lapse(db, "desk")
        watchers = [watcher(db, server.url, server) for _ in range(5)]
        try:
            results = await asyncio.gather(*(w.check() for w in watchers))
            assert sorted(results) == [[], [], [], [], ["desk"]]
            (job,) = server.jobs.values()
            assert job.room == "desk" and job.agent_name == ""
            assert is_redispatch(job.metadata)
            # handled: later passes find nothing
            assert await watchers[0].check() == []
        finally:
            for w in watchers:
                await w.aclose()


async def test_a_room_with_only_agents_or_closed_is_dropped(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    async with LocalLiveKitServer(dispatch_delay_s=3600) as server:
        ada = await server.join("emptied", "ada")
        await ada.leave()
        await lapse(db, "emptied")
        await lapse(db, "never-existed")
        w = watcher(db, server.url, server)
        try:
            assert await w.check() == []
            assert await SqliteRoomRegistry(str(db)).lapsed() == []
            assert server.jobs == {}
        finally:
            await w.aclose()


async def test_a_dispatch_that_fails_is_retried_on_a_later_pass(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    async with LocalLiveKitServer(dispatch_delay_s=3600) as server:
        await server.join("desk", "ada")
        await lapse(db, "desk")
        unreachable = watcher(db, free_url(), server)  # the LiveKit server cannot be reached
        try:
            assert await unreachable.check() == []
        finally:
            await unreachable.aclose()
        # the room went back on the list: a watcher that reaches the server dispatches it
        reachable = watcher(db, server.url, server)
        try:
            assert await reachable.check() == ["desk"]
            assert len(server.jobs) == 1
        finally:
            await reachable.aclose()


def test_redispatch_metadata_is_recognised_and_other_metadata_is_not() -> None:
    room = LapsedRoom(room="desk", agent_name="", until_ms=1, lapsed_s=0.4)
    assert is_redispatch(redispatch_metadata(room))
    for other in ("", "{}", "not json", "[1, 2]", '{"lk_agent_redispatch": true}', '"x"'):
        assert not is_redispatch(other), other
