"""Participant session records: a SQLite file by default (every process on one host),
Redis for many hosts, in memory for tests and `simulate`.

The worker calls ``open_store(...)`` once and talks to the returned ``SessionStore``:

    store = open_store(redis_url=settings.redis_url, db_path=settings.session_db_path)
    outcome = await store.join(room, identity, session_id)   # NEW / RETURNING / DUPLICATE
    await store.append(room, identity, items=[...], transcript=[...])
    await store.leave(room, identity, session_id)            # retention starts
    await store.aclose()

Welcome a participant back exactly when ``outcome.kind is JoinKind.RETURNING``.
Operator commands use ``open_admin(...)`` (or a store's ``admin``) instead (admin.py):
straight to the backend, read-only unless they delete or import.

The modules: ``base`` (the protocol, its records, results and errors), ``leases`` (the lease
rules and tables), ``fenced`` (the primary's writer), one per backend (``file``: SQLite,
``redis``, ``memory``), ``admin`` (operator access), ``transfer`` (a record as a file, to
move it: `sessions export` / `import`), ``stats`` (`sessions stats`), ``redis_url``
(``REDIS_URL``'s forms); the ``_``-prefixed ones are their internals.
"""

from __future__ import annotations

from typing import Any

from ._crypto import KeyRing
from ._keys import identity_hash
from ._quarantine import QuarantinedRecord
from .admin import Inventory, Purged, StoredRecord, Unreadable
from .base import (
    AppendResult,
    CorruptRecordError,
    DecryptionError,
    GeminiHandle,
    InvalidInputError,
    JoinKind,
    JoinOutcome,
    KeyRingError,
    LeaseHeldError,
    LeaveInfo,
    MissingKeyError,
    RetentionPolicy,
    SessionRecord,
    SessionStore,
    StaleLeaseError,
    StorageLimits,
    StoreError,
    StoreUnavailableError,
    engaged_retention,
)
from .fenced import FencedStore
from .file import DatabaseFileError, SqliteAdmin, SqliteStore
from .memory import MemoryStore
from .redis import RedisAdmin, RedisStore, connect, open_admin

__all__ = [
    "MEMORY",
    "AppendResult",
    "CorruptRecordError",
    "DatabaseFileError",
    "DecryptionError",
    "FencedStore",
    "GeminiHandle",
    "InvalidInputError",
    "Inventory",
    "JoinKind",
    "JoinOutcome",
    "KeyRing",
    "KeyRingError",
    "LeaseHeldError",
    "LeaveInfo",
    "MemoryStore",
    "MissingKeyError",
    "Purged",
    "QuarantinedRecord",
    "RedisAdmin",
    "RedisStore",
    "RetentionPolicy",
    "SessionRecord",
    "SessionStore",
    "SqliteAdmin",
    "SqliteStore",
    "StaleLeaseError",
    "StorageLimits",
    "StoreError",
    "StoreUnavailableError",
    "StoredRecord",
    "Unreadable",
    "engaged_retention",
    "identity_hash",
    "open_admin",
    "open_store",
]


# SESSION_DB_PATH for records kept in the process only (SQLite's own name for it)
MEMORY = ":memory:"


def open_store(
    *,
    redis_url: str | None = None,
    db_path: str | None = None,
    redis_cluster: bool = False,
    prefix: str = "lkagent",
    retention: float = 300.0,
    active_ttl: float = 3600.0,
    encryption_keys: str | None = None,
    quarantine: float | None = None,
    retention_policy: RetentionPolicy | None = None,
    max_records: int = 10_000,
    max_queued_writes: int = 10_000,
    limits: StorageLimits | None = None,
) -> SessionStore:
    """Build the store the settings ask for; raises StoreError subclasses on bad settings.

    redis_url: ``REDIS_URL``; its forms are in ``redis_url``. When unset, the store is:
    db_path: ``SESSION_DB_PATH``, the SQLite file every process on this host shares
        (``SqliteStore``; DatabaseFileError when it cannot be used); None or ":memory:" keeps
        records in this process only (``MemoryStore``: tests, `simulate`).
    redis_cluster: ``REDIS_CLUSTER`` (or use a ``redis+cluster://`` URL).
    prefix: first part of every Redis key and of the events channel ``<prefix>:events``.
    retention: seconds a record outlives its participant's leave (a policy may change it).
    active_ttl: seconds an active record outlives its last write (a crashed worker's record
        still expires; a participant who returns within it is welcomed back).
    encryption_keys: ``SESSION_ENCRYPTION_KEYS``, ``keyid:base64key[,...]``, newest first.
    quarantine: ``SESSION_QUARANTINE_S``, seconds an unreadable record is kept aside
        (None: as long as ``retention``).
    max_records: the memory and SQLite stores' bound (with Redis: the cached copies kept for
        outages).
    max_queued_writes: Redis and SQLite: writes kept while the store cannot answer before
        dropping (ERROR).
    limits: what one participant may store (``StorageLimits``; None: its defaults).
    """
    if retention <= 0 or active_ttl <= 0 or (quarantine is not None and quarantine <= 0):
        raise InvalidInputError("retention, active_ttl and quarantine must be positive seconds")
    # what every backend is given alike
    common: dict[str, Any] = {
        "retention": retention,
        "active_ttl": active_ttl,
        "keyring": KeyRing.parse(encryption_keys) if encryption_keys else None,
        "retention_policy": retention_policy,
        "quarantine_ttl": quarantine,
        "limits": limits,
    }
    if not redis_url and db_path and db_path != MEMORY:
        return SqliteStore(
            db_path, max_records=max_records, max_queued_writes=max_queued_writes, **common
        )
    if not redis_url:
        return MemoryStore(max_records=max_records, **common)
    return RedisStore(
        connect(redis_url, cluster=redis_cluster),
        prefix=prefix,
        cache_records=min(max_records, 1000),
        max_queued_writes=max_queued_writes,
        **common,
    )
