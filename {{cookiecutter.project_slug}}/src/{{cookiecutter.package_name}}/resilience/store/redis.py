"""Redis session store: records shared by every worker on every host, on Redis's clock.

``REDIS_URL`` (its forms: redis_url.py) chooses it; ``connect`` makes the client, ``RedisAdmin``
and ``open_admin`` give operators access, ``RedisLeases`` holds the room and participant
leases, all from here.

Each operation is one Lua script call (one round trip, atomic; _scripts.py, called through
_redis_calls.py; key layout in _keys.py). When Redis cannot answer (down, failing over, out of
memory, refusing), operations do not fail: reads come from the last known records (an
in-process MemoryStore used as a cache), writes are applied there and queued (_write_queue.py)
until Redis answers, and a join is answered from memory with ``JoinOutcome.settled`` resolving
to Redis's answer later (_buffered.py). When Redis answers again, the conversations of
participants still here are given to it again from the cache first (a Redis that came back
without its data gets them back), then the queued writes replay in order. Only leases refuse
to work without Redis, because a lease nobody else can see would defeat its purpose, and so
do the operator calls of ``admin``, whose answers must be Redis's own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from ._buffered import BufferedWrites
from ._codec import F_GEMINI, F_REV, TAG_ITEM, TAG_SEGMENT, RecordCodec, WhoCache, ms
from ._codec import unframe as _unframe
from ._crypto import KeyRing
from ._events import RedisEvents, event_head
from ._keys import ParticipantKeys, identity_hash, participant_keys
from ._older_lines import OlderLines
from ._redis_admin import RedisAdmin, open_admin
from ._redis_calls import RecordLostError, RedisCalls, fence_arg
from ._redis_client import UNAVAILABLE, connect, run_script
from ._redis_leases import RedisLeases
from ._validate import (
    Entry,
    check_session_id,
    gemini_input,
    profile_updates,
    validate_entries,
    validate_names,
)
from ._write_queue import WriteQueue
from .base import (
    EVENTS_CHANNEL_SUFFIX,
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
)
from .memory import MemoryStore

__all__ = [
    "RedisAdmin",
    "RedisLeases",
    "RedisStore",
    "connect",
    "open_admin",
    "participant_keys",
    "run_script",
]

logger = logging.getLogger(__name__)

_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LIVE_ARG = 5  # where _write_args puts the live flag
_COMPACT_ARG = 9  # where _append_sender puts the blob to compact through


class RedisStore(BufferedWrites):
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
        quarantine_ttl: float | None = None,
        cache_records: int = 1000,
        max_queued_writes: int = 10_000,
        limits: StorageLimits | None = None,
    ) -> None:
        if not _PREFIX.match(prefix):
            raise InvalidInputError("store prefix must be 1-64 letters, digits, '_', '.', '-'")
        self.prefix = prefix
        self.channel = prefix + EVENTS_CHANNEL_SUFFIX
        self.retention = retention
        self.active_ttl = active_ttl
        self.retention_policy = retention_policy
        # unreadable records are kept aside this long (default: as long as a record)
        self.quarantine_ttl = retention if quarantine_ttl is None else quarantine_ttl
        self.limits = limits or StorageLimits()
        self._client = client
        # operator reads and deletes: straight to Redis, never through the cache or queue
        self.admin = RedisAdmin(
            client, prefix=prefix, keyring=keyring, retention=retention, owns_client=False
        )
        self.leases = RedisLeases(client, prefix)
        self.events = RedisEvents(client, self.channel, UNAVAILABLE)
        # participants whose join reached Redis and who have not left: rewritten from the
        # cache after an outage, in case Redis came back without their data
        self._live: dict[tuple[str, str], tuple[str, Fence]] = {}
        self.records_given_back = 0  # live conversations given to Redis again from memory
        self._codec = RecordCodec(keyring)
        self._who = WhoCache(self._codec)
        # Redis's stored form as is (nothing re-encoded); no retention policy: Redis applies it
        self._cache = MemoryStore(retention=retention, active_ttl=active_ttl, keyring=keyring,
            max_records=cache_records, as_cache=True, limits=self.limits)  # fmt: skip
        self._older = OlderLines(lambda k: self._calls.eval("LOAD", k, []), self._cache,
            live=self._live, unavailable=UNAVAILABLE)  # fmt: skip
        self._unavailable = UNAVAILABLE
        self._queue = WriteQueue(
            probe=client.ping,
            unavailable=UNAVAILABLE,
            max_writes=max_queued_writes,
            before_replay=self._rewrite_live,
        )
        self._calls = RedisCalls(
            client, self._codec, quarantine_ttl=self.quarantine_ttl, forget=self._cache.forget,
            retention=retention, policy=retention_policy,
        )  # fmt: skip

    # -- SessionStore ------------------------------------------------------------------------

    async def join(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None,
        transcript_tail: int | None = None,
    ) -> JoinOutcome:  # fmt: skip
        """See ``SessionStore.join``; join and load are one script call."""
        check_session_id(session_id, transcript_tail)
        validate_names(room, identity)
        keys = participant_keys(self.prefix, room, identity)
        who = self._who(room, identity)
        args = [
            "",  # the fence, resolved when sent
            SCHEMA_VERSION,
            session_id,
            ms(self.active_ttl),
            who,
            self.channel,
            event_head("participant_returned", room, identity),
            "" if transcript_tail is None else transcript_tail,
        ]

        async def send() -> JoinOutcome:
            args[0] = await fence_arg(fence)
            for _ in range(2):
                rev = ""
                try:
                    reply = await self._calls.eval("JOIN", keys, args)
                    fields, items, segments = _unframe(reply)
                    rev = fields.get(F_REV, b"").decode()
                    record = self._codec.decode(room, identity, fields, items, segments, who)
                except CorruptRecordError as exc:
                    await self._calls.quarantine(keys, room, identity, rev, str(exc))
                    continue
                self._cache.put_stored(record, fields, items, segments)
                self._live[(room, identity)] = (session_id, fence)
                if transcript_tail and len(segments) >= transcript_tail:  # maybe more
                    self._older.read(room, identity, keys)
                return JoinOutcome(JoinKind(reply[0].decode()), record)
            raise CorruptRecordError("record unreadable right after quarantine")

        return await self._write_join(room, identity, session_id, send, transcript_tail)

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
        """See ``SessionStore.append``; one script call whatever the number of entries (and
        a read of the recent items first to compact: see ``RedisCalls.stored_item``)."""
        new_items = validate_entries(items, "items", self.limits.max_entry_bytes)
        new_segments = validate_entries(transcript, "transcript", self.limits.max_entry_bytes)
        validate_names(room, identity)
        send_append = self._append_sender(
            room, identity, new_items, new_segments, fence, through=compact_through
        )
        local_items = [copy for _, _, copy in new_items]
        local_segments = [copy for _, _, copy in new_segments]

        def local() -> Awaitable[AppendResult]:
            return self._cache.append(
                room, identity, local_items, local_segments, compact_through=compact_through
            )

        async def send() -> AppendResult:
            result = await send_append()
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
        """See ``SessionStore.set_gemini_handle``; the issue time is Redis's."""
        value = gemini_input(handle, covered_item_ids)
        validate_names(room, identity)
        blob = self._codec.seal_value(room, identity, F_GEMINI, value)
        args = [*self._write_args(room, identity), "1", F_GEMINI, blob]

        def local() -> Awaitable[None]:
            return self._cache.set_gemini_handle(room, identity, value["handle"], value["covered"])

        await self._set("set_gemini_handle", room, identity, args, fence, local)

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
        args: list[Any] = [*self._write_args(room, identity), "0"]
        for name, blob in updates.items():
            args += [name, blob]

        def local() -> Awaitable[None]:
            return self._cache.update_profile(room, identity, language=language, metadata=metadata)

        await self._set("update_profile", room, identity, args, fence, local)

    async def leave(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None
    ) -> None:
        """See ``SessionStore.leave``; a retention policy costs one more call when it differs
        from ``retention``."""
        check_session_id(session_id)
        validate_names(room, identity)
        keys = participant_keys(self.prefix, room, identity)
        args = [
            "",  # the fence, resolved when sent
            session_id,
            ms(self.retention),
            self.channel,
            room,
            identity_hash(identity),
        ]

        async def send() -> None:
            args[0] = await fence_arg(fence)
            result = await self._calls.eval("LEAVE", keys, args)
            if result[0] == b"left":
                await self._calls.keep_engaged(keys, room, identity, result[1], leaving=True)

        async def send_and_mirror() -> None:
            await send()
            await self._mirror(room, identity, local)

        def local() -> Awaitable[None]:
            return self._cache.leave(room, identity, session_id)

        if self._live.get((room, identity), ("",))[0] == session_id:
            del self._live[(room, identity)]

        await self._write("leave", room, identity, send_and_mirror, local)

    async def load(self, room: str, identity: str) -> SessionRecord | None:
        """See ``SessionStore.load``; from memory while Redis is unavailable."""
        validate_names(room, identity)
        if self._queue.busy:
            return await self._cache.load(room, identity)
        keys = participant_keys(self.prefix, room, identity)
        try:
            found = await self._calls.load(keys, room, identity)
        except self._unavailable as exc:
            self._queue.mark_unavailable(exc)
            return await self._cache.load(room, identity)
        if found is None:
            self._cache.forget(room, identity)
            return None
        self._cache.put_stored(*found)
        return found[0]

    async def acquire_lease(
        self, room: str, identity: str, owner: str, ttl: float, *, force: bool = False
    ) -> int:
        """See ``SessionStore.acquire_lease``; raises StoreUnavailableError without Redis."""
        validate_names(room, identity)
        key = self.leases.participant(room, identity)
        return (await self.leases.acquire(key, owner, ttl, force=force)).token

    def subscribe_events(self) -> AsyncIterator[dict[str, Any]]:
        """Events from ``<prefix>:events`` (standalone/Sentinel clients): ``events.subscribe()``."""
        return self.events.subscribe()

    async def aclose(self) -> None:
        """Give queued writes a few seconds to land, then close the connection pool."""
        await self._queue.aclose()
        await self._older.aclose()
        await self._client.aclose()

    # -- internals ----------------------------------------------------------------------------

    async def _set(
        self,
        name: str,
        room: str,
        identity: str,
        args: list[Any],
        fence: Fence,
        local: Callable[[], Awaitable[None]],
    ) -> None:
        keys = participant_keys(self.prefix, room, identity)

        async def send() -> None:
            args[0] = await fence_arg(fence)
            await self._eval_write("SET", keys, args, room, identity)
            await self._mirror(room, identity, local)

        await self._write(name, room, identity, send, local)

    def _write_args(self, room: str, identity: str, live: bool = True) -> list[Any]:
        """The arguments APPEND and SET share (``live``: refuse to recreate a live record)."""
        return [
            "",  # the fence, resolved when sent
            SCHEMA_VERSION,
            ms(self.active_ttl),
            ms(self.retention),
            self._who(room, identity),
            "1" if live and (room, identity) in self._live else "0",  # _LIVE_ARG
        ]

    def _append_sender(
        self,
        room: str,
        identity: str,
        items: list[Entry],
        segments: list[Entry],
        fence: Fence,
        *,
        live: bool = True,
        through: str | None = None,
    ) -> Callable[[], Awaitable[AppendResult]]:
        """The APPEND call for validated entries, sealed once; the fence resolved and the
        item to compact ``through`` found when sent."""
        keys = participant_keys(self.prefix, room, identity)
        limits = self.limits
        args: list[Any] = [*self._write_args(room, identity, live), len(items)]
        args += [limits.max_entries, limits.max_list_bytes, b""]
        for tag, entries in ((TAG_ITEM, items), (TAG_SEGMENT, segments)):
            for entry_id, raw, _ in entries:
                args += [entry_id, self._codec.seal(room, identity, tag, raw)]

        async def send() -> AppendResult:
            args[0] = await fence_arg(fence, stale_ok=True)
            if through is not None:
                args[_COMPACT_ARG] = await self._calls.stored_item(keys, room, identity, through)
            added = await self._eval_write("APPEND", keys, args, room, identity)
            result = AppendResult(int(added[0]), int(added[1]), merged=added[2] == 1)
            return self._note_merged(room, identity, result)

        return send

    async def _rewrite_live(self) -> None:
        """After an outage, before the queued writes: give Redis every live conversation again."""
        for room, identity in list(self._live):
            await self._give_back(room, identity)

    async def _give_back(self, room: str, identity: str) -> None:
        """Give Redis a live participant's join and every cached item and segment again.

        A Redis that came back without the data (restarted without persistence, failed over
        to a lagging replica) gets the conversation back from the cache; one that kept it
        answers DUPLICATE and adds nothing (entries are deduplicated by id).
        """
        live = self._live.get((room, identity))
        if live is None:
            return
        record = await self._cache.load(room, identity)
        if record is None:
            logger.error(
                "redis lost a live conversation that memory no longer holds; kept from here on",
                extra={"room": room, "participant": identity_hash(identity)},
            )
            return
        session_id, fence = live
        keys = participant_keys(self.prefix, room, identity)
        args = [SCHEMA_VERSION, session_id, ms(self.active_ttl), self._who(room, identity)]
        args += [self.channel, event_head("participant_returned", room, identity)]
        try:
            await self._calls.eval("JOIN", keys, [await fence_arg(fence), *args])
        except StaleLeaseError:
            self._live.pop((room, identity), None)  # another worker has it now: its writes win
            return
        items = validate_entries(record.items, "items", self.limits.max_entry_bytes)
        segments = validate_entries(record.transcript, "transcript", self.limits.max_entry_bytes)
        send = self._append_sender(room, identity, items, segments, fence, live=False)
        added = await send()
        if added.items_added or added.transcript_added:
            self.records_given_back += 1
            # the writes still queued, or what a Redis that lost its data no longer had
            logger.info(
                "live conversation given to redis again from memory",
                extra={"room": room, "participant": identity_hash(identity),
                       "items": added.items_added, "segments": added.transcript_added},
            )  # fmt: skip

    async def _eval_write(
        self, name: str, keys: ParticipantKeys, args: list[Any], room: str, identity: str
    ) -> Any:
        """APPEND or SET: a corrupt record is quarantined, a lost one given back, then again;
        a record written while its participant is away kept as its engagement earns."""
        reply = None
        try:
            reply = await self._calls.eval(name, keys, args)
        except CorruptRecordError as exc:
            await self._calls.quarantine(keys, room, identity, "", str(exc))
        except RecordLostError:
            # Redis lost its data between two writes without this client seeing an outage
            # (restarted without persistence within a reconnect): what came before goes first
            await self._give_back(room, identity)
        if reply is None:
            args[_LIVE_ARG] = "0"
            reply = await self._calls.eval(name, keys, args)
        await self._calls.keep_engaged(keys, room, identity, reply[-1], leaving=False)
        return reply
