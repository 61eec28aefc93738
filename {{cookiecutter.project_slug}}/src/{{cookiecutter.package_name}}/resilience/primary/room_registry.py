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
  its entry in a second script, with the until its lease script returned. The scripts are
  below (``WATCH``, ``UNWATCH``, ``LAPSED``).
- :class:`SqliteRoomRegistry`: the ``rooms`` table of the SQLite session file (its schema is
  the file's, store/_sqlite_db.py), written in the lease's own transaction (``watch_room``).

A store that cannot answer raises StoreUnavailableError.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

from ..store.file import Connection, SqliteDatabase
from ..store.redis import run_script

__all__ = [
    "LapsedRoom",
    "RedisRoomRegistry",
    "RoomRegistry",
    "SqliteRoomRegistry",
    "unwatch_room",
    "watch_room",
]

# -- Redis: KEYS 1 the sorted set, 2 the agent hash; one hash tag, one Cluster slot ----------

# Set a room's entry unless one as new or newer is there: a late write never undoes a newer
# one. ARGV: room, until_ms, agent name. 1 when set.
WATCH = """
local found = redis.call('ZSCORE', KEYS[1], ARGV[1])
if found and tonumber(found) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""

# Remove a room's entry if its until is still until_ms. ARGV: room, until_ms. 1 when removed.
UNWATCH = """
local found = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not found or tonumber(found) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# The entries whose until passed, oldest first. ARGV: limit.
# Reply: now_ms, then room, until_ms, agent name for each.
LAPSED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now),
                         'WITHSCORES', 'LIMIT', 0, ARGV[1])
local reply = {now}
for i = 1, #found, 2 do
  reply[#reply + 1] = found[i]
  reply[#reply + 1] = found[i + 1]
  reply[#reply + 1] = redis.call('HGET', KEYS[2], found[i]) or ''
end
return reply
"""


# -- SQLite: the ``rooms`` table, inside a transaction of ``SqliteDatabase`` ----------------


def watch_room(conn: Connection, room: str, agent: str, until: int) -> bool:
    """Set the room's entry unless one as new or newer is there; True when set."""
    cursor = conn.execute(
        "INSERT INTO rooms VALUES (?, ?, ?) ON CONFLICT (room) DO UPDATE SET "
        "agent = excluded.agent, until = excluded.until WHERE excluded.until > rooms.until",
        (room, agent, until),
    )
    return cursor.rowcount == 1


def unwatch_room(conn: Connection, room: str, until: int | None = None) -> bool:
    """Remove the room's entry (if its until is still ``until``, when given); True when
    removed."""
    if until is None:
        cursor = conn.execute("DELETE FROM rooms WHERE room = ?", (room,))
    else:
        cursor = conn.execute("DELETE FROM rooms WHERE room = ? AND until = ?", (room, until))
    return cursor.rowcount == 1


def _lapsed_rooms(conn: Connection, limit: int) -> tuple[int, list[sqlite3.Row]]:
    """(now, the entries whose until passed: room, agent, until, oldest first)."""
    now = conn.now_ms()
    rows = conn.execute(
        "SELECT room, agent, until FROM rooms WHERE until < ? ORDER BY until, room LIMIT ?",
        (now, limit),
    ).fetchall()
    return now, rows


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
        self._watch = client.register_script(WATCH)
        self._unwatch = client.register_script(UNWATCH)
        self._lapsed = client.register_script(LAPSED)

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
        now, rows = await self._db.read(_lapsed_rooms, limit)
        return [LapsedRoom(room, agent, until, (now - until) / 1000) for room, agent, until in rows]

    async def claim(self, room: LapsedRoom) -> bool:
        """See :meth:`RoomRegistry.claim`."""
        return await self._db.write(unwatch_room, room.room, room.until_ms)

    async def restore(self, room: LapsedRoom) -> None:
        """See :meth:`RoomRegistry.restore`."""
        await self._db.write(watch_room, room.room, room.agent_name, room.until_ms)

    async def aclose(self) -> None:
        if self._owns_db:
            self._db.close()
