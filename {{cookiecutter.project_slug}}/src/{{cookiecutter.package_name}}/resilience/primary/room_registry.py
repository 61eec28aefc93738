"""The watch list of held rooms: which room leases lapsed without a release, each claimed once.

LiveKit never dispatches a room again when the worker holding it dies (kill -9). A room lease
made with ``watch_as=AGENT_NAME`` (room_lease.py) records its room here on every acquire and
renewal, with the lease's own until on the store's clock, and removes it when it releases the
lease. An entry whose until passed is a room whose holder stopped renewing without releasing:
it died, or lost the store for longer than the lease. A watcher on any worker lists them
(``lapsed``), takes one (``claim``: it removes the entry only if its until is unchanged, so
across every worker and process exactly one caller wins each lapse), dispatches a new job
into the room, and puts the entry back (``restore``) if that failed. A holder that renews
after a claim (it was only cut off) records its room again; the new job finds the lease held.

The room name is stored in plain text while the room is watched (a dispatch needs it); the
lease itself keeps only its hash. An entry never moves back in time: a late write (or a
restore) never undoes a newer one.

- :class:`RedisRoomRegistry`: the sorted set ``{<prefix>:rooms}`` (member: the room name,
  score: until in Redis ms) and the hash ``{<prefix>:rooms}:agent`` (room name -> agent
  name), one Cluster slot of their own. The lease is in another slot, so the holder writes
  its entry in a second script, with the until its lease script returned.
- :class:`SqliteRoomRegistry`: the ``rooms`` table of the SQLite session file, written in the
  lease's own transaction.

A store that cannot answer raises StoreUnavailableError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..store import redis_scripts, sqlite_ops
from ..store.redis_client import run_script
from ..store.sqlite_db import SqliteDatabase

__all__ = ["LapsedRoom", "RedisRoomRegistry", "RoomRegistry", "SqliteRoomRegistry"]


@dataclass(frozen=True)
class LapsedRoom:
    """A watched room whose lease lapsed without a release."""

    room: str  # the LiveKit room name
    agent_name: str  # the agent name of the worker that held it ("" = automatic dispatch)
    until_ms: int  # when its lease lapsed, on the store's clock (the entry's version)
    lapsed_s: float  # how long ago, on the store's clock


class RoomRegistry(Protocol):
    """The watch list, as a watcher sees it."""

    async def lapsed(self, *, limit: int = 100) -> list[LapsedRoom]:
        """The entries whose until passed (store clock), oldest first."""
        ...

    async def claim(self, room: LapsedRoom) -> bool:
        """Remove the entry if its until is still ``room.until_ms``: across every worker and
        process exactly one caller gets True per lapse."""
        ...

    async def restore(self, room: LapsedRoom) -> None:
        """Put a claimed entry back (its dispatch failed), unless a newer one is there."""
        ...

    async def aclose(self) -> None: ...


class RedisRoomRegistry:
    """The watch list in Redis; see the module docstring. ``aclose`` closes the client."""

    def __init__(self, client: Any, *, prefix: str = "lkagent") -> None:
        tag = "{" + prefix + ":rooms}"
        self.keys = [tag, tag + ":agent"]
        self._client = client
        self._watch = client.register_script(redis_scripts.WATCH)
        self._unwatch = client.register_script(redis_scripts.UNWATCH)
        self._lapsed = client.register_script(redis_scripts.LAPSED)

    async def lapsed(self, *, limit: int = 100) -> list[LapsedRoom]:
        """See :meth:`RoomRegistry.lapsed`."""
        now, *found = await self._call(self._lapsed, [limit])
        entries = zip(found[::3], found[1::3], found[2::3], strict=True)
        return [
            LapsedRoom(room.decode(), agent.decode(), int(until), (now - int(until)) / 1000)
            for room, until, agent in entries
        ]

    async def claim(self, room: LapsedRoom) -> bool:
        """See :meth:`RoomRegistry.claim`."""
        return await self.remove(room.room, room.until_ms)

    async def restore(self, room: LapsedRoom) -> None:
        """See :meth:`RoomRegistry.restore`."""
        await self.record(room.room, room.agent_name, room.until_ms)

    async def record(self, room: str, agent_name: str, until_ms: int) -> bool:
        """Set the room's entry unless one as new or newer is there (the lease's side)."""
        return bool(await self._call(self._watch, [room, until_ms, agent_name]))

    async def remove(self, room: str, until_ms: int) -> bool:
        """Remove the room's entry if its until is still ``until_ms``."""
        return bool(await self._call(self._unwatch, [room, until_ms]))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, script: Any, args: list[Any]) -> Any:
        return await run_script(
            script, self.keys, args, "the watch list of held rooms cannot be used"
        )


class SqliteRoomRegistry:
    """The watch list in the SQLite session file; ``aclose`` closes the file if this registry
    opened it (given a path)."""

    def __init__(self, db: SqliteDatabase | str) -> None:
        self._owns_db = not isinstance(db, SqliteDatabase)
        self._db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(db)

    async def lapsed(self, *, limit: int = 100) -> list[LapsedRoom]:
        """See :meth:`RoomRegistry.lapsed`."""
        now, rows = await self._db.read(sqlite_ops.lapsed_rooms, limit)
        return [LapsedRoom(room, agent, until, (now - until) / 1000) for room, agent, until in rows]

    async def claim(self, room: LapsedRoom) -> bool:
        """See :meth:`RoomRegistry.claim`."""
        return await self._db.write(sqlite_ops.unwatch_room, room.room, room.until_ms)

    async def restore(self, room: LapsedRoom) -> None:
        """See :meth:`RoomRegistry.restore`."""
        await self._db.write(sqlite_ops.watch_room, room.room, room.agent_name, room.until_ms)

    async def aclose(self) -> None:
        if self._owns_db:
            self._db.close()
