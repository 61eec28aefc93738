"""``RedisAdmin``: operator reads and deletes on a Redis session store (see admin.py)."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.exceptions as rex

from ._codec import Framed, RecordCodec, ms, unframe
from ._crypto import KeyRing
from ._keys import ParticipantKeys, keys_for_tag, participant_keys, room_hash
from ._quarantine import QuarantinedRecord, QuarantineNote
from ._redis_client import UNAVAILABLE, connect
from ._scripts import LOAD
from ._validate import validate_names
from .admin import Inventory, Purged, StoredRecord, Unreadable, put_outcome
from .base import (
    CorruptRecordError,
    InvalidInputError,
    MissingKeyError,
    SessionRecord,
    StoreError,
)
from .redis_url import scrub, unreachable

__all__ = ["RedisAdmin", "open_admin"]

# Move a quarantined record back. KEYS 1-4 the live record, 5-8 its quarantined copy, 9 the
# note. ARGV: ttl_ms. Kept beside its only user (the worker never restores).
RESTORE = """
if redis.call('EXISTS', KEYS[5], KEYS[6], KEYS[7], KEYS[8]) == 0 then return 'missing' end
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3], KEYS[4]) > 0 then return 'live' end
for i = 1, 4 do
  if redis.call('EXISTS', KEYS[i + 4]) == 1 then
    redis.call('RENAME', KEYS[i + 4], KEYS[i])
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
redis.call('DEL', KEYS[9])
return 'restored'
"""

# Write a whole record (`sessions import`). KEYS 1-5 a participant's (_scripts.py). ARGV:
# replace (0/1), ttl_ms, n_fields, field, value, ..., n_items, (id, blob) per item, then
# (id, blob) per transcript segment. An unfenced write: refused while the lease is live.
PUT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(redis.call('HGET', KEYS[5], 'until') or '0') > now then return 'leased' end
local found = redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3], KEYS[4]) > 0
if found and ARGV[1] ~= '1' then return 'exists' end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local items_end = i + 1 + 2 * tonumber(ARGV[i])
i = i + 1
while i < #ARGV do
  local list, tag = KEYS[3], 'seg:'
  if i < items_end then list, tag = KEYS[2], 'item:' end
  redis.call('RPUSH', list, ARGV[i + 1])
  redis.call('SADD', KEYS[4], tag .. ARGV[i])
  i = i + 2
end
for k = 1, 4 do redis.call('PEXPIRE', KEYS[k], ARGV[2]) end
if found then return 'replaced' end
return 'written'
"""


def _direct(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn Redis failures into one-line StoreErrors (URL secrets redacted)."""

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        admin: RedisAdmin = args[0]
        try:
            return await method(*args, **kwargs)
        except StoreError:
            raise
        except UNAVAILABLE as exc:
            raise unreachable(admin.url, exc) from None
        except rex.RedisError as exc:
            detail = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", admin.url)
            raise StoreError(f"redis refused the command: {detail or type(exc).__name__}") from None

    return call


class RedisAdmin:
    """Operator reads and deletes on a Redis session store; see the module docstring."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "lkagent",
        keyring: KeyRing | None = None,
        retention: float = 300.0,
        url: str | None = None,
        owns_client: bool = True,
    ) -> None:
        self.prefix = prefix
        self.retention = retention
        self.url = url  # for messages only (redacted)
        self._client = client
        self._owns_client = owns_client
        self._codec = RecordCodec(keyring)
        self._load = client.register_script(LOAD)
        self._restore = client.register_script(RESTORE)
        self._put = client.register_script(PUT)
        tag = r"(\{" + re.escape(prefix) + r":[0-9a-f]{32}\})"
        self._quarantine_key = re.compile(tag + r":q[0-9a-f]{1,32}")

    @_direct
    async def inventory(self, room: str | None = None) -> Inventory:
        """Every record (of one room), read-only: the readable and the unreadable ones.

        A record whose owner cannot be read is reported whatever ``room`` asks for, since it
        may belong to that room.
        """
        found = Inventory()
        async for keys, key_hash in self._records():
            owner = await self._owner(keys, key_hash)
            if isinstance(owner, Unreadable):
                found.unreadable.append(owner)
            elif room is None or owner[0] == room:
                try:
                    record = await self._read(keys, *owner)
                except (MissingKeyError, CorruptRecordError) as exc:
                    found.unreadable.append(Unreadable.of(keys.tag, owner[0], exc))
                    continue
                if record is not None:
                    found.records.append(record)
        return found

    @_direct
    async def read(self, room: str, identity: str) -> SessionRecord | None:
        """One participant's record, or None; raises MissingKeyError / CorruptRecordError
        (with the reason) when it cannot be read, and changes nothing either way."""
        validate_names(room, identity)
        return await self._read(participant_keys(self.prefix, room, identity), room, identity)

    @_direct
    async def read_stored(
        self, room: str, identity: str
    ) -> tuple[SessionRecord, StoredRecord] | None:
        """One participant's record and its stored form (``read``'s errors; read-only)."""
        validate_names(room, identity)
        keys = participant_keys(self.prefix, room, identity)
        found = await self._stored(keys)
        if found is None:
            return None
        return StoredRecord.read(self._codec, room, identity, found)

    @_direct
    async def put(self, stored: StoredRecord, *, ttl: float, replace: bool = False) -> bool:
        """Write a whole record in one step, kept ``ttl`` seconds; True when it replaced one.

        Refused (InvalidInputError, nothing written) when the participant has a record and
        ``replace`` is false, and while their lease is live (a worker serves them now).
        """
        validate_names(stored.room, stored.identity)
        args: list[Any] = [int(replace), ms(ttl), len(stored.fields)]
        for name, value in stored.fields.items():
            args += [name, value]
        args.append(len(stored.items))
        for entry_id, blob in [*stored.items, *stored.transcript]:
            args += [entry_id, blob]
        keys = participant_keys(self.prefix, stored.room, stored.identity)
        outcome = await self._put(keys=keys.data, args=args)
        return put_outcome(outcome.decode() if isinstance(outcome, bytes) else outcome)

    @_direct
    async def purge(self, room: str, identity: str | None = None) -> Purged:
        """Delete a participant's record and quarantined copies, or a whole room's.

        A record whose owner cannot be read (a key this worker lacks) may be the room's: it
        is left alone and listed in ``unreadable``.
        """
        validate_names(room, identity or "")
        if identity is not None:
            keys = participant_keys(self.prefix, room, identity)
            sessions = int(await self._client.delete(*keys.data) > 0)
            copies = [k async for k in self._scan(keys.tag + ":q*:why")]
            return Purged(sessions, await self._delete_quarantined(copies))
        sessions, unreadable = 0, []
        async for keys, key_hash in self._records():
            owner = await self._owner(keys, key_hash)
            if isinstance(owner, Unreadable):
                unreadable.append(owner)
            elif owner[0] == room:
                sessions += int(await self._client.delete(*keys.data) > 0)
        wanted = room_hash(room)
        copies = [
            note_key
            async for note_key in self._scan("{" + self.prefix + ":*}:q*:why")
            if (await self._note(note_key)).room_hash == wanted
        ]
        return Purged(sessions, await self._delete_quarantined(copies), unreadable)

    @_direct
    async def quarantined(self, room: str | None = None) -> list[QuarantinedRecord]:
        """Every quarantined record (of one room), with its reason and expiry."""
        listed = []
        now = time.time()
        async for note_key in self._scan("{" + self.prefix + ":*}:q*:why"):
            base = note_key[: -len(":why")]
            note = await self._note(note_key)
            pttl = await self._client.pttl(note_key)
            found_room = await self._quarantined_room(base)
            if room is not None and found_room != room and note.room_hash != room_hash(room):
                continue
            listed.append(
                QuarantinedRecord(
                    key=base,
                    room=found_room,
                    participant=note.participant,
                    reason=note.reason,
                    quarantined_at=note.at or None,
                    expires_at=now + pttl / 1000 if pttl > 0 else None,
                )
            )
        return sorted(listed, key=lambda q: q.quarantined_at or 0.0)

    @_direct
    async def restore(self, key: str) -> SessionRecord | Unreadable:
        """Move a quarantined record back to where it was; what it reads as now.

        Refused (StoreError) when the participant has a live record again: restoring would
        overwrite it. The restored record keeps ``retention`` seconds.
        """
        match = self._quarantine_key.fullmatch(key.strip())
        tag = keys_for_tag(match.group(1)) if match else None
        if match is None or tag is None:
            raise InvalidInputError(
                f"{key!r} is not a quarantine key of prefix {self.prefix!r}; "
                "`sessions quarantine` lists them ({prefix:<hash>}:q<stamp>)"
            )
        base = match.group(0)
        copy = [base + suffix for suffix in (":rec", ":items", ":seg", ":ids", ":why")]
        outcome = await self._restore(keys=tag.data[:4] + copy, args=[ms(self.retention)])
        if outcome == b"missing":
            raise InvalidInputError(f"no quarantined record {base} (expired or purged)")
        if outcome == b"live":
            raise StoreError(
                "that participant has a live record again; restoring would overwrite it "
                "(purge the live one first with `sessions purge`, or leave it)"
            )
        key_hash = tag.tag[len(self.prefix) + 2 : -1]
        owner = await self._owner(tag, key_hash)
        if isinstance(owner, Unreadable):
            return owner
        try:
            record = await self._read(tag, *owner)
        except (MissingKeyError, CorruptRecordError) as exc:
            return Unreadable.of(tag.tag, owner[0], exc)
        return record if record is not None else Unreadable(tag.tag, owner[0], "record is empty")

    async def aclose(self) -> None:
        """Close the connection pool (when this admin made it)."""
        if self._owns_client:
            await self._client.aclose()

    # -- internals ----------------------------------------------------------------------------

    async def _read(self, keys: ParticipantKeys, room: str, identity: str) -> SessionRecord | None:
        found = await self._stored(keys)
        return self._codec.decode(room, identity, *found) if found is not None else None

    async def _stored(
        self, keys: ParticipantKeys
    ) -> tuple[dict[str, bytes], Framed, Framed] | None:
        try:
            found = await self._load(keys=keys.data, args=[])
        except rex.ResponseError as exc:
            raise CorruptRecordError(f"unreadable in redis: {exc}") from None  # WRONGTYPE
        return unframe(found) if found else None

    async def _owner(self, keys: ParticipantKeys, key_hash: str) -> tuple[str, str] | Unreadable:
        """(room, identity) from a record's sealed ``who`` field, or why it cannot be read."""
        try:
            who = await self._client.hget(keys.record, "who")
            if who is None:
                raise CorruptRecordError("who: missing")
            return self._codec.open_who(key_hash, who)
        except rex.ResponseError as exc:
            return Unreadable(keys.tag, None, f"unreadable in redis: {exc}")
        except (MissingKeyError, CorruptRecordError) as exc:
            return Unreadable.of(keys.tag, None, exc)

    async def _records(self) -> AsyncIterator[tuple[ParticipantKeys, str]]:
        """The keys and participant hash of every record under this prefix (SCAN)."""
        async for raw in self._scan("{" + self.prefix + ":*}:r"):
            keys = keys_for_tag(raw[:-2])
            if keys is not None:
                yield keys, keys.tag[len(self.prefix) + 2 : -1]

    async def _scan(self, pattern: str) -> AsyncIterator[str]:
        async for raw in self._client.scan_iter(match=pattern, count=500):
            yield raw.decode()

    async def _note(self, note_key: str) -> QuarantineNote:
        raw = await self._client.get(note_key)
        return QuarantineNote.from_json(raw or b"")

    async def _quarantined_room(self, base: str) -> str | None:
        match = self._quarantine_key.fullmatch(base)
        if match is None:
            return None
        key_hash = match.group(1)[len(self.prefix) + 2 : -1]
        try:
            who = await self._client.hget(base + ":rec", "who")
            return self._codec.open_who(key_hash, who)[0] if who is not None else None
        except (rex.ResponseError, MissingKeyError, CorruptRecordError):
            return None

    async def _delete_quarantined(self, note_keys: list[str]) -> int:
        for note_key in note_keys:
            base = note_key[: -len(":why")]
            # one DEL per copy: its keys share a hash tag, so one Cluster slot
            suffixes = (":rec", ":items", ":seg", ":ids", ":why")
            await self._client.delete(*(base + suffix for suffix in suffixes))
        return len(note_keys)


def open_admin(
    redis_url: str,
    *,
    redis_cluster: bool = False,
    prefix: str = "lkagent",
    encryption_keys: str | None = None,
    retention: float = 300.0,
) -> RedisAdmin:
    """The operator view of the store at ``redis_url`` (no I/O until the first call)."""
    keyring = KeyRing.parse(encryption_keys) if encryption_keys else None
    client = connect(redis_url, cluster=redis_cluster)
    return RedisAdmin(client, prefix=prefix, keyring=keyring, retention=retention, url=redis_url)
