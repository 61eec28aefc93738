"""One SQLite file that every job and worker process on a host shares: opening it, its
schema, and the thread its transactions run in.

The file is in WAL mode (readers never wait for the writer), ``synchronous=NORMAL`` (a
committed transaction survives the process dying; only a power cut may lose the last ones)
and a busy timeout: a writer that finds the file locked by another process waits that long
before the store treats the file as unavailable. Every write is one ``BEGIN IMMEDIATE``
transaction, so the write lock is taken before the first read and two processes can never
interleave inside one operation.

Each ``SqliteDatabase`` owns one connection used by one worker thread, so the event loop never
waits on the disk, and a whole operation (a transaction of several statements and the decoding
of what it read) costs one hop to that thread. That is why no async SQLite library is used:
aiosqlite, the well-kept one, also runs one thread per connection, but hops to it per
statement, so a transaction would interleave with the loop between its statements.

Errors: what a user can fix at start (a directory that cannot be created or written, a file
that is not a database, a database of another program) is ``DatabaseFileError``, one line
naming SESSION_DB_PATH. What happens to a working file while it runs (locked beyond the busy
timeout, disk full, an I/O error) is ``SqliteUnavailableError``, a ``StoreUnavailableError``:
the store answers from memory and queues writes until the file answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import StoreError, StoreUnavailableError

__all__ = ["Connection", "DatabaseFileError", "SqliteDatabase", "SqliteUnavailableError"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# PRAGMA user_version of a file this code created; a newer one is refused
FILE_VERSION = 1
_TABLES = {"records", "entries", "leases", "rooms"}

# Columns without a type keep what is stored as it is (bytes stay bytes, ints stay ints): the
# stored form of _codec.py, one column per field. Quarantined copies are rows whose ``note``
# is set, under the key ``<participant hash>:q<stamp>``. No ";" in the comments below: the
# statements are split on it.
SCHEMA = """
CREATE TABLE records (
    pkey TEXT PRIMARY KEY,          -- _keys.participant_hash(room, identity)
    room_hash TEXT NOT NULL,        -- _keys.room_hash(room): purge a room without keys
    expires_at INTEGER NOT NULL,    -- ms of the host's wall clock
    note TEXT,                      -- quarantine note (JSON), NULL for a live record
    n_items INTEGER NOT NULL DEFAULT 0,
    n_segments INTEGER NOT NULL DEFAULT 0,
    v, joined, seen, reconnects, active, left_at, rev, who, lang, meta, gem, gem_at,
    ib, sb, it, st
);
CREATE INDEX records_expiry ON records (expires_at);
CREATE INDEX records_room ON records (room_hash);
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY,        -- insertion order: a record's rows are only ever added
    pkey TEXT NOT NULL,
    list INTEGER NOT NULL,          -- 0 conversation items, 1 transcript segments
    eid TEXT NOT NULL,
    blob BLOB                       -- NULL once trimmed: the id stays, so it is not re-added
);
CREATE UNIQUE INDEX entries_id ON entries (pkey, list, eid);
CREATE TABLE leases (
    key TEXT PRIMARY KEY,           -- 'p:<participant hash>' or 'r:<room hash>'
    owner TEXT NOT NULL,            -- '' once released
    token INTEGER NOT NULL,
    until INTEGER NOT NULL          -- ms of the host's wall clock
) WITHOUT ROWID;
"""

# The watch list of held rooms (primary/room_registry.py), added after file version 1 was
# released: a file written before lacks it and gets it when it is next opened (older workers
# ignore it).
ROOMS_TABLE = """
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,          -- the LiveKit room name, in plain text while watched
    agent TEXT NOT NULL,            -- the agent name to dispatch again with ('' = automatic)
    until INTEGER NOT NULL          -- the room lease's until: ms of the host's wall clock
)"""

# what a running file may answer while it stays the same file: a fault, not a setting
_FAULTS = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOTADB,
}


class DatabaseFileError(StoreError):
    """SESSION_DB_PATH cannot be used (the message says why and what to do)."""


class SqliteUnavailableError(StoreUnavailableError):
    """The session database cannot answer now (locked, disk full, I/O error)."""


class Connection(sqlite3.Connection):
    """A connection that knows the store's clock: transactions read the time from it."""

    clock: Callable[[], float] = time.time

    def now_ms(self) -> int:
        """Now, in integer milliseconds of the store's wall clock."""
        return int(self.clock() * 1000)


class SqliteDatabase:
    """The SQLite file at ``path``, opened now (``DatabaseFileError`` if it cannot be used).

    ``write(fn, *args)`` runs ``fn(connection, *args)`` inside ``BEGIN IMMEDIATE`` / ``COMMIT``
    in this database's thread; ``read`` the same in a read transaction (one snapshot).
    ``after`` runs on the result in the thread too, after the commit (decoding, decryption).
    ``clock``: the wall clock the transactions read (``Connection.now_ms``); a test moves it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path).expanduser().absolute()
        self.busy_timeout = busy_timeout
        self.clock = clock
        _prepare_directory(self.path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="session-db")
        self._state = _Connection()
        self._finalizer = weakref.finalize(self, _abandon, self._executor, self._state)
        try:
            self._executor.submit(self._connect, True).result()
        except SqliteUnavailableError as exc:  # busy or faulty now: connect on first use
            logger.warning("session database not opened yet", extra={"error": str(exc)})
        except BaseException:
            self.close()
            raise

    async def write(
        self, fn: Callable[..., T], *args: Any, after: Callable[[T], Any] | None = None
    ) -> Any:
        """``fn(conn, *args)`` in one write transaction; see the class docstring."""
        return await self._call("BEGIN IMMEDIATE", fn, args, after)

    async def read(
        self, fn: Callable[..., T], *args: Any, after: Callable[[T], Any] | None = None
    ) -> Any:
        """``fn(conn, *args)`` in one read transaction; see the class docstring."""
        return await self._call("BEGIN", fn, args, after)

    async def probe(self) -> None:
        """Take and give back the write lock: raises SqliteUnavailableError while it cannot."""
        await self.write(lambda _conn: None)

    def close(self) -> None:
        """Close the connection after what is queued, and stop the thread (calls afterwards
        raise StoreError)."""
        if self._finalizer.detach() is None:
            return  # closed already
        with contextlib.suppress(RuntimeError):  # the interpreter is shutting down
            self._executor.submit(_close, self._state)
        self._executor.shutdown(wait=False)

    async def _call(
        self, begin: str, fn: Callable[..., T], args: tuple[Any, ...], after: Any
    ) -> Any:
        try:
            future = self._executor.submit(self._transact, begin, fn, args, after)
        except RuntimeError:
            raise StoreError(f"the session database {self.path} is closed") from None
        return await asyncio.wrap_future(future)

    def _transact(self, begin: str, fn: Callable[..., T], args: tuple[Any, ...], after: Any) -> Any:
        try:
            conn = self._state.conn or self._connect(False)
            try:
                conn.execute(begin)
                result = fn(conn, *args)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.rollback()
        except sqlite3.Error as exc:
            raise self._fault(exc) from None
        return after(result) if after is not None else result

    def _connect(self, at_start: bool) -> Connection:
        """Open, switch to WAL and create the schema if needed (in the database's thread)."""
        conn: Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None,
                check_same_thread=False, factory=Connection,
            )  # fmt: skip
            conn.clock = self.clock
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                logger.warning(
                    "session database is not in WAL mode; readers will wait for writers",
                    extra={"path": str(self.path), "journal_mode": mode},
                )
            conn.execute("PRAGMA synchronous=NORMAL")
            self._check_schema(conn)
        except (sqlite3.Error, DatabaseFileError) as exc:
            if conn is not None:
                conn.close()
            if at_start:
                raise (exc if isinstance(exc, DatabaseFileError) else self._unusable(exc)) from None
            # the file went bad under a running worker: wait it out, never end a call
            if isinstance(exc, DatabaseFileError):
                raise SqliteUnavailableError(str(exc)) from None
            raise self._fault(exc) from None
        self._state.conn = conn
        return conn

    def _check_schema(self, conn: Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == FILE_VERSION:
            if not conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'rooms'").fetchone():
                conn.execute(ROOMS_TABLE)  # a file of the previous release
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process?
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
            if version > FILE_VERSION:
                raise DatabaseFileError(
                    f"SESSION_DB_PATH {self.path} was written by a newer version of this worker "
                    f"(file version {version}, this worker reads {FILE_VERSION}); upgrade it "
                    "or point SESSION_DB_PATH at another file"
                )
            if version == 0 and tables:
                raise DatabaseFileError(
                    f"SESSION_DB_PATH {self.path} is another program's SQLite database; "
                    "point SESSION_DB_PATH at a file of its own"
                )
            if version == 0:
                # one statement at a time: executescript would commit the transaction first
                for statement in [*filter(str.strip, SCHEMA.split(";")), ROOMS_TABLE]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {FILE_VERSION}")
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.rollback()

    def _unusable(self, exc: sqlite3.Error) -> Exception:
        code = (exc.sqlite_errorcode or 0) & 0xFF
        if code == sqlite3.SQLITE_NOTADB:
            return DatabaseFileError(
                f"SESSION_DB_PATH {self.path} is not a SQLite database; move it aside or point "
                "SESSION_DB_PATH at another file"
            )
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
            return DatabaseFileError(
                f"SESSION_DB_PATH {self.path} cannot be opened for writing ({exc}); check the "
                "file's and its directory's permissions, or point SESSION_DB_PATH elsewhere"
            )
        return self._fault(exc)

    def _fault(self, exc: sqlite3.Error) -> Exception:
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code in _FAULTS or (code == 0 and isinstance(exc, sqlite3.OperationalError)):
            return SqliteUnavailableError(f"the session database cannot answer ({exc})")
        return exc  # a programming error: not an outage to wait out


class _Connection:
    """The thread's connection, held apart so the finalizer needs no reference to the db."""

    def __init__(self) -> None:
        self.conn: Connection | None = None


def _close(state: _Connection) -> None:
    conn, state.conn = state.conn, None
    if conn is not None:
        conn.close()


def _abandon(executor: ThreadPoolExecutor, state: _Connection) -> None:
    """A database garbage-collected unclosed: nothing can be running on it any more (every
    call holds it), so close here. No ``submit``: a collection can run inside another
    executor's submit, which holds a lock submit takes."""
    executor.shutdown(wait=False)
    _close(state)


def _prepare_directory(path: Path) -> None:
    """Create the file's directory; DatabaseFileError unless this process can write there."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseFileError(
            f"SESSION_DB_PATH {path}: cannot create the directory {directory} "
            f"({exc.strerror or exc}); create it writable for this user or point "
            "SESSION_DB_PATH elsewhere"
        ) from None
    if path.is_dir():
        raise DatabaseFileError(f"SESSION_DB_PATH {path} is a directory; name a file in it")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise DatabaseFileError(
            f"SESSION_DB_PATH {path} is not readable and writable by this user; fix its "
            "permissions or point SESSION_DB_PATH elsewhere"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseFileError(
            f"SESSION_DB_PATH {path}: the directory {directory} is not writable by this user "
            "(SQLite keeps its write-ahead log beside the file); fix its permissions or point "
            "SESSION_DB_PATH elsewhere"
        )
