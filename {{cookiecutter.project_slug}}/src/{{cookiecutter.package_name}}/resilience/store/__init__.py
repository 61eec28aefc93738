"""Participant session records: in memory by default, Redis for many workers.

The worker calls ``open_store(...)`` once and talks to the returned ``SessionStore``:

    store = open_store(redis_url=settings.redis_url, encryption_keys=settings.keys)
    outcome = await store.join(room, identity, session_id)   # NEW / RETURNING / DUPLICATE
    await store.append(room, identity, items=[...], transcript=[...])
    await store.leave(room, identity, session_id)            # retention starts
    await store.aclose()

Welcome a participant back exactly when ``outcome.kind is JoinKind.RETURNING``.
"""

from __future__ import annotations

from .base import (
    AppendResult,
    CorruptRecordError,
    DecryptionError,
    InvalidInputError,
    JoinKind,
    JoinOutcome,
    KeyRingError,
    LeaseHeldError,
    LeaveInfo,
    RetentionPolicy,
    SessionStore,
    StaleLeaseError,
    StoreError,
    StoreUnavailableError,
    engaged_retention,
)
from .crypto import KeyRing
from .memory import MemoryStore
from .records import GeminiHandle, SessionRecord, identity_hash
from .redis_client import connect
from .redis_store import RedisStore

__all__ = [
    "AppendResult",
    "CorruptRecordError",
    "DecryptionError",
    "GeminiHandle",
    "InvalidInputError",
    "JoinKind",
    "JoinOutcome",
    "KeyRing",
    "KeyRingError",
    "LeaseHeldError",
    "LeaveInfo",
    "MemoryStore",
    "RedisStore",
    "RetentionPolicy",
    "SessionRecord",
    "SessionStore",
    "StaleLeaseError",
    "StoreError",
    "StoreUnavailableError",
    "engaged_retention",
    "identity_hash",
    "open_store",
]


def open_store(
    *,
    redis_url: str | None = None,
    redis_cluster: bool = False,
    prefix: str = "lkagent",
    retention: float = 300.0,
    active_ttl: float = 3600.0,
    encryption_keys: str | None = None,
    retention_policy: RetentionPolicy | None = None,
    max_records: int = 10_000,
    max_queued_writes: int = 10_000,
) -> SessionStore:
    """Build the store the settings ask for; raises StoreError subclasses on bad settings.

    redis_url: ``REDIS_URL`` (None or "" = in-memory); forms in ``redis_client``.
    redis_cluster: ``REDIS_CLUSTER`` (or use a ``redis+cluster://`` URL).
    prefix: first part of every Redis key and of the events channel ``<prefix>:events``.
    retention: seconds a record outlives its participant's leave (a policy may change it).
    active_ttl: seconds an active record outlives its last write (a crashed worker's record
        still expires; a participant who returns within it is welcomed back).
    encryption_keys: ``SESSION_ENCRYPTION_KEYS``, ``keyid:base64key[,...]``, newest first.
    max_records: memory store bound (with Redis: the cached copies kept for outages).
    max_queued_writes: Redis only: writes kept while Redis is down before dropping (ERROR).
    """
    if retention <= 0 or active_ttl <= 0:
        raise InvalidInputError("retention and active_ttl must be positive seconds")
    keyring = KeyRing.parse(encryption_keys) if encryption_keys else None
    if not redis_url:
        return MemoryStore(
            retention=retention,
            active_ttl=active_ttl,
            max_records=max_records,
            keyring=keyring,
            retention_policy=retention_policy,
        )
    return RedisStore(
        connect(redis_url, cluster=redis_cluster),
        prefix=prefix,
        retention=retention,
        active_ttl=active_ttl,
        keyring=keyring,
        retention_policy=retention_policy,
        cache_records=min(max_records, 1000),
        max_queued_writes=max_queued_writes,
    )
