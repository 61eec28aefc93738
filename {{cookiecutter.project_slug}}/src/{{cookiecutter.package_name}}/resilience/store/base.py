"""The session store contract: the protocol both stores implement, its results and errors.

A record is kept per (room, participant identity). Every operation is async and safe to repeat:
joins are keyed by session id, appends are deduplicated by item id, leaves by session id. That is
what lets the worker call them from event handlers that may fire twice or race.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .records import SessionRecord

__all__ = [
    "EVENTS_CHANNEL_SUFFIX",
    "AppendResult",
    "Fence",
    "CorruptRecordError",
    "DecryptionError",
    "InvalidInputError",
    "JoinKind",
    "JoinOutcome",
    "KeyRingError",
    "LeaseHeldError",
    "LeaveInfo",
    "MissingKeyError",
    "RetentionPolicy",
    "SessionStore",
    "StaleLeaseError",
    "StoreError",
    "StoreUnavailableError",
    "resolve_fence",
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


@runtime_checkable
class SessionStore(Protocol):
    """Participant session records. ``SqliteStore`` (the default), ``RedisStore`` (many hosts)
    and ``MemoryStore`` (tests, ``simulate``) implement it.

    Timestamps are epoch seconds from the store's clock (Redis ``TIME`` for Redis). Writes take
    an optional ``fence``: the token from ``acquire_lease``, or a function returning it when
    the write is sent (``Fence``). The rules are in leases.py: a write carrying the newest
    token is accepted while its lease lives and after it lapsed; an older token is refused
    with ``StaleLeaseError``; an unfenced write is refused while anyone holds a live lease.
    ``append`` is the exception: conversation entries are append-only with unique ids, so a
    stale writer's new entries are merged after the newer writer's (``AppendResult.merged``),
    never dropped. Without leases, writes need no token.

    Events (participant returned, session ended, and whatever ``publish_event`` sends) go to the
    pub/sub channel ``<prefix>:events`` as JSON objects with ``type``, ``room``, ``participant``
    (a short hash of the identity, never the identity itself) and ``at`` (epoch seconds).
    """

    async def join(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None
    ) -> JoinOutcome:
        """Atomically create, resume (reconnect_count + 1) or recognise a repeated join."""
        ...

    async def append(
        self,
        room: str,
        identity: str,
        items: Sequence[Mapping[str, Any]] = (),
        transcript: Sequence[Mapping[str, Any]] = (),
        *,
        fence: Fence = None,
    ) -> AppendResult:
        """Add conversation items / transcript segments not seen before (by ``id``), in order."""
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

    async def list_records(self, room: str | None = None) -> list[SessionRecord]:
        """Every readable live record (of one room); read-only, unreadable ones are skipped.

        An operator tool: it scans the whole store (Redis: straight from Redis, raising
        StoreUnavailableError when it cannot answer).
        """
        ...

    async def purge(self, room: str, identity: str | None = None) -> int:
        """Delete one participant's record, or a whole room's, with their quarantined copies;
        returns how many live records were deleted (Redis: StoreUnavailableError when down)."""
        ...

    async def acquire_lease(
        self, room: str, identity: str, owner: str, ttl: float, *, force: bool = False
    ) -> int:
        """Take or renew the participant's lease; returns its fencing token (ever increasing).

        Raises LeaseHeldError while another owner holds it, unless ``force`` (take over: the
        old holder's writes are refused from now on).
        """
        ...

    async def release_lease(self, room: str, identity: str, owner: str, token: int) -> bool:
        """Give the lease up if ``owner``/``token`` still hold it; True when released."""
        ...

    async def publish_event(self, event_type: str, room: str, identity: str, **fields: Any) -> None:
        """Send an event to every subscriber of the events channel (best effort)."""
        ...

    async def aclose(self) -> None:
        """Flush what can be flushed and release connections."""
        ...


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
