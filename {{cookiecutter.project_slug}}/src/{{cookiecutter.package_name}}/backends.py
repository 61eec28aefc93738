"""Where what outlives a job is kept: the session store, the room leases and the watch list of
held rooms, chosen from the same settings in one place.

``REDIS_URL`` set: all three in Redis, shared by every worker on every host. Otherwise the
SQLite file ``SESSION_DB_PATH``, shared by every process on this host; ``:memory:`` keeps the
records and the leases in this process (tests, ``simulate``), where nothing outlives it and
no watch list is kept. A job gets a :class:`Backends` and never pairs a store with a lease
of another kind: that pairing is what production runs, so it is what the tests run.
"""

from __future__ import annotations

from .resilience.primary.room_lease import (
    LocalRoomLease,
    RedisRoomLease,
    RoomLease,
    SqliteRoomLease,
)
from .resilience.primary.room_registry import RedisRoomRegistry, RoomRegistry, SqliteRoomRegistry
from .resilience.store import MEMORY, SessionStore, StorageLimits, open_store
from .resilience.store.leases import LocalLeaseTable
from .resilience.store.memory import MemoryStore
from .resilience.store.redis import connect
from .settings import Settings

__all__ = ["Backends", "in_memory", "open_backends", "open_room_registry", "open_session_store"]


class Backends:
    """The store, and the room leases and watch list that go with it (see the module)."""

    def __init__(self, settings: Settings, store: SessionStore) -> None:
        self.settings = settings
        self.store = store
        self.in_memory = in_memory(settings)
        # an in-memory store's room leases sit in its own lease table, by its participant leases
        self._local_leases = store.leases if isinstance(store, MemoryStore) else LocalLeaseTable()

    def room_lease(self, room: str, owner: str) -> RoomLease:
        """The lease that makes one worker primary for ``room``, where the store is."""
        settings = self.settings
        ttl, agent = settings.room_lease_s, settings.agent_name
        if settings.redis_url:
            client = connect(settings.redis_url, cluster=settings.redis_cluster)
            return RedisRoomLease(
                client, room, owner, ttl=ttl, prefix=settings.redis_prefix, watch_as=agent
            )
        if not self.in_memory:
            return SqliteRoomLease(settings.session_db_path, room, owner, ttl=ttl, watch_as=agent)
        return LocalRoomLease(room, owner, ttl=ttl, table=self._local_leases)

    async def aclose(self) -> None:
        await self.store.aclose()


def in_memory(settings: Settings) -> bool:
    """Whether the settings keep records and leases in this process only (nothing outlives
    it: no watch list, no re-dispatch)."""
    return settings.session_db_path == MEMORY and not settings.redis_url


def open_backends(settings: Settings) -> Backends:
    """The store the settings choose, with its room leases; raises StoreError on bad ones."""
    return Backends(settings, open_session_store(settings))


def open_session_store(settings: Settings) -> SessionStore:
    """The store alone (operator commands, tests reading what a job left): Redis when
    REDIS_URL is set, else the SQLite file SESSION_DB_PATH (":memory:": this process)."""
    return open_store(
        redis_url=settings.redis_url,
        db_path=settings.session_db_path,
        redis_cluster=settings.redis_cluster,
        prefix=settings.redis_prefix,
        retention=settings.session_retention_s,
        retention_policy=settings.retention_tiers(),  # SESSION_RETENTION_TIERS
        encryption_keys=(
            settings.session_encryption_keys.get_secret_value()
            if settings.session_encryption_keys
            else None
        ),
        max_records=settings.session_max_records,
        limits=StorageLimits(
            max_entry_bytes=settings.session_max_entry_bytes,
            max_entries=settings.session_max_entries,
            max_list_bytes=settings.session_max_history_bytes,
        ),
        quarantine=settings.session_quarantine_s,
    )


def open_room_registry(settings: Settings) -> RoomRegistry:
    """The watch list of held rooms, where the room leases are: Redis or the SQLite file
    (an in-memory store has none: nothing outlives its process)."""
    if settings.redis_url:
        client = connect(settings.redis_url, cluster=settings.redis_cluster)
        return RedisRoomRegistry(client, prefix=settings.redis_prefix)
    return SqliteRoomRegistry(settings.session_db_path)
