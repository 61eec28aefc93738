"""The session store contract: the protocol both stores implement, its results and errors.

A record is kept per (room, participant identity). Every operation is async and safe to repeat:
joins are keyed by session id, appends are deduplicated by item id, leaves by session id. That is
what lets the worker call them from event handlers that may fire twice or race.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .records import SessionRecord

__all__ = [
    "EVENTS_CHANNEL_SUFFIX",
    "AppendResult",
    "CorruptRecordError",
    "DecryptionError",
    "InvalidInputError",
    "JoinKind",
    "JoinOutcome",
    "KeyRingError",
    "LeaseHeldError",
    "LeaveInfo",
    "RetentionPolicy",
    "SessionStore",
    "StaleLeaseError",
    "StoreError",
    "StoreUnavailableError",
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
    """A sealed blob could not be opened: unknown key id, or it was altered or moved."""


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
    """Result of ``SessionStore.join``; welcome back exactly when ``kind`` is RETURNING."""

    kind: JoinKind
    record: SessionRecord


@dataclass(frozen=True, slots=True)
class AppendResult:
    """How many of the given items and transcript segments were new (the rest were repeats)."""

    items_added: int
    transcript_added: int


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
    """Participant session records. ``MemoryStore`` and ``RedisStore`` implement it.

    Timestamps are epoch seconds from the store's clock (Redis ``TIME`` for Redis). Writes take
    an optional ``fence``: the token from ``acquire_lease``. A fenced write is refused with
    ``StaleLeaseError`` unless that token is the participant's live lease; an unfenced write is
    refused while anyone holds a lease. Without leases, writes need no token.

    Events (participant returned, session ended, and whatever ``publish_event`` sends) go to the
    pub/sub channel ``<prefix>:events`` as JSON objects with ``type``, ``room``, ``participant``
    (a short hash of the identity, never the identity itself) and ``at`` (epoch seconds).
    """

    async def join(
        self, room: str, identity: str, session_id: str, *, fence: int | None = None
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
        fence: int | None = None,
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
        fence: int | None = None,
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
        fence: int | None = None,
    ) -> None:
        """Replace the language and/or metadata (``None`` leaves that field as it is)."""
        ...

    async def leave(
        self, room: str, identity: str, session_id: str, *, fence: int | None = None
    ) -> None:
        """End ``session_id``; the record is kept for the retention period, then deleted."""
        ...

    async def load(self, room: str, identity: str) -> SessionRecord | None:
        """The record, or None when there is none (never joined, expired, purged)."""
        ...

    async def list_records(self, room: str | None = None) -> list[SessionRecord]:
        """Every live record (of one room). An operator tool: it scans the whole store."""
        ...

    async def purge(self, room: str, identity: str | None = None) -> int:
        """Delete one participant's record, or a whole room's; returns how many were deleted."""
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
