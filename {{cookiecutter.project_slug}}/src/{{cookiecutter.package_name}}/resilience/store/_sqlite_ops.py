"""The SQLite store's record transactions: what _scripts.py is to the Redis store.

Each function runs inside one transaction that ``SqliteDatabase`` opened (``BEGIN IMMEDIATE``
for writes), so each is atomic across every process sharing the file; a StoreError it raises
rolls the whole transaction back. The tables are in _sqlite_db.SCHEMA: a record is one
``records`` row holding the stored fields of _codec.py, its items and segments are
``entries`` rows in insertion order. Times are the host's wall clock in integer milliseconds
(``Connection.now_ms``: the store's clock, as Redis ``TIME`` is the Redis store's). Writes are
fenced by the participant's lease in the same transaction (_sqlite_leases.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._codec import (
    F_ACTIVE,
    F_GEMINI,
    F_GEMINI_AT,
    F_ITEM_BYTES,
    F_ITEMS_TRIMMED,
    F_JOINED,
    F_LANG,
    F_LEFT,
    F_META,
    F_RECONNECTS,
    F_REV,
    F_SEEN,
    F_SEGMENT_BYTES,
    F_SEGMENTS_TRIMMED,
    F_VERSION,
    F_WHO,
    Framed,
)
from ._keys import sqlite_participant_lease as participant_lease
from ._sqlite_db import Connection
from ._sqlite_leases import check_fence
from .base import SCHEMA_VERSION, CorruptRecordError, LeaveInfo, StaleLeaseError
from .leases import LEASE_MEMORY_S

Stored = tuple[dict[str, bytes], Framed, Framed]
Entries = Sequence[tuple[str, bytes]]  # (id, sealed blob)

ITEMS, SEGMENTS = 0, 1
_FIELDS = (F_VERSION, F_JOINED, F_SEEN, F_RECONNECTS, F_ACTIVE, F_LEFT, F_REV, F_WHO, F_LANG,
           F_META, F_GEMINI, F_GEMINI_AT, F_ITEM_BYTES, F_SEGMENT_BYTES, F_ITEMS_TRIMMED,
           F_SEGMENTS_TRIMMED)  # fmt: skip
_COLUMN = {name: name for name in _FIELDS} | {F_LEFT: "left_at"}  # LEFT is an SQL word
_SETTABLE = {F_LANG, F_META, F_GEMINI}
# (list, bytes column, count column, trimmed column)
_LISTS = ((ITEMS, F_ITEM_BYTES, "n_items", F_ITEMS_TRIMMED),
          (SEGMENTS, F_SEGMENT_BYTES, "n_segments", F_SEGMENTS_TRIMMED))  # fmt: skip
_LEASE_MEMORY_MS = int(LEASE_MEMORY_S * 1000)


@dataclass(frozen=True, slots=True)
class Retain:
    """How long a write keeps the record of ``names`` (room, identity): ``active_ms`` while
    its participant is here; once they left, ``away_ms(info, remaining_ms)`` from now (the
    store's retention rule, given the record's engagement and what it has left)."""

    names: tuple[str, str]
    active_ms: int
    away_ms: Callable[[LeaveInfo, int], int]


# -- records ----------------------------------------------------------------------------------


def join(
    conn: Connection, pkey: str, room_hash: str, who: bytes, session_id: str,
    fence: int | None, active_ttl_ms: int, max_records: int, tail: int | None = None,
) -> tuple[str, Stored, int]:  # fmt: skip
    """Create, resume or recognise; (kind, the stored record with its newest ``tail``
    segments (None: all), records evicted to make room).

    CorruptRecordError (nothing changed) when the record is of another schema or malformed.
    """
    now = conn.now_ms()
    check_fence(conn, participant_lease(pkey), fence, now)
    row = _live(conn, pkey, now, drop_expired=True)
    evicted = 0
    if row is None:
        evicted = _create(conn, pkey, room_hash, session_id, who, now, active_ttl_ms, max_records)
        kind = "new"
    elif not _usable(row):
        raise CorruptRecordError("unknown schema version or bad fields")
    elif _text(row["active"]) == session_id:
        kind = "duplicate"
        conn.execute(
            "UPDATE records SET seen = ?, rev = rev + 1, expires_at = ? WHERE pkey = ?",
            (now, now + active_ttl_ms, pkey),
        )
    else:
        kind = "returning"
        conn.execute(
            "UPDATE records SET reconnects = reconnects + 1, active = ?, left_at = NULL, "
            "seen = ?, rev = rev + 1, expires_at = ? WHERE pkey = ?",
            (session_id, now, now + active_ttl_ms, pkey),
        )
    return kind, _stored(conn, pkey, tail), evicted


def load(conn: Connection, pkey: str) -> Stored | None:
    """The stored record, or None (absent or expired)."""
    if _live(conn, pkey, conn.now_ms(), drop_expired=False) is None:
        return None
    return _stored(conn, pkey)


def append(
    conn: Connection, pkey: str, room_hash: str, who: bytes, fence: int | None,
    lists: tuple[Entries, Entries], bounds: tuple[int, int], retain: Retain, max_records: int,
    compact_through: str | None = None,
) -> tuple[int, int, bool, int]:  # fmt: skip
    """Add the entries not seen before (by id), drop the items through ``compact_through``
    (SessionStore.append), trim each list to ``bounds`` (entries, bytes) oldest first, as
    memory.py and the APPEND script do; (items added, segments added, merged, evicted). A
    stale fence merges instead of refusing (entries are facts) and drops nothing."""
    now = conn.now_ms()
    try:
        check_fence(conn, participant_lease(pkey), fence, now)
        merged = False
    except StaleLeaseError:
        merged = True
    evicted = _ensure(conn, pkey, room_hash, who, now, retain.active_ms, max_records)
    through = None if merged else compact_through
    added = [
        _push(conn, pkey, columns, entries, bounds, through if columns[0] == ITEMS else None)
        for columns, entries in zip(_LISTS, lists, strict=True)
    ]
    _refresh(conn, pkey, now, retain)
    return added[0], added[1], merged, evicted


def _push(
    conn: Connection, pkey: str, columns: tuple[int, str, str, str], entries: Entries,
    bounds: tuple[int, int], through: str | None,
) -> int:  # fmt: skip
    """One list's part of ``append``; how many entries were new."""
    slot, bytes_col, count_col, trimmed_col = columns
    state = conn.execute(
        f"SELECT {bytes_col}, {count_col} FROM records WHERE pkey = ?", (pkey,)
    ).fetchone()
    size, count, new = _int(state[0]), _int(state[1]), 0
    for entry_id, blob in entries:
        cursor = conn.execute(
            "INSERT INTO entries (pkey, list, eid, blob) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (pkey, slot, entry_id, blob),
        )
        if cursor.rowcount == 1:
            size, count, new = size + len(blob), count + 1, new + 1
    # a dropped entry keeps its row (id) with a NULL blob: it stays seen
    dropped = _drop_through(conn, pkey, slot, through) if through is not None else (0, 0)
    size, count, trimmed = size - dropped[1], count - dropped[0], dropped[0]
    max_n, max_bytes = bounds
    if count > 1 and (count > max_n or size > max_bytes):
        oldest = conn.execute(
            "SELECT seq, length(blob) FROM entries WHERE pkey = ? AND list = ? "
            "AND blob IS NOT NULL ORDER BY seq",
            (pkey, slot),
        ).fetchall()
        cut = 0
        while count - cut > 1 and (count - cut > max_n or size > max_bytes):
            size -= oldest[cut][1]
            cut += 1
        conn.execute(
            "UPDATE entries SET blob = NULL WHERE pkey = ? AND list = ? AND seq <= ?",
            (pkey, slot, oldest[cut - 1][0]),
        )
        count, trimmed = count - cut, trimmed + cut
    if trimmed:
        conn.execute(
            f"UPDATE records SET {trimmed_col} = coalesce({trimmed_col}, 0) + ? WHERE pkey = ?",
            (trimmed, pkey),
        )
    conn.execute(
        f"UPDATE records SET {bytes_col} = ?, {count_col} = ? WHERE pkey = ?",
        (size, count, pkey),
    )
    return new


def _drop_through(conn: Connection, pkey: str, slot: int, entry_id: str) -> tuple[int, int]:
    """Drop a list's entries from the oldest through ``entry_id`` if held; (count, bytes)."""
    found = conn.execute(
        "SELECT seq FROM entries WHERE pkey = ? AND list = ? AND eid = ? AND blob IS NOT NULL",
        (pkey, slot, entry_id),
    ).fetchone()
    if found is None:
        return 0, 0
    where = "WHERE pkey = ? AND list = ? AND seq <= ? AND blob IS NOT NULL"
    n, size = conn.execute(
        f"SELECT count(*), coalesce(sum(length(blob)), 0) FROM entries {where}",
        (pkey, slot, found[0]),
    ).fetchone()
    conn.execute(f"UPDATE entries SET blob = NULL {where}", (pkey, slot, found[0]))
    return n, size


def set_fields(
    conn: Connection, pkey: str, room_hash: str, who: bytes, fence: int | None,
    updates: dict[str, bytes], stamp_gemini: bool, retain: Retain, max_records: int,
) -> int:  # fmt: skip
    """Replace sealed fields (language, metadata, Gemini handle); records evicted."""
    now = conn.now_ms()
    check_fence(conn, participant_lease(pkey), fence, now)
    evicted = _ensure(conn, pkey, room_hash, who, now, retain.active_ms, max_records)
    for name, value in updates.items():
        if name not in _SETTABLE:
            raise ValueError(f"not a settable field: {name}")
        conn.execute(f"UPDATE records SET {name} = ? WHERE pkey = ?", (value, pkey))
    if stamp_gemini:
        conn.execute("UPDATE records SET gem_at = ? WHERE pkey = ?", (now, pkey))
    _refresh(conn, pkey, now, retain)
    return evicted


def leave(
    conn: Connection, pkey: str, names: tuple[str, str], fence: int | None,
    session_id: str, retention_ms: Callable[[LeaveInfo], int],
) -> LeaveInfo | None:  # fmt: skip
    """End ``session_id`` (a repeated or superseded leave changes nothing: None).

    The record is kept ``retention_ms(info)`` from now: the store's retention policy, called
    here so the leave and its retention are one transaction.
    """
    now = conn.now_ms()
    check_fence(conn, participant_lease(pkey), fence, now)
    row = _live(conn, pkey, now, drop_expired=True)
    if row is None or _text(row["active"]) != session_id:
        return None
    info = _leave_info(row, names, left=now)
    conn.execute(
        "UPDATE records SET active = '', left_at = ?, seen = ?, rev = rev + 1, expires_at = ? "
        "WHERE pkey = ?",
        (now, now, now + retention_ms(info), pkey),
    )
    return info


def live_records(conn: Connection, room_hash: str | None) -> list[tuple[str, Stored]]:
    """Every live record (of one room hash) in its stored form, for operator listings."""
    query = "SELECT pkey FROM records WHERE note IS NULL AND expires_at > ?"
    args: tuple[Any, ...] = (conn.now_ms(),)
    if room_hash is not None:
        query, args = query + " AND room_hash = ?", (*args, room_hash)
    return [(pkey, _stored(conn, pkey)) for (pkey,) in conn.execute(query, args).fetchall()]


def purge(conn: Connection, pkey: str | None, room_hash: str) -> tuple[int, int]:
    """Delete one participant's record (``pkey``), or a whole room's, with their quarantined
    copies and participant leases; (live records, quarantined copies) deleted."""
    args: tuple[str, ...]
    if pkey is not None:  # participant hashes are hex: no LIKE wildcard in them
        where, args = "(pkey = ? OR pkey LIKE ?)", (pkey, pkey + ":q%")
    else:
        where, args = "room_hash = ?", (room_hash,)
    query = f"SELECT pkey, note, expires_at FROM records WHERE {where}"
    rows = conn.execute(query, args).fetchall()
    now, live = conn.now_ms(), 0
    for row in rows:
        _delete(conn, row["pkey"])
        if row["note"] is None:
            conn.execute("DELETE FROM leases WHERE key = ?", (participant_lease(row["pkey"]),))
            live += row["expires_at"] > now
    if pkey is not None:
        conn.execute("DELETE FROM leases WHERE key = ?", (participant_lease(pkey),))
    return live, sum(1 for row in rows if row["note"] is not None)


# -- quarantine -------------------------------------------------------------------------------


def quarantine(conn: Connection, pkey: str, qkey: str, rev: bytes, note: str, ttl_ms: int) -> bool:
    """Move a live record aside under ``qkey`` unless it changed since it was read (``rev``;
    b"" = whatever it is now); True when moved."""
    row = conn.execute("SELECT rev FROM records WHERE pkey = ?", (pkey,)).fetchone()
    if row is None or (rev and _text(row["rev"]).encode() != rev):
        return False
    conn.execute(
        "UPDATE records SET pkey = ?, note = ?, expires_at = ? WHERE pkey = ?",
        (qkey, note, conn.now_ms() + ttl_ms, pkey),
    )
    conn.execute("UPDATE entries SET pkey = ? WHERE pkey = ?", (qkey, pkey))
    return True


def restore(conn: Connection, qkey: str, ttl_ms: int) -> str:
    """Move a quarantined copy back: 'restored', 'missing' or 'live' (a record is there)."""
    pkey = qkey.partition(":q")[0]
    found = conn.execute(
        "SELECT 1 FROM records WHERE pkey = ? AND note IS NOT NULL AND expires_at > ?",
        (qkey, conn.now_ms()),
    ).fetchone()
    if found is None:
        return "missing"
    if _live(conn, pkey, conn.now_ms(), drop_expired=True) is not None:
        return "live"
    conn.execute(
        "UPDATE records SET pkey = ?, note = NULL, expires_at = ? WHERE pkey = ?",
        (pkey, conn.now_ms() + ttl_ms, qkey),
    )
    conn.execute("UPDATE entries SET pkey = ? WHERE pkey = ?", (pkey, qkey))
    return "restored"


def sweep(conn: Connection) -> None:
    """Delete expired records and quarantined copies, and leases lapsed over a day ago."""
    now = conn.now_ms()
    conn.execute(
        "DELETE FROM entries WHERE pkey IN (SELECT pkey FROM records WHERE expires_at <= ?)",
        (now,),
    )
    conn.execute("DELETE FROM records WHERE expires_at <= ?", (now,))
    conn.execute("DELETE FROM leases WHERE until < ?", (now - _LEASE_MEMORY_MS,))


# -- internals --------------------------------------------------------------------------------


def _live(conn: Connection, pkey: str, now: int, *, drop_expired: bool) -> Any:
    row = conn.execute("SELECT * FROM records WHERE pkey = ?", (pkey,)).fetchone()
    if row is None or row["expires_at"] > now:
        return row
    if drop_expired:
        _delete(conn, pkey)  # its entries' ids too: a new record starts with none seen
    return None


def _create(
    conn: Connection, pkey: str, room_hash: str, session_id: str, who: bytes, now: int,
    ttl_ms: int, max_records: int,
) -> int:  # fmt: skip
    conn.execute(
        "INSERT INTO records (pkey, room_hash, expires_at, v, joined, seen, reconnects, active, "
        "rev, who) VALUES (?, ?, ?, ?, ?, ?, 0, ?, 1, ?)",
        (pkey, room_hash, now + ttl_ms, SCHEMA_VERSION, now, now, session_id, who),
    )
    return _evict(conn, pkey, max_records)


def _ensure(
    conn: Connection, pkey: str, room_hash: str, who: bytes, now: int, ttl_ms: int,
    max_records: int,
) -> int:  # fmt: skip
    """Create an empty record when there is none; CorruptRecordError when it is unusable."""
    row = _live(conn, pkey, now, drop_expired=True)
    if row is None:
        return _create(conn, pkey, room_hash, "", who, now, ttl_ms, max_records)
    if not _usable(row):
        raise CorruptRecordError("unknown schema version or bad fields")
    return 0


def _usable(row: sqlite3.Row) -> bool:
    """What a write needs to trust before changing a record (the rest is checked on decode)."""
    return _text(row["v"]) == str(SCHEMA_VERSION) and all(
        isinstance(row[name], int) for name in ("reconnects", "rev", "seen")
    )


def _evict(conn: Connection, keep: str, max_records: int) -> int:
    """Delete the least recently written records beyond ``max_records``; how many."""
    if conn.execute("SELECT count(*) FROM records").fetchone()[0] <= max_records:
        return 0
    sweep(conn)
    excess = conn.execute("SELECT count(*) FROM records WHERE note IS NULL").fetchone()[0]
    victims = conn.execute(
        "SELECT pkey FROM records WHERE note IS NULL AND pkey != ? ORDER BY seen LIMIT ?",
        (keep, max(0, excess - max_records)),
    ).fetchall()
    for (pkey,) in victims:
        _delete(conn, pkey)
    return len(victims)


def _refresh(conn: Connection, pkey: str, now: int, retain: Retain) -> None:
    # an active record lives active_ms past its last write; a left one keeps at least the
    # retention its engagement earns (late transcript segments may arrive after the leave)
    row = conn.execute(
        "SELECT active, expires_at, n_items, n_segments, it, st, reconnects, joined, left_at "
        "FROM records WHERE pkey = ?",
        (pkey,),
    ).fetchone()
    if _text(row["active"]):
        expires = now + retain.active_ms
    else:
        info = _leave_info(row, retain.names, left=_int(row["left_at"]) or now)
        expires = now + retain.away_ms(info, row["expires_at"] - now)
    conn.execute(
        "UPDATE records SET seen = ?, rev = rev + 1, expires_at = ? WHERE pkey = ?",
        (now, expires, pkey),
    )


def _leave_info(row: sqlite3.Row, names: tuple[str, str], *, left: int) -> LeaveInfo:
    """What the retention policy sees of a record (counts include trimmed entries)."""
    return LeaveInfo(
        *names,
        item_count=row["n_items"] + _int(row[F_ITEMS_TRIMMED]),
        transcript_count=row["n_segments"] + _int(row[F_SEGMENTS_TRIMMED]),
        reconnect_count=_int(row["reconnects"]),
        joined_at=_int(row["joined"]) / 1000,
        left_at=left / 1000,
    )


def _delete(conn: Connection, pkey: str) -> None:
    conn.execute("DELETE FROM entries WHERE pkey = ?", (pkey,))
    conn.execute("DELETE FROM records WHERE pkey = ?", (pkey,))


def _stored(conn: Connection, pkey: str, tail: int | None = None) -> Stored:
    """The record's stored form: fields as records.py names them, items and transcript."""
    row = conn.execute("SELECT * FROM records WHERE pkey = ?", (pkey,)).fetchone()
    fields = {}
    for name in _FIELDS:
        value = row[_COLUMN[name]]
        if value is not None:
            fields[name] = value if isinstance(value, bytes) else str(value).encode()
    return fields, _framed(conn, pkey, ITEMS), _framed(conn, pkey, SEGMENTS, tail)


def _framed(conn: Connection, pkey: str, slot: int, tail: int | None = None) -> Framed:
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples: a third of the cost of a restore otherwise
    query = "SELECT blob FROM entries WHERE pkey = ? AND list = ? AND blob IS NOT NULL"
    if tail is None:
        cursor.execute(query + " ORDER BY seq", (pkey, slot))
    else:  # the newest ``tail``, oldest first
        query = query.replace("blob FROM", "seq, blob FROM") + " ORDER BY seq DESC LIMIT ?"
        cursor.execute(f"SELECT blob FROM ({query}) ORDER BY seq", (pkey, slot, tail))
    blobs = [blob if isinstance(blob, bytes) else str(blob).encode() for (blob,) in cursor]
    # the Redis store's framing: plaintext entries are then decoded in one orjson call
    return Framed(b"[" + b",".join(blobs) + b"]", b",".join(b"%d" % len(b) for b in blobs))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0
