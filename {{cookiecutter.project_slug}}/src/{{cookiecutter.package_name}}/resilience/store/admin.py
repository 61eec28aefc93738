"""Operator access: what the `sessions` commands see of a store, and how it reports.

Every store has one as ``store.admin``, and ``open_admin`` makes one for a Redis URL without a
store: ``RedisAdmin`` (_redis_admin.py), ``SqliteAdmin`` (_sqlite_admin.py), ``MemoryAdmin``
(memory.py). Unlike the stores (made to keep calls alive), an admin has no cache and no write
queue: every call goes to the backend, and one that cannot answer raises StoreUnavailableError
in one line (URL secrets redacted). Reads never write: a record that cannot be read is
reported as ``Unreadable`` with its reason, never quarantined or changed.

    admin = open_admin(redis_url, encryption_keys=..., retention=300)
    inventory = await admin.inventory(room=None)   # records + unreadable ones
    await admin.purge(room, identity)              # live records and quarantined copies
    await admin.quarantined(); await admin.restore(key)

Moving a conversation (transfer.py) is the Redis and SQLite admins' (a memory store lives in
one process: there is nothing to move it to or from):

    record, stored = await admin.read_stored(room, identity)  # `sessions export`
    replaced = await admin.put(stored, ttl=300, replace=False)  # `sessions import`, atomic
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .base import InvalidInputError, MissingKeyError, SessionRecord, StoreError

if TYPE_CHECKING:
    from ._codec import RecordCodec

__all__ = ["Inventory", "Purged", "StoredRecord", "Unreadable"]


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored record an operator command could not read, left exactly as it was."""

    key: str  # its Redis hash tag, {prefix:<participant hash>}
    room: str | None  # None when even its owner cannot be read
    reason: str
    missing_key_id: str | None = None  # set when the reason is a key this worker lacks

    @classmethod
    def of(cls, key: str, room: str | None, exc: StoreError) -> Unreadable:
        missing = exc.key_id if isinstance(exc, MissingKeyError) else None
        return cls(key, room, str(exc), missing)

    @property
    def summary(self) -> str:
        """A short reason for grouping: ``key 'k2' missing`` or ``corrupt``."""
        return f"key {self.missing_key_id!r} missing" if self.missing_key_id else "corrupt"


@dataclass(frozen=True, slots=True)
class Inventory:
    """What a read-only scan found: readable records and those it could not read."""

    records: list[SessionRecord] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Purged:
    """What ``purge`` deleted, and the records it could not attribute to the room."""

    sessions: int
    quarantined: int
    unreadable: list[Unreadable] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One participant's record in the stored form of _codec.py (blobs sealed or not), with
    the entry ids a store keeps beside them: what export reads and import writes."""

    room: str
    identity: str
    fields: dict[str, bytes]
    items: list[tuple[str, bytes]]  # (entry id, blob), oldest first
    transcript: list[tuple[str, bytes]]

    @classmethod
    def read(
        cls, codec: RecordCodec, room: str, identity: str, found: tuple[Any, Any, Any]
    ) -> tuple[SessionRecord, StoredRecord]:
        """A record as a backend read it (fields, item blobs, segment blobs): decoded, and
        its blobs beside their entry ids."""
        fields, items, segments = found
        record = codec.decode(room, identity, fields, items, segments)
        return record, cls(
            room, identity, fields,
            list(zip(record.item_ids, items, strict=True)),
            list(zip((s["id"] for s in record.transcript), segments, strict=True)),
        )  # fmt: skip


def put_outcome(outcome: str) -> bool:
    """What a backend's ``put`` answered: True (replaced), False (written), or why it wrote
    nothing (InvalidInputError)."""
    if outcome == "exists":
        raise InvalidInputError(
            "this store already has a record for that participant in that room; "
            "pass --replace to overwrite it (nothing was written)"
        )
    if outcome == "leased":
        raise InvalidInputError(
            "that participant is in a call on this store now (their lease is held); "
            "import once they have left (nothing was written)"
        )
    return outcome == "replaced"
