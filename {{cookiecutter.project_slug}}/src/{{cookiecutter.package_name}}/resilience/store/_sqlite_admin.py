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
import sqlite3
from pathlib import Path
from typing import Any

from . import _sqlite_ops as ops
from ._codec import (
    F_ACTIVE,
    F_ITEM_BYTES,
    F_ITEMS_TRIMMED,
    F_JOINED,
    F_LEFT,
    F_RECONNECTS,
    F_REV,
    F_SEEN,
    F_SEGMENT_BYTES,
    F_SEGMENTS_TRIMMED,
    F_VERSION,
    F_WHO,
    RecordCodec,
    ms,
)
from ._crypto import KeyRing
from ._keys import participant_hash, room_hash, sqlite_participant_lease
from ._quarantine import QuarantinedRecord, QuarantineNote
from ._sqlite_db import Connection, SqliteDatabase
from ._sqlite_leases import check_fence
from ._validate import validate_names
from .admin import Inventory, Purged, StoredRecord, Unreadable, put_outcome
from .base import (
    CorruptRecordError,
    InvalidInputError,
    MissingKeyError,
    SessionRecord,
    StaleLeaseError,
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
        self._path = db
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

    async def read_stored(
        self, room: str, identity: str
    ) -> tuple[SessionRecord, StoredRecord] | None:
        """One participant's record and its stored form (``read``'s errors; read-only)."""
        validate_names(room, identity)
        if self._db is None:
            return None
        found = await self._db.read(ops.load, participant_hash(room, identity))
        if found is None:
            return None
        return StoredRecord.read(self._codec, room, identity, found)

    async def put(self, stored: StoredRecord, *, ttl: float, replace: bool = False) -> bool:
        """Write a whole record in one transaction, kept ``ttl`` seconds; True when it
        replaced one. Refused (InvalidInputError, nothing written) when the participant has a
        record and ``replace`` is false, and while their lease is live. Creates the file."""
        validate_names(stored.room, stored.identity)
        if self._db is None:
            assert not isinstance(self._path, SqliteDatabase)
            self._db = SqliteDatabase(self._path)  # DatabaseFileError when it cannot be
        pkey = participant_hash(stored.room, stored.identity)
        outcome = await self._db.write(_put, pkey, room_hash(stored.room), stored, ms(ttl), replace)
        return put_outcome(outcome)

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
        rows = await self._db.read(_quarantined, room_hash(room) if room else None)
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


# the stored fields kept as integers in their columns (_sqlite_ops.py reads them so)
_INTEGERS = {F_VERSION, F_JOINED, F_SEEN, F_RECONNECTS, F_LEFT, F_REV, F_ITEM_BYTES,
             F_SEGMENT_BYTES, F_ITEMS_TRIMMED, F_SEGMENTS_TRIMMED}  # fmt: skip


def _put(
    conn: Connection, pkey: str, room_key: str, stored: StoredRecord, ttl_ms: int, replace: bool
) -> str:
    """``put``'s transaction (kept beside its only user, as Redis's PUT script): 'written',
    'replaced', or 'exists' / 'leased' with nothing changed."""
    now = conn.now_ms()
    try:
        check_fence(conn, sqlite_participant_lease(pkey), None, now)
    except StaleLeaseError:
        return "leased"
    row = conn.execute("SELECT expires_at FROM records WHERE pkey = ?", (pkey,)).fetchone()
    found = row is not None and row["expires_at"] > now
    if found and not replace:
        return "exists"
    conn.execute("DELETE FROM entries WHERE pkey = ?", (pkey,))
    conn.execute("DELETE FROM records WHERE pkey = ?", (pkey,))
    columns: dict[str, Any] = {
        "pkey": pkey, "room_hash": room_key, "expires_at": now + ttl_ms,
        "n_items": len(stored.items), "n_segments": len(stored.transcript),
    }  # fmt: skip
    for name, value in stored.fields.items():
        column = "left_at" if name == F_LEFT else name  # LEFT is an SQL word
        columns[column] = int(value) if name in _INTEGERS else value
    if F_ACTIVE in stored.fields:
        columns[F_ACTIVE] = stored.fields[F_ACTIVE].decode()
    marks = ", ".join("?" * len(columns))
    conn.execute(
        f"INSERT INTO records ({', '.join(columns)}) VALUES ({marks})", [*columns.values()]
    )
    conn.executemany(
        "INSERT INTO entries (pkey, list, eid, blob) VALUES (?, ?, ?, ?)",
        [(pkey, ops.ITEMS, eid, blob) for eid, blob in stored.items]
        + [(pkey, ops.SEGMENTS, eid, blob) for eid, blob in stored.transcript],
    )
    return "replaced" if found else "written"


def _quarantined(conn: Connection, rhash: str | None) -> list[sqlite3.Row]:
    """Quarantined copies (of one room hash): key, note, who and expiry, oldest first."""
    query = "SELECT pkey, note, who, expires_at FROM records WHERE note IS NOT NULL"
    query += " AND expires_at > ?" + (" AND room_hash = ?" if rhash is not None else "")
    args = (conn.now_ms(), rhash) if rhash is not None else (conn.now_ms(),)
    return conn.execute(query + " ORDER BY expires_at", args).fetchall()
