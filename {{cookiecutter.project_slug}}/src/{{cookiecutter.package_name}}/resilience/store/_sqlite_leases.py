"""The leases of leases.py in the SQLite file: one row of the ``leases`` table per lease (owner,
token, until in ms of the host's wall clock), the same rules as the Redis scripts.

A participant's row is ``p:<participant hash>``, a room's ``r:<room hash>`` (_keys.py). The
functions run inside a transaction of ``SqliteDatabase``; ``check_fence`` inside each record
write's own (_sqlite_ops.py), so a write and its fencing check are one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ._codec import ms
from ._keys import participant_hash, sqlite_participant_lease, sqlite_room_lease
from ._sqlite_db import Connection, SqliteDatabase
from .base import StaleLeaseError, StoreUnavailableError
from .leases import NOBODY, Grant, LeaseState, check_ttl, held_error

__all__ = ["SqliteLeases", "acquire", "check_fence", "release"]

logger = logging.getLogger(__name__)

# runs in the lease's transaction after a grant (the room lease writes the watch list there)
Then = Callable[[Connection, Grant], Any]


def check_fence(conn: Connection, key: str, fence: int | None, now: int) -> None:
    """StaleLeaseError unless a write carrying ``fence`` may go ahead."""
    row = conn.execute("SELECT token, until FROM leases WHERE key = ?", (key,)).fetchone()
    if row is None:
        return
    live = row["until"] > now
    if fence is None:
        if live:
            raise StaleLeaseError("this participant's lease is held; pass its fencing token")
    elif fence < row["token"] or (live and fence != row["token"]):
        raise StaleLeaseError(
            f"fencing token {fence} is older than the lease's ({row['token']}): "
            "another worker took over"
        )


def acquire(
    conn: Connection, key: str, owner: str, ttl_ms: int, force: bool, held: int | None,
    then: Then | None = None,
) -> Grant:  # fmt: skip
    """Take, renew or reclaim the lease (LeaseHeldError while another holds it); ``then`` runs
    on the grant in the same transaction."""
    grant = _grant(conn, key, owner, ttl_ms, force, held)
    if then is not None:
        then(conn, grant)
    return grant


def _grant(
    conn: Connection, key: str, owner: str, ttl_ms: int, force: bool, held: int | None
) -> Grant:
    now = conn.now_ms()
    until = now + ttl_ms
    row = conn.execute("SELECT owner, token, until FROM leases WHERE key = ?", (key,)).fetchone()
    if row is None and held is not None and not force:
        # the file lost the row (deleted, restored from an older copy): the holder's again
        conn.execute("INSERT INTO leases VALUES (?, ?, ?, ?)", (key, owner, held, until))
        return Grant(held, until)
    if row is not None and row["owner"] == owner and not force:
        # the holder renews; a holder whose lease lapsed untaken reclaims it, same token
        conn.execute("UPDATE leases SET until = ? WHERE key = ?", (until, key))
        return Grant(int(row["token"]), until)
    if row is not None and row["until"] > now and not force:
        raise held_error(row["owner"], (row["until"] - now) / 1000)
    # microseconds of the wall clock at least: tokens grow even if the row was forgotten
    token = max((row["token"] if row is not None else 0) + 1, int(conn.clock() * 1_000_000))
    conn.execute(
        "INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
        "owner = excluded.owner, token = excluded.token, until = excluded.until",
        (key, owner, token, until),
    )
    return Grant(token, until)


def release(conn: Connection, key: str, owner: str, token: int, then: Then | None = None) -> bool:
    """Give the lease up if ``owner``/``token`` hold it (its token stays remembered); ``then``
    runs (with the released token) in the same transaction when it was released."""
    cursor = conn.execute(
        "UPDATE leases SET owner = '', until = 0 WHERE key = ? AND owner = ? AND token = ?",
        (key, owner, token),
    )
    if cursor.rowcount != 1:
        return False
    if then is not None:
        then(conn, Grant(token, 0))
    return True


def lease_state(conn: Connection, key: str) -> LeaseState:
    """Who holds the lease now."""
    row = conn.execute("SELECT owner, token, until FROM leases WHERE key = ?", (key,)).fetchone()
    left = (row["until"] - conn.now_ms()) / 1000 if row is not None else 0
    if row is None or not row["owner"] or left <= 0:
        return NOBODY
    return LeaseState(row["owner"], int(row["token"]), left)


class SqliteLeases:
    """``Leases`` in the SQLite file ``db``. ``acquire`` and ``release`` take ``then``, what to
    do in the lease's own transaction (SQLite only: the Redis lease has a Cluster slot of its
    own)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def room(self, room: str) -> str:
        """See ``Leases.room``."""
        return sqlite_room_lease(room)

    def participant(self, room: str, identity: str) -> str:
        """See ``Leases.participant``."""
        return sqlite_participant_lease(participant_hash(room, identity))

    async def acquire(
        self, key: str, owner: str, ttl: float, *, force: bool = False,
        held: int | None = None, then: Then | None = None,
    ) -> Grant:  # fmt: skip
        """See ``Leases.acquire``; StoreUnavailableError while the file cannot answer."""
        check_ttl(ttl)
        return await self.db.write(acquire, key, owner, max(1, ms(ttl)), force, held, then)

    async def release(self, key: str, owner: str, token: int, *, then: Then | None = None) -> bool:
        """See ``Leases.release``; False when the file cannot answer (the lease then lapses)."""
        try:
            return await self.db.write(release, key, owner, token, then)
        except StoreUnavailableError:
            logger.warning("lease not released: session database unavailable; it will lapse")
            return False

    async def state(self, key: str) -> LeaseState:
        """See ``Leases.state`` (operators, tests)."""
        return await self.db.read(lease_state, key)
