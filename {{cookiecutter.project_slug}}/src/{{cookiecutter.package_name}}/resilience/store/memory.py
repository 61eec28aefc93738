"""In-process session store: the default when no Redis is configured.

It keeps records in the same stored form as Redis (see records.py) and follows the same rules,
so a worker behaves the same with either. It is bounded: at most ``max_records`` records, the
least recently used evicted first (with a warning), and expired records are swept as the store
is used, so a long-running worker does not grow without limit.

The Redis store also uses one, with ``as_cache=True``, as its copy of the last known records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import (
    AppendResult,
    CorruptRecordError,
    Fence,
    InvalidInputError,
    JoinKind,
    JoinOutcome,
    LeaseHeldError,
    LeaveInfo,
    RetentionPolicy,
    StaleLeaseError,
    StoreError,
    resolve_fence,
    retention_for,
)
from .crypto import KeyRing
from .leases import LeaseTable, check_ttl
from .quarantine import QuarantinedRecord, QuarantineNote, QuarantineShelf, room_hash
from .records import (
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
    SCHEMA_VERSION,
    TAG_ITEM,
    TAG_SEGMENT,
    RecordCodec,
    SessionRecord,
    StorageLimits,
    check_session_id,
    gemini_input,
    identity_hash,
    make_event,
    participant_hash,
    profile_updates,
    validate_entries,
    validate_names,
)

__all__ = ["MemoryStore"]

logger = logging.getLogger(__name__)

_SWEEP_INTERVAL = 1.0
_MAX_QUARANTINED = 1000


@dataclass
class _Entry:
    fields: dict[str, bytes]
    items: list[bytes] = field(default_factory=list)
    transcript: list[bytes] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    expires_at: float = 0.0
    # a record kept by put_stored: its ids and plain lists are built on the first append
    seed: SessionRecord | None = None

    def mutable(self) -> _Entry:
        """Make items/transcript plain lists and fill ids (deferred by put_stored)."""
        if self.seed is not None:
            self.items, self.transcript = list(self.items), list(self.transcript)
            self.ids = {"item:" + i["id"] for i in self.seed.items}
            self.ids.update("seg:" + s["id"] for s in self.seed.transcript)
            self.seed = None
        return self


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
        self._cache = as_cache  # a cache for RedisStore: no fences, no events, quiet evictions
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._leases = LeaseTable()
        self._quarantine = QuarantineShelf(self.quarantine_ttl, _MAX_QUARANTINED)
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._last_sweep = 0.0
        self.evicted = 0

    # -- the SessionStore operations -------------------------------------------------------

    async def join(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None
    ) -> JoinOutcome:
        """See ``SessionStore.join``."""
        check_session_id(session_id)
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
            record = self._decode(key, entry)
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
        added = [0, 0]
        for slot, (entries, tag, target, bytes_field, trimmed_field) in enumerate(
            (
                (new_items, TAG_ITEM, entry.items, F_ITEM_BYTES, F_ITEMS_TRIMMED),
                (new_segments, TAG_SEGMENT, entry.transcript, F_SEGMENT_BYTES, F_SEGMENTS_TRIMMED),
            )
        ):
            size = int(entry.fields.get(bytes_field, b"0"))
            for entry_id, raw, _ in entries:
                marker = f"{tag.decode()}:{entry_id}"
                if marker not in entry.ids:
                    entry.ids.add(marker)
                    target.append(self._codec.seal(room, identity, tag, raw))
                    size += len(target[-1])
                    added[slot] += 1
            # the same bounds as the Redis APPEND script: oldest entries go first
            trimmed = 0
            limits = self.limits
            while len(target) - trimmed > 1 and (
                len(target) - trimmed > limits.max_entries or size > limits.max_list_bytes
            ):
                size -= len(target[trimmed])
                trimmed += 1
            if trimmed:
                del target[:trimmed]
                done = int(entry.fields.get(trimmed_field, b"0"))
                entry.fields[trimmed_field] = str(done + trimmed).encode()
            entry.fields[bytes_field] = str(size).encode()
        self._refresh(entry, now)
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
        self._refresh(entry, now)

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
        self._refresh(entry, now)

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
        info = LeaveInfo(
            room=room,
            identity=identity,
            item_count=len(entry.items),
            transcript_count=len(entry.transcript),
            reconnect_count=int(entry.fields[F_RECONNECTS]),
            joined_at=int(entry.fields[F_JOINED]) / 1000,
            left_at=now / 1000,
        )
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

    async def list_records(self, room: str | None = None) -> list[SessionRecord]:
        """See ``SessionStore.list_records``; read-only: an unreadable record is skipped."""
        self._sweep()
        mono = time.monotonic()
        records = []
        for key, entry in list(self._entries.items()):
            if (room is None or key[0] == room) and entry.expires_at > mono:
                try:
                    records.append(self._decode(key, entry))
                except StoreError:  # corrupt, or under a missing key: reads never move it
                    continue
        return records

    async def purge(self, room: str, identity: str | None = None) -> int:
        """See ``SessionStore.purge``; quarantined copies go too."""
        keys = [k for k in self._entries if k[0] == room and (identity is None or k[1] == identity)]
        for key in keys:
            del self._entries[key]
            self._leases.forget(key)
        self._quarantine.purge(room, identity)
        return len(keys)

    async def acquire_lease(
        self, room: str, identity: str, owner: str, ttl: float, *, force: bool = False
    ) -> int:
        """See ``SessionStore.acquire_lease`` (the rules are in leases.py)."""
        validate_names(room, identity)
        check_ttl(ttl)
        try:
            return self._leases.acquire((room, identity), owner, ttl, force=force)
        except LeaseHeldError as exc:
            raise LeaseHeldError(
                "participant lease is held by another owner",
                owner=exc.owner,
                expires_in=exc.expires_in,
            ) from None

    async def release_lease(self, room: str, identity: str, owner: str, token: int) -> bool:
        """See ``SessionStore.release_lease``."""
        return self._leases.release((room, identity), owner, token)

    async def publish_event(self, event_type: str, room: str, identity: str, **fields: Any) -> None:
        """See ``SessionStore.publish_event`` (delivered to ``subscribe_events`` iterators)."""
        self._emit(event_type, room, identity, **fields)

    async def subscribe_events(self) -> AsyncIterator[dict[str, Any]]:
        """Yield every event published from now on (in this process)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    async def aclose(self) -> None:
        """Nothing to release; records stay readable until the object is dropped."""

    # -- used by RedisStore to keep its copy of the last known records ----------------------

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
        entry = _Entry(dict(fields), items, transcript, seed=record)  # type: ignore[arg-type]
        ttl = self.active_ttl if record.active_session else self.retention
        entry.expires_at = time.monotonic() + ttl
        self._insert((record.room, record.identity), entry)

    def has_record(self, room: str, identity: str) -> bool:
        """Whether a live record is held for the participant."""
        return self._live((room, identity)) is not None

    def forget(self, room: str, identity: str | None = None) -> None:
        """Drop held records (all of a room when identity is None)."""
        for key in [k for k in self._entries if k[0] == room and identity in (None, k[1])]:
            del self._entries[key]

    def quarantined(self, room: str | None = None) -> list[QuarantinedRecord]:
        """Every record moved aside (of one room) and not expired yet, oldest first."""
        return self._quarantine.listing(room)

    # -- internals ----------------------------------------------------------------------------

    def _prepare(self, room: str, identity: str, fence: int | None) -> tuple[str, str]:
        # callers resolve a callable fence first (resolve_fence)
        validate_names(room, identity)
        self._sweep()
        key = (room, identity)
        if not self._cache:
            self._leases.check_fence(key, fence)
        return key

    def _live(self, key: tuple[str, str]) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= time.monotonic():
            del self._entries[key]
            return None
        if not _version_ok(entry):
            self._quarantine_entry(key, "unknown schema version")
            return None
        self._entries.move_to_end(key)
        return entry

    def _create(self, key: tuple[str, str], session_id: str, now: int) -> _Entry:
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
        entry = _Entry(fields)
        self._insert(key, entry)
        return entry

    def _insert(self, key: tuple[str, str], entry: _Entry) -> None:
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

    def _touch(self, entry: _Entry, now: int, ttl: float) -> None:
        entry.fields[F_SEEN] = str(now).encode()
        entry.fields[F_REV] = str(int(entry.fields.get(F_REV, b"0")) + 1).encode()
        entry.expires_at = time.monotonic() + ttl

    def _refresh(self, entry: _Entry, now: int) -> None:
        # an active record lives active_ttl past its last write; a left one keeps at least
        # its retention (late transcript segments may arrive after the leave)
        if entry.fields.get(F_ACTIVE):
            self._touch(entry, now, self.active_ttl)
        else:
            remaining = entry.expires_at - time.monotonic()
            self._touch(entry, now, max(remaining, self.retention))

    def _decode(self, key: tuple[str, str], entry: _Entry) -> SessionRecord:
        return self._codec.decode(key[0], key[1], entry.fields, entry.items, entry.transcript)

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
        mono = time.monotonic()
        if mono - self._last_sweep < _SWEEP_INTERVAL:
            return
        self._last_sweep = mono
        for key in [k for k, e in self._entries.items() if e.expires_at <= mono]:
            del self._entries[key]
        self._leases.sweep()
        self._quarantine.sweep()

    def _emit(self, event_type: str, room: str, identity: str, **fields: Any) -> None:
        if self._cache:
            return
        event = make_event(event_type, room, identity, self._clock(), **fields)
        for queue in list(self._subscribers):
            if not queue.full():
                queue.put_nowait(event)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _version_ok(entry: _Entry) -> bool:
    return entry.fields.get(F_VERSION, b"") == str(SCHEMA_VERSION).encode()
