"""Operator access to the SQLite session file: what the `sessions` commands run without Redis.

The same interface as ``RedisAdmin`` (admin.py): no cache and no write queue, every call goes
to the file, and one that cannot answer raises StoreUnavailableError in one line. Reads never
write (a missing file is not created: there is nothing stored yet); a record that cannot be
read is reported as ``Unreadable`` with its reason, never quarantined or changed. The
``SqliteStore`` uses one for its own listings and purges.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import _sqlite_ops as ops
from ._codec import F_WHO, RecordCodec, ms
from ._crypto import KeyRing
from ._keys import participant_hash, room_hash
from ._quarantine import QuarantinedRecord, QuarantineNote
from ._sqlite_db import SqliteDatabase
from ._validate import validate_names
from .admin import Inventory, Purged, Unreadable
from .base import (
    CorruptRecordError,
    InvalidInputError,
    MissingKeyError,
    SessionRecord,
    StoreError,
)

__all__ = ["SqliteAdmin"]

_QUARANTINE_KEY = re.compile(r"[0-9a-f]{32}:q[0-9a-f]{1,32}")


class SqliteAdmin:
    """Operator reads and deletes on the SQLite session file; see the module docstring."""

    def __init__(
        self,
        db: SqliteDatabase | str | os.PathLike[str],
        *,
        keyring: KeyRing | None = None,
        retention: float = 300.0,
    ) -> None:
        self.retention = retention
        self._codec = RecordCodec(keyring)
        self._owns_db = not isinstance(db, SqliteDatabase)
        if isinstance(db, SqliteDatabase):
            self._db: SqliteDatabase | None = db
        else:  # opened only if it exists: a read-only command creates nothing
            self._db = SqliteDatabase(db) if Path(db).expanduser().exists() else None

    async def inventory(self, room: str | None = None) -> Inventory:
        """Every live record (of one room), read-only: the readable and the unreadable ones."""
        if self._db is None:
            return Inventory()
        wanted = room_hash(room) if room is not None else None
        return await self._db.read(ops.live_records, wanted, after=self._sort)

    async def read(self, room: str, identity: str) -> SessionRecord | None:
        """One participant's record, or None; raises MissingKeyError / CorruptRecordError
        (with the reason) when it cannot be read, and changes nothing either way."""
        validate_names(room, identity)
        if self._db is None:
            return None
        found = await self._db.read(ops.load, participant_hash(room, identity))
        return self._codec.decode(room, identity, *found) if found is not None else None

    async def purge(self, room: str, identity: str | None = None) -> Purged:
        """Delete a participant's record and quarantined copies, or a whole room's (found by
        the room's hash, so records under a missing key go too)."""
        validate_names(room, identity or "")
        if self._db is None:
            return Purged(0, 0)
        pkey = participant_hash(room, identity) if identity is not None else None
        return Purged(*await self._db.write(ops.purge, pkey, room_hash(room)))

    async def quarantined(self, room: str | None = None) -> list[QuarantinedRecord]:
        """Every quarantined record (of one room), with its reason and expiry, oldest first."""
        if self._db is None:
            return []
        rows = await self._db.read(ops.quarantined, room_hash(room) if room else None)
        listed = []
        for row in rows:
            note = QuarantineNote.from_json(row["note"])
            owner = self._owner(row["pkey"].partition(":q")[0], row["who"])
            listed.append(
                QuarantinedRecord(
                    key=row["pkey"],
                    room=owner[0] if not isinstance(owner, Unreadable) else None,
                    participant=note.participant,
                    reason=note.reason,
                    quarantined_at=note.at or None,
                    expires_at=row["expires_at"] / 1000,
                )
            )
        return listed

    async def restore(self, key: str) -> SessionRecord | Unreadable:
        """Move a quarantined record back; what it reads as now. Refused (StoreError) while
        the participant has a live record again. The restored record keeps ``retention``."""
        key = key.strip()
        if not _QUARANTINE_KEY.fullmatch(key):
            raise InvalidInputError(
                f"{key!r} is not a quarantine key; `sessions quarantine` lists them "
                "(<participant hash>:q<stamp>)"
            )
        outcome = "missing"
        if self._db is not None:
            outcome = await self._db.write(ops.restore, key, ms(self.retention))
        if outcome == "missing" or self._db is None:
            raise InvalidInputError(f"no quarantined record {key} (expired or purged)")
        if outcome == "live":
            raise StoreError(
                "that participant has a live record again; restoring would overwrite it "
                "(purge the live one first with `sessions purge`, or leave it)"
            )
        pkey = key.partition(":q")[0]
        found = await self._db.read(ops.load, pkey)
        inventory = self._sort([(pkey, found)] if found is not None else [])
        if inventory.records:
            return inventory.records[0]
        return inventory.unreadable[0] if inventory.unreadable else Unreadable(pkey, None, "empty")

    async def aclose(self) -> None:
        """Close the file (when this admin opened it)."""
        if self._owns_db and self._db is not None:
            self._db.close()

    def _sort(self, found: list[tuple[str, ops.Stored]]) -> Inventory:
        """Decode stored records (in the database's thread): readable and unreadable."""
        inventory = Inventory()
        for pkey, (fields, items, segments) in found:
            owner = self._owner(pkey, fields.get(F_WHO))
            if isinstance(owner, Unreadable):
                inventory.unreadable.append(owner)
                continue
            try:
                inventory.records.append(self._codec.decode(*owner, fields, items, segments))
            except (MissingKeyError, CorruptRecordError) as exc:
                inventory.unreadable.append(Unreadable.of(pkey, owner[0], exc))
        return inventory

    def _owner(self, pkey: str, who: bytes | None) -> tuple[str, str] | Unreadable:
        """(room, identity) from a record's sealed ``who`` field, or why it cannot be read."""
        try:
            if not isinstance(who, bytes):
                raise CorruptRecordError("who: missing")
            return self._codec.open_who(pkey, who)
        except (MissingKeyError, CorruptRecordError) as exc:
            return Unreadable.of(pkey, None, exc)
