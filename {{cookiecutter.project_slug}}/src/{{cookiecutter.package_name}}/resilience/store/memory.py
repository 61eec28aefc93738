"""In-process session store: records kept by this process only (``SESSION_DB_PATH=:memory:``:
tests and ``simulate``).

It keeps records in the same stored form as the other stores (_codec.py) and follows the same
rules, so a worker behaves the same with any. It is bounded: at most ``max_records`` records,
the least recently used evicted first (with a warning), and expired records are swept as the
store is used, so a long-running worker does not grow without limit. Its clocks are arguments
(``clock``: wall, for the record's times; ``monotonic``: for expiry), so a test can move time.

The Redis and SQLite stores also use one, with ``as_cache=True``, as their copy of the last
known records.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from ._codec import (
    F_ACTIVE,
    F_GEMINI,
    F_GEMINI_AT,
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
    TAG_ITEM,
    TAG_SEGMENT,
    RecordCodec,
)
from ._crypto import KeyRing
from ._events import LocalEvents
from ._keys import identity_hash, participant_hash, room_hash
from ._memory_entry import MemoryEntry
from ._quarantine import QuarantinedRecord, QuarantineNote, QuarantineShelf
from ._validate import (
    check_session_id,
    gemini_input,
    profile_updates,
    validate_entries,
    validate_names,
)
from .admin import Inventory, Purged, Unreadable
from .base import (
    SCHEMA_VERSION,
    AppendResult,
    CorruptRecordError,
    Fence,
    InvalidInputError,
    JoinKind,
    JoinOutcome,
    RetentionPolicy,
    SessionRecord,
    StaleLeaseError,
    StorageLimits,
    StoreError,
    resolve_fence,
    retention_for,
)
from .leases import LocalLeaseTable
from .retention import kept_after_write

__all__ = ["MemoryStore"]

logger = logging.getLogger(__name__)

_SWEEP_INTERVAL = 1.0
_MAX_QUARANTINED = 1000


class MemoryStore:
    """A bounded in-process ``SessionStore`` (one worker; lost when the process exits)."""

    def __init__(
        self,
        *,
        retention: float = 300.0,
        active_ttl: float = 3600.0,
        max_records: int = 10_000,
        keyring: KeyRing | None = None,
        retention_policy: RetentionPolicy | None = None,
        quarantine_ttl: float | None = None,
        as_cache: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        limits: StorageLimits | None = None,
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
        self._codec = RecordCodec(keyring)
        self._cache = as_cache  # a cache for another store: no fences, no events, quiet evictions
        self._clock = clock
        self._monotonic = monotonic
        self._entries: OrderedDict[tuple[str, str], MemoryEntry] = OrderedDict()
        self.leases = LocalLeaseTable(monotonic=monotonic, clock=clock)
        self._quarantine = QuarantineShelf(
            self.quarantine_ttl, _MAX_QUARANTINED, clock=clock, monotonic=monotonic
        )
        self.events = LocalEvents(clock)
        self.admin = MemoryAdmin(self)
        self._last_sweep = 0.0
        self.evicted = 0

    # -- SessionStore ----------------------------------------------------------------------

    async def join(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None,
        transcript_tail: int | None = None,
    ) -> JoinOutcome:  # fmt: skip
        """See ``SessionStore.join``."""
        check_session_id(session_id, transcript_tail)
        key = self._prepare(room, identity, await resolve_fence(fence))
        now = self._now_ms()
        entry = self._live(key)
        if entry is None:
            entry, kind = self._create(key, session_id, now), JoinKind.NEW
        elif entry.fields.get(F_ACTIVE) == session_id.encode():
            kind = JoinKind.DUPLICATE
        else:
            kind = JoinKind.RETURNING
            entry.fields[F_RECONNECTS] = str(int(entry.fields[F_RECONNECTS]) + 1).encode()
            entry.fields[F_ACTIVE] = session_id.encode()
            entry.fields.pop(F_LEFT, None)
        self._touch(entry, now, self.active_ttl)
        try:
            record = self._decode(key, entry, transcript_tail)
        except CorruptRecordError as exc:
            self._quarantine_entry(key, str(exc))
            return await self.join(room, identity, session_id, fence=fence)
        if kind is JoinKind.RETURNING:
            self._emit(
                "participant_returned", room, identity, reconnect_count=record.reconnect_count
            )
        return JoinOutcome(kind, record)

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
        """See ``SessionStore.append``."""
        new_items = validate_entries(items, "items", self.limits.max_entry_bytes)
        new_segments = validate_entries(transcript, "transcript", self.limits.max_entry_bytes)
        fence = await resolve_fence(fence, stale_ok=True)
        try:
            key, merged = self._prepare(room, identity, fence), False
        except StaleLeaseError:
            # items are append-only with unique ids: a stale writer's are merged, never lost
            key, merged = (room, identity), True
        now = self._now_ms()
        entry = (self._live(key) or self._create(key, "", now)).mutable()
        sealed, limits = (self._codec, room, identity), self.limits
        added = (
            entry.extend(sealed, new_items, TAG_ITEM, entry.items,
                         (F_ITEM_BYTES, F_ITEMS_TRIMMED), limits),
            entry.extend(sealed, new_segments, TAG_SEGMENT, entry.transcript,
                         (F_SEGMENT_BYTES, F_SEGMENTS_TRIMMED), limits),
        )  # fmt: skip
        if compact_through is not None and not merged:  # a stale writer drops nothing
            entry.compact(sealed, compact_through)
        self._refresh(key, entry, now)
        return AppendResult(*added, merged=merged)

    async def set_gemini_handle(
        self,
        room: str,
        identity: str,
        handle: str,
        covered_item_ids: Sequence[str],
        *,
        fence: Fence = None,
    ) -> None:
        """See ``SessionStore.set_gemini_handle``."""
        value = gemini_input(handle, covered_item_ids)
        key = self._prepare(room, identity, await resolve_fence(fence))
        now = self._now_ms()
        entry = self._live(key) or self._create(key, "", now)
        entry.fields[F_GEMINI] = self._codec.seal_value(room, identity, F_GEMINI, value)
        entry.fields[F_GEMINI_AT] = str(now).encode()
        self._refresh(key, entry, now)

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
        key = self._prepare(room, identity, await resolve_fence(fence))
        now = self._now_ms()
        entry = self._live(key) or self._create(key, "", now)
        entry.fields.update(updates)
        self._refresh(key, entry, now)

    async def leave(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None
    ) -> None:
        """See ``SessionStore.leave``."""
        check_session_id(session_id)
        key = self._prepare(room, identity, await resolve_fence(fence))
        entry = self._live(key)
        # a repeated leave, or one for a session already replaced by a newer join, is a no-op
        if entry is None or entry.fields.get(F_ACTIVE) != session_id.encode():
            return
        now = self._now_ms()
        entry.fields[F_ACTIVE] = b""
        entry.fields[F_LEFT] = str(now).encode()
        info = entry.leave_info(key, now)
        self._touch(entry, now, retention_for(self.retention_policy, self.retention, info))
        self._emit("session_ended", room, identity, reconnect_count=info.reconnect_count)

    async def load(self, room: str, identity: str) -> SessionRecord | None:
        """See ``SessionStore.load``."""
        validate_names(room, identity)
        self._sweep()
        key = (room, identity)
        entry = self._live(key)
        if entry is None:
            return None
        try:
            return self._decode(key, entry)
        except CorruptRecordError as exc:
            self._quarantine_entry(key, str(exc))
            return None

    async def acquire_lease(
        self, room: str, identity: str, owner: str, ttl: float, *, force: bool = False
    ) -> int:
        """See ``SessionStore.acquire_lease`` (the rules are in leases.py)."""
        validate_names(room, identity)
        key = self.leases.participant(room, identity)
        return (await self.leases.acquire(key, owner, ttl, force=force)).token

    async def aclose(self) -> None:
        """Nothing to release; records stay readable until the object is dropped."""

    def subscribe_events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event of this store from now on (in this process): ``events.subscribe()``."""
        return self.events.subscribe()

    # -- what a store keeping its copy of the last known records uses ------------------------

    def put_stored(
        self,
        record: SessionRecord,
        fields: dict[str, bytes],
        items: Sequence[bytes],
        transcript: Sequence[bytes],
    ) -> None:
        """Keep a record read elsewhere, in its stored form (sealed with this store's key ring).

        The sequences are kept as given (not copied) until the first append: a restore that is
        never written to costs nothing more.
        """
        # the sequences stand in for the entry's lists until ``mutable()`` copies them
        entry = MemoryEntry(dict(fields), items, transcript, seed=record)  # type: ignore[arg-type]
        ttl = self.active_ttl if record.active_session else self.retention
        entry.expires_at = self._monotonic() + ttl
        self._insert((record.room, record.identity), entry)

    def add_older_lines(self, room: str, identity: str, stored: Sequence[bytes]) -> None:
        """Complete a held record's transcript with its older lines (see ``MemoryEntry``)."""
        if (entry := self._live((room, identity))) is not None:
            entry.add_older_lines(stored)

    def has_record(self, room: str, identity: str) -> bool:
        """Whether a live record is held for the participant."""
        return self._live((room, identity)) is not None

    def forget(self, room: str, identity: str | None = None) -> None:
        """Drop held records (all of a room when identity is None)."""
        for key in [k for k in self._entries if k[0] == room and identity in (None, k[1])]:
            del self._entries[key]

    # -- internals ----------------------------------------------------------------------------

    def _prepare(self, room: str, identity: str, fence: int | None) -> tuple[str, str]:
        # callers resolve a callable fence first (resolve_fence)
        validate_names(room, identity)
        self._sweep()
        key = (room, identity)
        if not self._cache:
            self.leases.check_fence(self.leases.participant(room, identity), fence)
        return key

    def _live(self, key: tuple[str, str]) -> MemoryEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._monotonic():
            del self._entries[key]
            return None
        if not entry.version_ok():
            self._quarantine_entry(key, "unknown schema version")
            return None
        self._entries.move_to_end(key)
        return entry

    def _create(self, key: tuple[str, str], session_id: str, now: int) -> MemoryEntry:
        room, identity = key
        fields = {
            F_VERSION: str(SCHEMA_VERSION).encode(),
            F_JOINED: str(now).encode(),
            F_SEEN: str(now).encode(),
            F_RECONNECTS: b"0",
            F_ACTIVE: session_id.encode(),
            F_REV: b"0",
            F_WHO: self._codec.seal_who(participant_hash(room, identity), room, identity),
        }
        entry = MemoryEntry(fields)
        self._insert(key, entry)
        return entry

    def _insert(self, key: tuple[str, str], entry: MemoryEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_records:
            (room, identity), _ = self._entries.popitem(last=False)
            self.evicted += 1
            logger.log(
                logging.DEBUG if self._cache else logging.WARNING,
                "session store full: evicted the least recently used record",
                extra={
                    "room": room,
                    "participant": identity_hash(identity),
                    "max_records": self.max_records,
                    "evicted_total": self.evicted,
                },
            )

    def _touch(self, entry: MemoryEntry, now: int, ttl: float) -> None:
        entry.fields[F_SEEN] = str(now).encode()
        entry.fields[F_REV] = str(int(entry.fields.get(F_REV, b"0")) + 1).encode()
        entry.expires_at = self._monotonic() + ttl

    def _refresh(self, key: tuple[str, str], entry: MemoryEntry, now: int) -> None:
        # an active record lives active_ttl past its last write; a left one keeps at least
        # the retention its engagement earns (late transcript segments may follow the leave)
        if entry.fields.get(F_ACTIVE):
            self._touch(entry, now, self.active_ttl)
        else:
            remaining = entry.expires_at - self._monotonic()
            info = entry.leave_info(key, now)
            keep = kept_after_write(remaining, self.retention, self.retention_policy, info)
            self._touch(entry, now, keep)

    def _decode(
        self, key: tuple[str, str], entry: MemoryEntry, tail: int | None = None
    ) -> SessionRecord:
        transcript = entry.transcript
        if tail is not None and len(transcript) > tail:
            transcript = transcript[len(transcript) - tail :]
        return self._codec.decode(key[0], key[1], entry.fields, entry.items, transcript)

    def _quarantine_entry(self, key: tuple[str, str], reason: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        room, identity = key
        note = QuarantineNote(reason, identity_hash(identity), room_hash(room), self._clock())
        name = self._quarantine.put(room, identity, note, entry)
        logger.error(
            "unreadable session record moved to quarantine; the participant starts fresh",
            extra={"room": room, "participant": note.participant, "reason": reason,
                   "quarantine_key": name},
        )  # fmt: skip

    def _sweep(self) -> None:
        mono = self._monotonic()
        if mono - self._last_sweep < _SWEEP_INTERVAL:
            return
        self._last_sweep = mono
        for key in [k for k, e in self._entries.items() if e.expires_at <= mono]:
            del self._entries[key]
        self.leases.sweep()
        self._quarantine.sweep()

    def _emit(self, event_type: str, room: str, identity: str, **fields: Any) -> None:
        if not self._cache:
            self.events.emit(event_type, room, identity, **fields)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


class MemoryAdmin:
    """Operator access to a memory store, as ``RedisAdmin`` / ``SqliteAdmin`` give it to theirs:
    reads never move or change a record."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    async def inventory(self, room: str | None = None) -> Inventory:
        """Every live record (of one room): the readable and the unreadable ones."""
        store, found = self._store, Inventory()
        store._sweep()
        mono = store._monotonic()
        for key, entry in list(store._entries.items()):
            if (room is None or key[0] == room) and entry.expires_at > mono:
                try:
                    found.records.append(store._decode(key, entry))
                except StoreError as exc:  # corrupt, or under a missing key: left as it is
                    found.unreadable.append(Unreadable.of(participant_hash(*key), key[0], exc))
        return found

    async def purge(self, room: str, identity: str | None = None) -> Purged:
        """Delete one participant's record, or a whole room's, with their quarantined copies."""
        store = self._store
        keys = [k for k in store._entries if k[0] == room and identity in (None, k[1])]
        for key in keys:
            del store._entries[key]
            store.leases.forget(store.leases.participant(*key))
        return Purged(len(keys), store._quarantine.purge(room, identity))

    async def quarantined(self, room: str | None = None) -> list[QuarantinedRecord]:
        """Every record moved aside (of one room) and not expired yet, oldest first."""
        return self._store._quarantine.listing(room)
