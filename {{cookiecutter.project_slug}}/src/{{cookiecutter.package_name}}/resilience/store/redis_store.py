"""Redis session store: records shared by every worker, on Redis's clock.

Each operation is one Lua script call (one round trip, atomic); see redis_scripts.py for the
key layout. When Redis cannot answer, operations do not fail: reads come from the last known
records (an in-process MemoryStore used as a cache) and writes are applied there and queued
(write_queue.py) until Redis is back. Only leases refuse to work without Redis, because a lease
nobody else can see would defeat its purpose.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.exceptions as rex

from . import redis_scripts
from .base import (
    EVENTS_CHANNEL_SUFFIX,
    AppendResult,
    CorruptRecordError,
    InvalidInputError,
    JoinKind,
    JoinOutcome,
    LeaseHeldError,
    LeaveInfo,
    RetentionPolicy,
    StaleLeaseError,
    StoreUnavailableError,
    retention_for,
)
from .crypto import KeyRing
from .memory import MemoryStore
from .records import (
    F_GEMINI,
    F_REV,
    SCHEMA_VERSION,
    TAG_ITEM,
    TAG_SEGMENT,
    Framed,
    RecordCodec,
    SessionRecord,
    check_session_id,
    gemini_input,
    identity_hash,
    make_event,
    ms,
    participant_hash,
    profile_updates,
    validate_entries,
    validate_names,
)
from .redis_client import UNAVAILABLE, ParticipantKeys, keys_for_tag, participant_keys
from .write_queue import PendingWrite, WriteQueue

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_WHO_CACHE = 4096
_SCRIPTS = ("JOIN", "APPEND", "SET", "LEAVE", "EXTEND", "LOAD", "QUARANTINE", "ACQUIRE", "RELEASE")


class RedisStore:
    """``SessionStore`` on Redis (standalone, Sentinel or Cluster) via one pooled client."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "lkagent",
        retention: float = 300.0,
        active_ttl: float = 3600.0,
        keyring: KeyRing | None = None,
        retention_policy: RetentionPolicy | None = None,
        quarantine_ttl: float = 7 * 86400.0,
        cache_records: int = 1000,
        max_queued_writes: int = 10_000,
    ) -> None:
        if not _PREFIX.match(prefix):
            raise InvalidInputError("store prefix must be 1-64 letters, digits, '_', '.', '-'")
        self.prefix = prefix
        self.channel = prefix + EVENTS_CHANNEL_SUFFIX
        self.retention = retention
        self.active_ttl = active_ttl
        self.retention_policy = retention_policy
        self.quarantine_ttl = quarantine_ttl
        self._client = client
        self._codec = RecordCodec(keyring)
        self._who_cache: dict[tuple[str, str], bytes] = {}
        self._cache = MemoryStore(
            retention=retention,
            active_ttl=active_ttl,
            max_records=cache_records,
            keyring=keyring,  # holds Redis's stored form as is, so nothing is re-encoded
            as_cache=True,  # no retention policy: Redis applies it when the leave lands
        )
        unavailable = (*UNAVAILABLE, rex.OutOfMemoryError)
        self._unavailable = unavailable
        self._queue = WriteQueue(
            probe=client.ping, unavailable=unavailable, max_writes=max_queued_writes
        )
        self._scripts = {n: client.register_script(getattr(redis_scripts, n)) for n in _SCRIPTS}

    @property
    def pending_writes(self) -> int:
        """Writes waiting for Redis (0 when healthy)."""
        return len(self._queue)

    @property
    def write_queue(self) -> WriteQueue:
        """The replay queue (counters: replayed, dropped, refused, outages)."""
        return self._queue

    async def wait_flushed(self, max_wait: float | None = None) -> bool:
        """Wait until Redis is reachable and every queued write has landed; False on timeout."""
        return await self._queue.wait_idle(max_wait)

    # -- SessionStore ------------------------------------------------------------------------

    async def join(
        self, room: str, identity: str, session_id: str, *, fence: int | None = None
    ) -> JoinOutcome:
        """See ``SessionStore.join``; join and load are one script call."""
        check_session_id(session_id)
        validate_names(room, identity)
        keys = participant_keys(self.prefix, room, identity)
        who = self._who(room, identity)
        args = [
            _fence(fence),
            SCHEMA_VERSION,
            session_id,
            ms(self.active_ttl),
            who,
            self.channel,
            _event_head("participant_returned", room, identity),
        ]

        stored: list[Any] = []

        async def send() -> JoinOutcome:
            for _ in range(2):
                rev = ""
                try:
                    reply = await self._eval("JOIN", keys, args)
                    fields, items, segments = _unframe(reply)
                    rev = fields.get(F_REV, b"").decode()
                    record = self._codec.decode(room, identity, fields, items, segments, who)
                except CorruptRecordError as exc:
                    await self._quarantine(keys, room, identity, rev, str(exc))
                    continue
                stored[:] = [record, fields, items, segments]
                return JoinOutcome(JoinKind(reply[0].decode()), record)
            raise CorruptRecordError("record unreadable right after quarantine")

        async def remember(outcome: JoinOutcome) -> None:
            self._cache.put_stored(*stored)

        return await self._write(
            "join",
            room,
            identity,
            send,
            lambda: self._cache.join(room, identity, session_id),
            remember,
        )

    async def append(
        self,
        room: str,
        identity: str,
        items: Sequence[Mapping[str, Any]] = (),
        transcript: Sequence[Mapping[str, Any]] = (),
        *,
        fence: int | None = None,
    ) -> AppendResult:
        """See ``SessionStore.append``; one script call whatever the number of entries."""
        new_items = validate_entries(items, "items")
        new_segments = validate_entries(transcript, "transcript")
        validate_names(room, identity)
        keys = participant_keys(self.prefix, room, identity)
        args: list[Any] = [*self._write_args(room, identity, fence), len(new_items)]
        for tag, entries in ((TAG_ITEM, new_items), (TAG_SEGMENT, new_segments)):
            for entry_id, raw, _ in entries:
                args += [entry_id, self._codec.seal(room, identity, tag, raw)]
        local_items = [copy for _, _, copy in new_items]
        local_segments = [copy for _, _, copy in new_segments]

        async def send() -> AppendResult:
            added = await self._eval_write("APPEND", keys, args, room, identity)
            return AppendResult(int(added[0]), int(added[1]))

        def local() -> Awaitable[AppendResult]:
            return self._cache.append(room, identity, local_items, local_segments)

        return await self._write(
            "append", room, identity, send, local, self._if_cached(room, identity, local)
        )

    async def set_gemini_handle(
        self,
        room: str,
        identity: str,
        handle: str,
        covered_item_ids: Sequence[str],
        *,
        fence: int | None = None,
    ) -> None:
        """See ``SessionStore.set_gemini_handle``; the issue time is Redis's."""
        value = gemini_input(handle, covered_item_ids)
        validate_names(room, identity)
        blob = self._codec.seal_value(room, identity, F_GEMINI, value)
        args = [*self._write_args(room, identity, fence), "1", F_GEMINI, blob]

        def local() -> Awaitable[None]:
            return self._cache.set_gemini_handle(room, identity, value["handle"], value["covered"])

        await self._set("set_gemini_handle", room, identity, args, local)

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
        args: list[Any] = [*self._write_args(room, identity, fence), "0"]
        for name, blob in updates.items():
            args += [name, blob]

        def local() -> Awaitable[None]:
            return self._cache.update_profile(room, identity, language=language, metadata=metadata)

        await self._set("update_profile", room, identity, args, local)

    async def leave(
        self, room: str, identity: str, session_id: str, *, fence: int | None = None
    ) -> None:
        """See ``SessionStore.leave``; a retention policy costs one more call when it differs."""
        check_session_id(session_id)
        validate_names(room, identity)
        keys = participant_keys(self.prefix, room, identity)
        args = [
            _fence(fence),
            session_id,
            ms(self.retention),
            self.channel,
            room,
            identity_hash(identity),
        ]

        async def send() -> None:
            result = await self._eval("LEAVE", keys, args)
            if result[0] != b"left" or self.retention_policy is None:
                return
            _, items, segments, reconnects, joined, left, rev = result
            info = LeaveInfo(
                room, identity, int(items), int(segments), int(reconnects), int(joined) / 1000,
                int(left) / 1000,
            )  # fmt: skip
            seconds = retention_for(self.retention_policy, self.retention, info)
            if seconds != self.retention:
                await self._scripts["EXTEND"](keys=keys.data[:4], args=[rev, ms(seconds)])

        def local() -> Awaitable[None]:
            return self._cache.leave(room, identity, session_id)

        await self._write(
            "leave", room, identity, send, local, self._if_cached(room, identity, local)
        )

    async def load(self, room: str, identity: str) -> SessionRecord | None:
        """See ``SessionStore.load``; from memory while Redis is unavailable."""
        validate_names(room, identity)
        if self._queue.busy:
            return await self._cache.load(room, identity)
        keys = participant_keys(self.prefix, room, identity)
        try:
            found = await self._load_keys(keys, room, identity)
        except self._unavailable as exc:
            self._queue.mark_unavailable(exc)
            return await self._cache.load(room, identity)
        if found is None:
            self._cache.forget(room, identity)
            return None
        self._cache.put_stored(*found)
        return found[0]

    async def list_records(self, room: str | None = None) -> list[SessionRecord]:
        """See ``SessionStore.list_records`` (SCAN over every node; operators only)."""
        if self._queue.busy:
            return await self._cache.list_records(room)
        try:
            loaded = [await self._load_keys(*found) async for found in self._scan(room)]
            return [found[0] for found in loaded if found is not None]
        except self._unavailable as exc:
            self._queue.mark_unavailable(exc)
            return await self._cache.list_records(room)

    async def purge(self, room: str, identity: str | None = None) -> int:
        """See ``SessionStore.purge``."""
        validate_names(room, identity or "")

        async def send() -> int:
            if identity is not None:
                keys = participant_keys(self.prefix, room, identity)
                return int(await self._client.delete(*keys.data) > 0)
            deleted = 0
            async for keys, _, _ in self._scan(room):
                deleted += int(await self._client.delete(*keys.data) > 0)
            return deleted

        async def local() -> int:
            count = await self._cache.purge(room, identity)
            self._cache.forget(room, identity)
            return count

        async def remember(_: int) -> None:
            self._cache.forget(room, identity)

        return await self._write("purge", room, identity or "", send, local, remember)

    async def acquire_lease(
        self, room: str, identity: str, owner: str, ttl: float, *, force: bool = False
    ) -> int:
        """See ``SessionStore.acquire_lease``; raises StoreUnavailableError without Redis."""
        validate_names(room, identity)
        if ttl <= 0:
            raise InvalidInputError("lease ttl must be positive")
        keys = participant_keys(self.prefix, room, identity)
        try:
            result = await self._scripts["ACQUIRE"](
                keys=[keys.lease], args=[owner, ms(ttl), "1" if force else "0"]
            )
        except self._unavailable as exc:
            raise StoreUnavailableError(
                f"redis is unavailable ({type(exc).__name__}); no lease can be granted"
            ) from None
        if result[0] == b"held":
            raise LeaseHeldError(
                "participant lease is held by another owner",
                owner=result[1].decode(),
                expires_in=int(result[2]) / 1000,
            )
        return int(result[1])

    async def release_lease(self, room: str, identity: str, owner: str, token: int) -> bool:
        """See ``SessionStore.release_lease``; False if unreachable (the lease then expires)."""
        keys = participant_keys(self.prefix, room, identity)
        try:
            return bool(await self._scripts["RELEASE"](keys=[keys.lease], args=[owner, token]))
        except self._unavailable:
            logger.warning("lease not released: redis unavailable; it will expire")
            return False

    async def publish_event(self, event_type: str, room: str, identity: str, **fields: Any) -> None:
        """See ``SessionStore.publish_event``; an unreachable Redis loses the event (logged)."""
        event = make_event(event_type, room, identity, time.time(), **fields)
        try:
            await self._client.publish(self.channel, json.dumps(event))
        except self._unavailable as exc:
            logger.warning("event not published", extra={"type": event_type, "error": repr(exc)})

    async def subscribe_events(self) -> AsyncIterator[dict[str, Any]]:
        """Yield events from ``<prefix>:events`` (standalone/Sentinel clients)."""
        pubsub = self._client.pubsub()
        await pubsub.subscribe(self.channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield json.loads(message["data"])
        finally:
            await pubsub.aclose()

    async def aclose(self) -> None:
        """Give queued writes a few seconds to land, then close the connection pool."""
        await self._queue.aclose()
        await self._client.aclose()

    # -- internals ----------------------------------------------------------------------------

    async def _write(
        self,
        name: str,
        room: str,
        identity: str,
        send: Callable[[], Awaitable[T]],
        local: Callable[[], Awaitable[T]],
        remember: Callable[[T], Awaitable[None]],
    ) -> T:
        if not self._queue.busy:
            try:
                result = await send()
            except self._unavailable as exc:
                self._queue.mark_unavailable(exc)
            except rex.RedisError:
                # a command Redis rejects would be rejected again: keep it in memory only
                logger.exception("redis rejected a session write; kept in memory only")
                return await local()
            else:
                await remember(result)
                return result
        result = await local()
        self._queue.put(PendingWrite(name, room, identity_hash(identity), send))
        return result

    async def _set(
        self,
        name: str,
        room: str,
        identity: str,
        args: list[Any],
        local: Callable[[], Awaitable[None]],
    ) -> None:
        keys = participant_keys(self.prefix, room, identity)

        async def send() -> None:
            await self._eval_write("SET", keys, args, room, identity)

        await self._write(name, room, identity, send, local, self._if_cached(room, identity, local))

    def _if_cached(
        self, room: str, identity: str, local: Callable[[], Awaitable[Any]]
    ) -> Callable[[Any], Awaitable[None]]:
        # mirror a write Redis took into the cached copy, but only of a record held in full:
        # a cached partial record would later be served as if it were the whole conversation
        async def remember(_: Any) -> None:
            if self._cache.has_record(room, identity):
                await local()

        return remember

    def _write_args(self, room: str, identity: str, fence: int | None) -> list[Any]:
        return [
            _fence(fence),
            SCHEMA_VERSION,
            ms(self.active_ttl),
            ms(self.retention),
            self._who(room, identity),
        ]

    def _who(self, room: str, identity: str) -> bytes:
        # sealed once per participant: every write carries it, and a record whose who field
        # holds exactly these bytes needs no decryption to prove whose it is
        key = (room, identity)
        who = self._who_cache.get(key)
        if who is None:
            if len(self._who_cache) >= _WHO_CACHE:
                self._who_cache.clear()
            who = self._codec.seal_who(participant_hash(room, identity), room, identity)
            self._who_cache[key] = who
        return who

    async def _eval(self, name: str, keys: ParticipantKeys, args: list[Any]) -> Any:
        try:
            return await self._scripts[name](keys=keys.data, args=args)
        except self._unavailable:
            raise
        except rex.ResponseError as exc:
            message = str(exc)
            if message.startswith("STALELEASE"):
                raise StaleLeaseError(message.removeprefix("STALELEASE ")) from None
            if (
                message.startswith("CORRUPT")
                or "WRONGTYPE" in message
                or "not an integer" in message
            ):
                raise CorruptRecordError(message) from None
            raise

    async def _eval_write(
        self, name: str, keys: ParticipantKeys, args: list[Any], room: str, identity: str
    ) -> Any:
        try:
            return await self._eval(name, keys, args)
        except CorruptRecordError as exc:
            await self._quarantine(keys, room, identity, "", str(exc))
            return await self._eval(name, keys, args)

    async def _load_keys(
        self, keys: ParticipantKeys, room: str, identity: str
    ) -> tuple[SessionRecord, dict[str, bytes], Framed, Framed] | None:
        """The record and its stored form, or None (absent, or quarantined just now)."""
        rev = ""
        try:
            found = await self._eval("LOAD", keys, [])
            if not found:
                return None
            fields, items, segments = _unframe(found)
            rev = fields.get(F_REV, b"").decode()
            record = self._codec.decode(room, identity, fields, items, segments)
            return record, fields, items, segments
        except CorruptRecordError as exc:
            await self._quarantine(keys, room, identity, rev, str(exc))
            return None

    async def _scan(self, room: str | None) -> AsyncIterator[tuple[ParticipantKeys, str, str]]:
        """Records under this prefix, with their names read from the sealed ``who`` field."""
        async for raw_key in self._client.scan_iter(match="{" + self.prefix + ":*}:r", count=500):
            keys = keys_for_tag(raw_key.decode()[:-2])
            if keys is None:
                continue
            key_hash = keys.tag[len(self.prefix) + 2 : -1]
            try:
                who = await self._client.hget(keys.record, "who")
                if who is None:
                    continue
                found_room, found_identity = self._codec.open_who(key_hash, who)
            except (CorruptRecordError, rex.ResponseError) as exc:
                await self._quarantine(keys, room or "?", "?", "", f"who: {exc}")
                continue
            if room is None or found_room == room:
                yield keys, found_room, found_identity

    async def _quarantine(
        self, keys: ParticipantKeys, room: str, identity: str, rev: str, reason: str
    ) -> None:
        stamp = uuid.uuid4().hex[:12]
        moved = await self._scripts["QUARANTINE"](
            keys=keys.data[:4] + keys.quarantine(stamp),
            args=[rev, ms(self.quarantine_ttl), reason],
        )
        self._cache.forget(room, identity)
        logger.error(
            "unreadable session record moved to quarantine; the participant starts fresh",
            extra={
                "room": room,
                "participant": identity_hash(identity),
                "reason": reason,
                "quarantine_key": keys.tag + ":q" + stamp,
                "moved": bool(moved),
            },
        )


def _fence(fence: int | None) -> str:
    if fence is None:
        return ""
    if not isinstance(fence, int) or isinstance(fence, bool):
        raise InvalidInputError("fence must be the int token acquire_lease returned")
    return str(fence)


def _unframe(reply: Sequence[Any]) -> tuple[dict[str, bytes], Framed, Framed]:
    """Fields, items and transcript from a script's record reply (see redis_scripts)."""
    flat = reply[1]
    fields = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
    return fields, Framed(reply[2], reply[3]), Framed(reply[4], reply[5])


@functools.lru_cache(maxsize=4096)
def _event_head(event_type: str, room: str, identity: str) -> str:
    """An event's JSON without its closing brace, for a script to add its own fields."""
    head = {"type": event_type, "room": room, "participant": identity_hash(identity)}
    return json.dumps(head)[:-1]
