"""The embedded default store: one SQLite file for every job and worker process on a host.

LiveKit runs each job in its own process, so a store in memory dies with its job. This one
keeps records in a file (SESSION_DB_PATH), which every job process and every worker process on
the host shares and which outlives a worker restart: a participant who returns after the room
closed, or after the worker was restarted, is welcomed back with the whole conversation.
Many hosts need Redis.

It keeps the guarantees of the Redis store, with the same stored form (_codec.py: the same
sealed blobs) and the same rules: joins are atomic and keyed by session id, appends are
deduplicated by id and kept in order, retention runs on the host's wall clock (expired records
are swept as the store is used), leases and fencing follow leases.py (_sqlite_leases.py; the
record transactions are in _sqlite_ops.py, the file in _sqlite_db.py), each participant's
storage is bounded (StorageLimits), the file holds at most ``max_records`` records (the least
recently written go first, with a warning), and a record proven corrupt is quarantined (kept
aside, listed by ``admin.quarantined``) while the participant starts fresh. The clocks are
arguments (``clock``: wall, the store's time; ``monotonic``: when to sweep), so a test can
move time.

When the file cannot answer (locked by another process beyond the busy timeout, disk full, an
I/O error) nothing fails: as in the Redis store, reads come from the last known records (a
MemoryStore used as a cache), writes are applied there and queued in order (_write_queue.py)
until the file answers, and a join is answered from memory with ``JoinOutcome.settled``
resolving to the file's answer later. Leases refuse to work without the file.

Events (``events.publish`` / ``subscribe_events``) reach subscribers in this process only: a
job's process is where its conversation runs. Operators who need a feed across processes use
Redis, whose events go through pub/sub.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from . import _sqlite_ops as ops
from ._buffered import BufferedWrites
from ._codec import F_GEMINI, F_REV, TAG_ITEM, TAG_SEGMENT, RecordCodec, WhoCache, ms
from ._crypto import KeyRing
from ._events import LocalEvents
from ._keys import identity_hash, participant_hash, room_hash
from ._quarantine import QuarantineNote
from ._sqlite_admin import SqliteAdmin
from ._sqlite_db import Connection, DatabaseFileError, SqliteDatabase
from ._sqlite_leases import SqliteLeases
from ._validate import (
    check_session_id,
    gemini_input,
    profile_updates,
    validate_entries,
    validate_names,
)
from ._write_queue import WriteQueue
from .base import (
    AppendResult,
    CorruptRecordError,
    Fence,
    InvalidInputError,
    JoinKind,
    JoinOutcome,
    LeaveInfo,
    RetentionPolicy,
    SessionRecord,
    StorageLimits,
    StoreUnavailableError,
    resolve_fence,
    retention_for,
)
from .memory import MemoryStore
from .retention import kept_after_write

__all__ = [
    "Connection",
    "DatabaseFileError",
    "SqliteAdmin",
    "SqliteDatabase",
    "SqliteLeases",
    "SqliteStore",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_SWEEP_EVERY_S = 5.0


class _Unreadable(CorruptRecordError):
    """A record failed to decode; carries its revision so quarantine moves only that one."""

    def __init__(self, reason: str, rev: bytes) -> None:
        super().__init__(reason)
        self.rev = rev


class SqliteStore(BufferedWrites):
    """``SessionStore`` on the SQLite file at ``path``; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: float = 300.0,
        active_ttl: float = 3600.0,
        max_records: int = 10_000,
        keyring: KeyRing | None = None,
        retention_policy: RetentionPolicy | None = None,
        quarantine_ttl: float | None = None,
        limits: StorageLimits | None = None,
        busy_timeout: float = 2.0,
        max_queued_writes: int = 10_000,
        cache_records: int = 1000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_records < 1:
            raise InvalidInputError("max_records must be at least 1")
        self.retention = retention
        self.active_ttl = active_ttl
        self.max_records = max_records
        self.retention_policy = retention_policy
        # unreadable records are kept aside this long (default: as long as a record)
        self.quarantine_ttl = retention if quarantine_ttl is None else quarantine_ttl
        self.limits = limits or StorageLimits()
        self._db = SqliteDatabase(path, busy_timeout=busy_timeout, clock=clock)  # DatabaseFileError
        self.path = self._db.path
        self._clock, self._monotonic = clock, monotonic
        self._codec = RecordCodec(keyring)
        # operator reads and deletes: straight to the file, never through the cache or queue
        self.admin = SqliteAdmin(self._db, keyring=keyring, retention=retention)
        self.leases = SqliteLeases(self._db)
        self.events = LocalEvents(clock)
        self._who = WhoCache(self._codec)
        self._cache = MemoryStore(
            retention=retention,
            active_ttl=active_ttl,
            max_records=min(cache_records, max_records),
            keyring=keyring,  # holds the file's stored form as is, so nothing is re-encoded
            as_cache=True,
            limits=self.limits,
            clock=clock,
            monotonic=monotonic,
        )
        self._queue = WriteQueue(
            probe=self._db.probe,
            unavailable=(StoreUnavailableError,),
            max_writes=max_queued_writes,
            backend="sqlite",
        )
        self._unavailable = (StoreUnavailableError,)
        self._next_sweep = 0.0
        self.evicted = 0

    # -- SessionStore ------------------------------------------------------------------------

    async def join(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None,
        transcript_tail: int | None = None,
    ) -> JoinOutcome:  # fmt: skip
        """See ``SessionStore.join``: one transaction joins and reads the record."""
        check_session_id(session_id, transcript_tail)
        validate_names(room, identity)
        tail = transcript_tail
        return await self._write_join(
            room, identity, session_id,
            lambda: self._join(room, identity, session_id, fence, tail), tail,
        )  # fmt: skip

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
        """See ``SessionStore.append``: one transaction whatever the number of entries."""
        new_items = validate_entries(items, "items", self.limits.max_entry_bytes)
        new_segments = validate_entries(transcript, "transcript", self.limits.max_entry_bytes)
        validate_names(room, identity)
        lists = tuple(
            [(entry_id, self._codec.seal(room, identity, tag, raw)) for entry_id, raw, _ in new]
            for tag, new in ((TAG_ITEM, new_items), (TAG_SEGMENT, new_segments))
        )
        copies = ([c for *_, c in new_items], [c for *_, c in new_segments])
        bounds = (self.limits.max_entries, self.limits.max_list_bytes)

        def local() -> Awaitable[AppendResult]:
            return self._cache.append(room, identity, *copies, compact_through=compact_through)

        async def send() -> AppendResult:
            token = await resolve_fence(fence, stale_ok=True)
            added = await self._send(
                ops.append, room, identity, token, lists, bounds, self._retain(room, identity),
                self.max_records, compact_through,
            )  # fmt: skip
            self._note_evicted(added[3])
            appended = AppendResult(added[0], added[1], merged=added[2])
            result = self._note_merged(room, identity, appended)
            await self._mirror(room, identity, local)
            return result

        return await self._write("append", room, identity, send, local)

    async def set_gemini_handle(
        self,
        room: str,
        identity: str,
        handle: str,
        covered_item_ids: Sequence[str],
        *,
        fence: Fence = None,
    ) -> None:
        """See ``SessionStore.set_gemini_handle``; the issue time is the store's clock."""
        value = gemini_input(handle, covered_item_ids)
        validate_names(room, identity)
        updates = {F_GEMINI: self._codec.seal_value(room, identity, F_GEMINI, value)}

        def local() -> Awaitable[None]:
            return self._cache.set_gemini_handle(room, identity, value["handle"], value["covered"])

        await self._set("set_gemini_handle", room, identity, updates, fence, local)

    async def update_profile(
        self,
        room: str,
        identity: str,
        *,
        language: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        fence: Fence = None,
    ) -> None:
        """See ``SessionStore.update_profile``."""
        updates = profile_updates(self._codec, room, identity, language, metadata)

        def local() -> Awaitable[None]:
            return self._cache.update_profile(room, identity, language=language, metadata=metadata)

        await self._set("update_profile", room, identity, updates, fence, local)

    async def leave(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None
    ) -> None:
        """See ``SessionStore.leave``; the retention policy runs inside the leave's transaction
        (in the store's thread), so it should be quick."""
        check_session_id(session_id)
        validate_names(room, identity)

        def keep_ms(info: LeaveInfo) -> int:
            return ms(retention_for(self.retention_policy, self.retention, info))

        def local() -> Awaitable[None]:
            return self._cache.leave(room, identity, session_id)

        async def send() -> None:
            token = await resolve_fence(fence)
            pkey = participant_hash(room, identity)
            info = await self._db.write(
                ops.leave, pkey, (room, identity), token, session_id, keep_ms
            )
            if info is not None:
                self._emit("session_ended", room, identity, reconnect_count=info.reconnect_count)
            await self._mirror(room, identity, local)

        await self._write("leave", room, identity, send, local)

    async def load(self, room: str, identity: str) -> SessionRecord | None:
        """See ``SessionStore.load``; from memory while the file cannot answer."""
        validate_names(room, identity)
        if self._queue.busy:
            return await self._cache.load(room, identity)
        pkey = participant_hash(room, identity)
        try:
            found = await self._db.read(ops.load, pkey, after=self._decoder(room, identity))
        except StoreUnavailableError as exc:
            self._queue.mark_unavailable(exc)
            return await self._cache.load(room, identity)
        except _Unreadable as exc:
            await self._quarantine(room, identity, exc.rev, str(exc))
            return None
        if found is None:
            self._cache.forget(room, identity)
            return None
        self._cache.put_stored(*found)
        return found[0]

    async def acquire_lease(
        self, room: str, identity: str, owner: str, ttl: float, *, force: bool = False
    ) -> int:
        """See ``SessionStore.acquire_lease``; StoreUnavailableError while the file cannot
        answer (a lease nobody else can see would defeat its purpose)."""
        validate_names(room, identity)
        key = self.leases.participant(room, identity)
        return (await self.leases.acquire(key, owner, ttl, force=force)).token

    async def aclose(self) -> None:
        """Give queued writes a few seconds to land, then close the file."""
        await self._queue.aclose()
        self._db.close()

    def subscribe_events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event this process publishes from now on (see the module docstring):
        ``events.subscribe()``."""
        return self.events.subscribe()

    # -- internals ----------------------------------------------------------------------------

    async def _join(
        self, room: str, identity: str, session_id: str, fence: Fence, tail: int | None
    ) -> JoinOutcome:
        token = await resolve_fence(fence)
        for _ in range(2):
            try:
                kind, found, evicted = await self._send(
                    ops.join, room, identity, session_id, token, ms(self.active_ttl),
                    self.max_records, tail, after=self._join_decoder(room, identity),
                )  # fmt: skip
            except _Unreadable as exc:
                await self._quarantine(room, identity, exc.rev, str(exc))
                continue
            except CorruptRecordError as exc:  # refused before any change
                await self._quarantine(room, identity, b"", str(exc))
                continue
            self._note_evicted(evicted)
            self._cache.put_stored(*found)
            outcome = JoinOutcome(JoinKind(kind), found[0])
            if outcome.kind is JoinKind.RETURNING:
                self._emit(
                    "participant_returned", room, identity,
                    reconnect_count=outcome.record.reconnect_count,
                )  # fmt: skip
            return outcome
        raise CorruptRecordError("record unreadable right after quarantine")

    async def _set(
        self,
        name: str,
        room: str,
        identity: str,
        updates: dict[str, bytes],
        fence: Fence,
        local: Callable[[], Awaitable[None]],
    ) -> None:
        async def send() -> None:
            token = await resolve_fence(fence)
            evicted = await self._send(
                ops.set_fields, room, identity, token, updates, F_GEMINI in updates,
                self._retain(room, identity), self.max_records,
            )  # fmt: skip
            self._note_evicted(evicted)
            await self._mirror(room, identity, local)

        await self._write(name, room, identity, send, local)

    async def _send(self, op: Callable[..., T], room: str, identity: str, *args: Any,
                    after: Callable[[T], Any] | None = None) -> Any:  # fmt: skip
        """A participant write: ``op(conn, pkey, room_hash, who, *args)``, a corrupt record
        quarantined and the write tried once more; expired records swept now and then."""
        if self._monotonic() >= self._next_sweep:
            self._next_sweep = self._monotonic() + _SWEEP_EVERY_S
            await self._db.write(ops.sweep)
        head = (participant_hash(room, identity), room_hash(room), self._who(room, identity))
        try:
            return await self._db.write(op, *head, *args, after=after)
        except CorruptRecordError as exc:
            if op is ops.join:
                raise
            await self._quarantine(room, identity, b"", str(exc))
            return await self._db.write(op, *head, *args, after=after)

    def _decoder(self, room: str, identity: str) -> Callable[[ops.Stored | None], Any]:
        """Decode a stored record in the store's thread: (record, stored form) or None."""
        own = self._who(room, identity)

        def decode(found: ops.Stored | None) -> tuple[Any, ...] | None:
            if found is None:
                return None
            fields, items, segments = found
            try:
                record = self._codec.decode(room, identity, fields, items, segments, own)
            except CorruptRecordError as exc:
                raise _Unreadable(str(exc), fields.get(F_REV, b"")) from None
            return record, fields, items, segments

        return decode

    def _join_decoder(self, room: str, identity: str) -> Callable[[Any], Any]:
        decode = self._decoder(room, identity)
        return lambda joined: (joined[0], decode(joined[1]), joined[2])

    async def _quarantine(self, room: str, identity: str, rev: bytes, reason: str) -> None:
        pkey = participant_hash(room, identity)
        qkey = f"{pkey}:q{uuid.uuid4().hex[:12]}"
        note = QuarantineNote(reason, identity_hash(identity), room_hash(room), self._clock())
        moved = await self._db.write(
            ops.quarantine, pkey, qkey, rev, note.to_json(), ms(self.quarantine_ttl)
        )
        self._cache.forget(room, identity)
        logger.error(
            "unreadable session record moved to quarantine; the participant starts fresh",
            extra={"room": room, "participant": note.participant, "reason": reason,
                   "quarantine_key": qkey, "moved": moved},
        )  # fmt: skip

    def _retain(self, room: str, identity: str) -> ops.Retain:
        """How long a write keeps the record: the retention rule for a participant away."""

        def away_ms(info: LeaveInfo, remaining_ms: int) -> int:
            policy, base = self.retention_policy, self.retention
            return ms(kept_after_write(remaining_ms / 1000, base, policy, info))

        return ops.Retain((room, identity), ms(self.active_ttl), away_ms)

    def _note_evicted(self, count: int) -> None:
        if count:
            self.evicted += count
            logger.warning(
                "session store full: evicted the least recently written records",
                extra={"count": count, "max_records": self.max_records,
                       "evicted_total": self.evicted},
            )  # fmt: skip

    def _emit(self, event_type: str, room: str, identity: str, **fields: Any) -> None:
        self.events.emit(event_type, room, identity, **fields)
