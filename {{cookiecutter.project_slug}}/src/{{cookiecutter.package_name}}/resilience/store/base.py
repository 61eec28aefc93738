"""The session store contract: the protocol both stores implement, its results and errors.

A record is kept per (room, participant identity). Every operation is async and safe to repeat:
joins are keyed by session id, appends are deduplicated by item id, leaves by session id. That is
what lets the worker call them from event handlers that may fire twice or race.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

__all__ = [
    "EVENTS_CHANNEL_SUFFIX",
    "SCHEMA_VERSION",
    "TRIMMED_MARK",
    "AppendResult",
    "CorruptRecordError",
    "DecryptionError",
    "Fence",
    "GeminiHandle",
    "InvalidInputError",
    "JoinKind",
    "JoinOutcome",
    "KeyRingError",
    "LeaseHeldError",
    "LeaveInfo",
    "MissingKeyError",
    "RetentionPolicy",
    "SessionRecord",
    "SessionStore",
    "StaleLeaseError",
    "StorageLimits",
    "StoreError",
    "StoreUnavailableError",
    "engaged_retention",
    "resolve_fence",
    "retention_for",
]

# Operators subscribe to f"{prefix}:events" (prefix defaults to "lkagent"); see SessionStore.
EVENTS_CHANNEL_SUFFIX = ":events"


class StoreError(Exception):
    """Base class of every error the session store raises on purpose."""


class InvalidInputError(StoreError, ValueError):
    """The caller passed something the store cannot keep (not JSON data, an item without id)."""


class KeyRingError(StoreError, ValueError):
    """SESSION_ENCRYPTION_KEYS is malformed; the message says which entry and why."""


class DecryptionError(StoreError):
    """A sealed blob is proven bad: malformed, altered, or moved from another owner or field."""


class MissingKeyError(StoreError):
    """Data sealed under a key id this worker's key ring lacks (``key_id`` names it).

    Not corruption: stores leave such a record where it is, never quarantined or overwritten,
    and adding the key to SESSION_ENCRYPTION_KEYS makes it readable again.
    """

    def __init__(self, key_id: str, *, ring_configured: bool = True) -> None:
        self.key_id = key_id
        lacking = (
            "which SESSION_ENCRYPTION_KEYS lacks"
            if ring_configured
            else "but SESSION_ENCRYPTION_KEYS is not set"
        )
        super().__init__(
            f"record sealed under key id {key_id!r}, {lacking}; add that key to "
            "SESSION_ENCRYPTION_KEYS to read it (the record is left as it is)"
        )


class CorruptRecordError(StoreError):
    """A stored record cannot be read; the store quarantines it and starts the participant fresh."""


class StaleLeaseError(StoreError):
    """A write carried a fencing token that is no longer the participant's current lease."""


class LeaseHeldError(StoreError):
    """Another owner holds the participant's lease and it has not expired."""

    def __init__(self, message: str, *, owner: str, expires_in: float) -> None:
        super().__init__(message)
        self.owner = owner
        self.expires_in = expires_in


class StoreUnavailableError(StoreError):
    """The backing service is down and the operation cannot be answered from memory (leases)."""


# the stored form's version; a record of a newer one is not read (see _codec.py)
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class GeminiHandle:
    """A Gemini Live resumption handle, the conversation item ids the server holds, and when."""

    handle: str
    covered_item_ids: tuple[str, ...]
    issued_at: float


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One participant's session in one room, as the store last saw it.

    Timestamps are epoch seconds from the store's clock. ``active_session`` is the session id
    of the last join that has not left yet (None after leave).
    """

    room: str
    identity: str
    schema_version: int
    joined_at: float
    last_seen: float
    reconnect_count: int
    active_session: str | None
    left_at: float | None = None
    language: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    items: tuple[dict[str, Any], ...] = ()
    transcript: tuple[dict[str, Any], ...] = ()
    gemini: GeminiHandle | None = None
    items_trimmed: int = 0
    transcript_trimmed: int = 0

    @classmethod
    def blank(cls, room: str, identity: str) -> SessionRecord:
        """A participant's record before anything is known of them."""
        now = time.time()
        return cls(room, identity, SCHEMA_VERSION, now, now, 0, None)

    @property
    def item_ids(self) -> list[str]:
        """Conversation item ids in order."""
        return [item["id"] for item in self.items]


# what ends a text cut to fit StorageLimits.max_entry_bytes
TRIMMED_MARK = " [trimmed]"


@dataclass(frozen=True, slots=True)
class StorageLimits:
    """How much one participant may store, so no participant can fill a shared store.

    - An entry (conversation item or transcript segment) over ``max_entry_bytes`` of JSON keeps
      the start of its longest texts, each cut one ending in ``TRIMMED_MARK`` and the entry
      marked ``"trimmed_bytes": n``.
    - Each list (items, transcript) keeps at most ``max_entries`` entries and
      ``max_list_bytes`` bytes as stored: beyond that its oldest entries are dropped and
      counted in the record (``items_trimmed`` / ``transcript_trimmed``); the newest entry is
      always kept.
    """

    max_entry_bytes: int = 64 * 1024
    max_entries: int = 5000
    max_list_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.max_entry_bytes, self.max_entries, self.max_list_bytes) < 1:
            raise InvalidInputError("storage limits must be positive")
        if self.max_entry_bytes < 1024:
            raise InvalidInputError("max_entry_bytes must be at least 1024")


class JoinKind(enum.StrEnum):
    """What a join found: nothing, a record inside retention, or this very session again."""

    NEW = "new"
    RETURNING = "returning"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class JoinOutcome:
    """Result of ``SessionStore.join``; welcome back exactly when ``kind`` is RETURNING.

    ``settled`` is set when the store could not reach its backend and answered from what this
    process knows (a participant it has not seen looks NEW): it resolves to the backend's own
    answer once the queued join lands there, or raises what refused it.
    """

    kind: JoinKind
    record: SessionRecord
    settled: asyncio.Future[JoinOutcome] | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """How many of the given items and transcript segments were new (the rest were repeats).

    ``merged``: the write's fencing token was stale (another worker took the participant over),
    so its new items were merged into the record, after what the newer writer had stored.
    """

    items_added: int
    transcript_added: int
    merged: bool = False


@dataclass(frozen=True, slots=True)
class LeaveInfo:
    """What a retention policy sees when a participant leaves."""

    room: str
    identity: str
    item_count: int
    transcript_count: int
    reconnect_count: int
    joined_at: float
    left_at: float


Fence = int | Callable[[], Awaitable[int]] | None
"""A write's fencing token: the token itself, or a function giving the current one when the
write is sent (so a write queued during an outage carries the lease held when it lands)."""


async def resolve_fence(fence: Fence, *, stale_ok: bool = False) -> int | None:
    """The token a fence stands for now.

    With ``stale_ok`` a writer that lost its lease gets 0, a token older than any lease: the
    store merges an append carrying it instead of refusing it.
    """
    if not callable(fence):
        return fence
    try:
        return await fence()
    except StaleLeaseError:
        if stale_ok:
            return 0
        raise


RetentionPolicy = Callable[[LeaveInfo], float]
"""Returns the retention in seconds for a record whose participant just left."""


def engaged_retention(
    base: float = 300.0, engaged: float = 1800.0, min_items: int = 20
) -> RetentionPolicy:
    """Keep engaged users (at least ``min_items`` conversation items) ``engaged`` seconds."""

    def policy(info: LeaveInfo) -> float:
        return engaged if info.item_count >= min_items else base

    return policy


def retention_for(policy: RetentionPolicy | None, default: float, info: LeaveInfo) -> float:
    """Ask the policy (if any) how long to keep a record; a failing policy keeps the default."""
    if policy is None:
        return default
    try:
        seconds = float(policy(info))
    except Exception:
        logger.exception("retention policy failed; using the default retention")
        return default
    return seconds if seconds > 0 else default


@runtime_checkable
class SessionStore(Protocol):
    """Participant session records: what the worker calls. ``SqliteStore`` (file.py, the
    default), ``RedisStore`` (redis.py, many hosts) and ``MemoryStore`` (memory.py: tests,
    ``simulate``) implement it; ``FencedStore`` (fenced.py) wraps one for the room's primary.

    Timestamps are epoch seconds from the store's clock (Redis ``TIME`` for Redis). Writes take
    an optional ``fence``: the token from ``acquire_lease``, or a function returning it when
    the write is sent (``Fence``). The rules are in leases.py: a write carrying the newest
    token is accepted while its lease lives and after it lapsed; an older token is refused
    with ``StaleLeaseError``; an unfenced write is refused while anyone holds a live lease.
    ``append`` is the exception: conversation entries are append-only with unique ids, so a
    stale writer's new entries are merged after the newer writer's (``AppendResult.merged``),
    never dropped. Without leases, writes need no token.

    Beyond this protocol each store has (not needed by the worker, so not part of it):

    - ``admin``: operator access without cache or queue (``inventory``, ``purge``,
      ``quarantined``; admin.py), what the `sessions` commands use through ``open_admin``;
    - ``leases``: the store's lease table (leases.py), where the room lease can live too;
    - ``events`` / ``subscribe_events()``: the events channel. Events (participant returned,
      session ended, and whatever ``events.publish`` sends) are JSON objects with ``type``,
      ``room``, ``participant`` (a short hash of the identity, never the identity) and ``at``
      (epoch seconds); Redis publishes them on ``<prefix>:events``, the other stores to
      subscribers in their own process.
    """

    async def join(
        self,
        room: str,
        identity: str,
        session_id: str,
        *,
        fence: Fence = None,
        transcript_tail: int | None = None,
    ) -> JoinOutcome:
        """Atomically create, resume (reconnect_count + 1) or recognise a repeated join.

        ``transcript_tail``: the record returned holds only the newest that many transcript
        segments (the store keeps them all; ``load`` returns them all).
        """
        ...

    async def append(
        self,
        room: str,
        identity: str,
        items: Sequence[Mapping[str, Any]] = (),
        transcript: Sequence[Mapping[str, Any]] = (),
        *,
        fence: Fence = None,
        compact_through: str | None = None,
    ) -> AppendResult:
        """Add conversation items / transcript segments not seen before (by ``id``), in order.

        ``compact_through`` (an item id; a summary's ``covers``): in the same atomic step, drop
        the stored items from the oldest through that one, counted in ``items_trimmed`` as
        storage limits count theirs; their ids stay seen, so a late re-append of one is
        ignored. Nothing is dropped when that item is not stored (already dropped, trimmed,
        never written) or the write's fence is stale. Transcript segments are never dropped.
        """
        ...

    async def set_gemini_handle(
        self,
        room: str,
        identity: str,
        handle: str,
        covered_item_ids: Sequence[str],
        *,
        fence: Fence = None,
    ) -> None:
        """Remember the latest Gemini resumption handle and the item ids the server has."""
        ...

    async def update_profile(
        self,
        room: str,
        identity: str,
        *,
        language: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        fence: Fence = None,
    ) -> None:
        """Replace the language and/or metadata (``None`` leaves that field as it is)."""
        ...

    async def leave(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None
    ) -> None:
        """End ``session_id``; the record is kept for the retention period, then deleted."""
        ...

    async def load(self, room: str, identity: str) -> SessionRecord | None:
        """The record, or None when there is none (never joined, expired, purged).

        A corrupt record is quarantined (None); one sealed under a key this worker lacks
        raises MissingKeyError and stays where it is (it is not corrupt).
        """
        ...

    async def acquire_lease(
        self, room: str, identity: str, owner: str, ttl: float, *, force: bool = False
    ) -> int:
        """Take or renew the participant's lease; returns its fencing token (ever increasing).

        Raises LeaseHeldError while another owner holds it, unless ``force`` (take over: the
        old holder's writes are refused from now on); StoreUnavailableError while the
        backend cannot answer (a lease nobody else can see would defeat its purpose).
        """
        ...

    async def aclose(self) -> None:
        """Flush what can be flushed and release connections."""
        ...
