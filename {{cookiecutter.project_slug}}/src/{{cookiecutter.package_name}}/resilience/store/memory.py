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
    InvalidInputError,
    JoinKind,
    JoinOutcome,
    LeaseHeldError,
    LeaveInfo,
    RetentionPolicy,
    StaleLeaseError,
    retention_for,
)
from .crypto import KeyRing
from .records import (
    F_ACTIVE,
    F_GEMINI,
    F_GEMINI_AT,
    F_JOINED,
    F_LEFT,
    F_RECONNECTS,
    F_REV,
    F_SEEN,
    F_VERSION,
    F_WHO,
    SCHEMA_VERSION,
    TAG_ITEM,
    TAG_SEGMENT,
    RecordCodec,
    SessionRecord,
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


@dataclass
class _Lease:
    owner: str
    token: int
    expires_at: float


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
        quarantine_ttl: float = 7 * 86400.0,
        as_cache: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_records < 1:
            raise InvalidInputError("max_records must be at least 1")
        self.retention = retention
        self.active_ttl = active_ttl
        self.max_records = max_records
        self.retention_policy = retention_policy
        self.quarantine_ttl = quarantine_ttl
        self._codec = RecordCodec(keyring)
        self._cache = as_cache  # a cache for RedisStore: no fences, no events, quiet evictions
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._quarantine: OrderedDict[str, tuple[str, _Entry, float]] = OrderedDict()
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._last_token = 0
        self._last_sweep = 0.0
        self.evicted = 0

    # -- the SessionStore operations -------------------------------------------------------

    async def join(
        self, room: str, identity: str, session_id: str, *, fence: int | None = None
    ) -> JoinOutcome:
        """See ``SessionStore.join``."""
        check_session_id(session_id)
        key = self._prepare(room, identity, fence)
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
        fence: int | None = None,
    ) -> AppendResult:
        """See ``SessionStore.append``."""
        new_items = validate_entries(items, "items")
        new_segments = validate_entries(transcript, "transcript")
        key = self._prepare(room, identity, fence)
        now = self._now_ms()
        entry = (self._live(key) or self._create(key, "", now)).mutable()
        added = [0, 0]
        for slot, (entries, tag, target) in enumerate(
            ((new_items, TAG_ITEM, entry.items), (new_segments, TAG_SEGMENT, entry.transcript))
        ):
            for entry_id, raw, _ in entries:
                marker = f"{tag.decode()}:{entry_id}"
                if marker not in entry.ids:
                    entry.ids.add(marker)
                    target.append(self._codec.seal(room, identity, tag, raw))
                    added[slot] += 1
        self._refresh(entry, now)
        return AppendResult(*added)

    async def set_gemini_handle(
        self,
        room: str,
        identity: str,
        handle: str,
        covered_item_ids: Sequence[str],
        *,
        fence: int | None = None,
    ) -> None:
        """See ``SessionStore.set_gemini_handle``."""
        value = gemini_input(handle, covered_item_ids)
        key = self._prepare(room, identity, fence)
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
        fence: int | None = None,
    ) -> None:
        """See ``SessionStore.update_profile``."""
        updates = profile_updates(self._codec, room, identity, language, metadata)
        key = self._prepare(room, identity, fence)
        now = self._now_ms()
        entry = self._live(key) or self._create(key, "", now)
        entry.fields.update(updates)
        self._refresh(entry, now)

    async def leave(
        self, room: str, identity: str, session_id: str, *, fence: int | None = None
    ) -> None:
        """See ``SessionStore.leave``."""
        check_session_id(session_id)
        key = self._prepare(room, identity, fence)
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
        """See ``SessionStore.list_records``."""
        self._sweep()
        keys = [k for k in self._entries if room is None or k[0] == room]
        records = [await self.load(*k) for k in keys]
        return [r for r in records if r is not None]

    async def purge(self, room: str, identity: str | None = None) -> int:
        """See ``SessionStore.purge``."""
        keys = [k for k in self._entries if k[0] == room and (identity is None or k[1] == identity)]
        for key in keys:
            del self._entries[key]
            self._leases.pop(key, None)
        return len(keys)

    async def acquire_lease(
        self, room: str, identity: str, owner: str, ttl: float, *, force: bool = False
    ) -> int:
        """See ``SessionStore.acquire_lease``."""
        validate_names(room, identity)
        if ttl <= 0:
            raise InvalidInputError("lease ttl must be positive")
        key = (room, identity)
        lease = self._live_lease(key)
        mono = time.monotonic()
        if lease is not None and lease.owner == owner and not force:
            lease.expires_at = mono + ttl
            return lease.token
        if lease is not None and not force:
            raise LeaseHeldError(
                "participant lease is held by another owner",
                owner=lease.owner,
                expires_in=lease.expires_at - mono,
            )
        # tokens never repeat or go back, even after the lease expired and was forgotten
        token = max(self._last_token + 1, int(self._clock() * 1_000_000))
        self._last_token = token
        self._leases[key] = _Lease(owner, token, mono + ttl)
        return token

    async def release_lease(self, room: str, identity: str, owner: str, token: int) -> bool:
        """See ``SessionStore.release_lease``."""
        key = (room, identity)
        lease = self._live_lease(key)
        if lease is None or lease.owner != owner or lease.token != token:
            return False
        del self._leases[key]
        return True

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

    def quarantined(self) -> list[tuple[str, str]]:
        """(participant hash, reason) of every record moved aside, oldest first."""
        return [(name.split("#")[0], reason) for name, (reason, _, _) in self._quarantine.items()]

    # -- internals ----------------------------------------------------------------------------

    def _prepare(self, room: str, identity: str, fence: int | None) -> tuple[str, str]:
        validate_names(room, identity)
        self._sweep()
        key = (room, identity)
        if not self._cache:
            self._check_fence(key, fence)
        return key

    def _check_fence(self, key: tuple[str, str], fence: int | None) -> None:
        lease = self._live_lease(key)
        if fence is None and lease is not None:
            raise StaleLeaseError("this participant's lease is held; pass its fencing token")
        if fence is not None and (lease is None or lease.token != fence):
            raise StaleLeaseError(f"fencing token {fence} is not the participant's live lease")

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

    def _live_lease(self, key: tuple[str, str]) -> _Lease | None:
        lease = self._leases.get(key)
        if lease is not None and lease.expires_at <= time.monotonic():
            del self._leases[key]
            return None
        return lease

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
        name = f"{participant_hash(*key)}#{time.monotonic_ns()}"
        self._quarantine[name] = (reason, entry, time.monotonic() + self.quarantine_ttl)
        while len(self._quarantine) > _MAX_QUARANTINED:
            self._quarantine.popitem(last=False)
        logger.error(
            "unreadable session record moved to quarantine; the participant starts fresh",
            extra={"room": key[0], "participant": identity_hash(key[1]), "reason": reason},
        )

    def _sweep(self) -> None:
        mono = time.monotonic()
        if mono - self._last_sweep < _SWEEP_INTERVAL:
            return
        self._last_sweep = mono
        for key in [k for k, e in self._entries.items() if e.expires_at <= mono]:
            del self._entries[key]
        for key in [k for k, lease in self._leases.items() if lease.expires_at <= mono]:
            del self._leases[key]
        for name in [n for n, (_, _, exp) in self._quarantine.items() if exp <= mono]:
            del self._quarantine[name]

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
