"""The Redis store's script calls: the scripts of _scripts.py registered once, their error
replies turned into the store's exceptions, and the reads and quarantine of one participant.

What the store does around them (the cache, the write queue, giving a lost record back) is
in redis.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis.exceptions as rex

from . import _scripts
from ._codec import F_REV, TAG_ITEM, Framed, RecordCodec, ms, unframe
from ._keys import ParticipantKeys, identity_hash, room_hash
from ._quarantine import QuarantineNote
from ._redis_client import UNAVAILABLE, RedisRefusedError
from .base import (
    CorruptRecordError,
    Fence,
    InvalidInputError,
    LeaveInfo,
    RetentionPolicy,
    SessionRecord,
    StaleLeaseError,
    StoreError,
    resolve_fence,
    retention_for,
)
from .retention import kept_after_write

__all__ = ["RecordLostError", "RedisCalls", "fence_arg"]

logger = logging.getLogger(__name__)

_SCRIPTS = ("JOIN", "APPEND", "SET", "LEAVE", "EXTEND", "LOAD", "QUARANTINE")
_RECENT = 256  # items a compaction looks among first (what it drops through is recent)

Stored = tuple[SessionRecord, dict[str, bytes], Framed, Framed]


class RecordLostError(Exception):
    """A write found no record for a participant this worker serves: Redis lost its data."""


async def fence_arg(fence: Fence, *, stale_ok: bool = False) -> str:
    """A fence as the scripts take it, resolved now ("" for an unfenced write)."""
    token = await resolve_fence(fence, stale_ok=stale_ok)
    if token is None:
        return ""
    if not isinstance(token, int) or isinstance(token, bool):
        raise InvalidInputError("fence must be the int token acquire_lease returned")
    return str(token)


class RedisCalls:
    """The participant scripts on ``client``. ``forget(room, identity)`` is called when a
    record is quarantined (the store drops its cached copy); ``retention`` and ``policy``
    are the store's (see ``keep_engaged``)."""

    def __init__(
        self,
        client: Any,
        codec: RecordCodec,
        *,
        quarantine_ttl: float,
        forget: Callable[[str, str], None],
        retention: float,
        policy: RetentionPolicy | None,
    ) -> None:
        self._client = client
        self._codec = codec
        self._quarantine_ttl = quarantine_ttl
        self._forget = forget
        self._retention, self._policy = retention, policy
        self._scripts = {n: client.register_script(getattr(_scripts, n)) for n in _SCRIPTS}

    async def eval(self, name: str, keys: ParticipantKeys, args: list[Any]) -> Any:
        """Run script ``name`` on the participant's keys; its refusals as exceptions."""
        try:
            return await self._scripts[name](keys=keys.data, args=args)
        except UNAVAILABLE:
            raise
        except rex.ResponseError as exc:
            message = str(exc)
            if message.startswith("STALELEASE"):
                raise StaleLeaseError(message.removeprefix("STALELEASE ")) from None
            if message.startswith("LOST"):
                raise RecordLostError(message) from None
            if (
                message.startswith("CORRUPT")
                or "WRONGTYPE" in message
                or "not an integer" in message
            ):
                raise CorruptRecordError(message) from None
            # out of memory, a busy script, no replicas...: retried like an outage
            raise RedisRefusedError(message) from None

    async def stored_item(
        self, keys: ParticipantKeys, room: str, identity: str, item_id: str
    ) -> bytes:
        """The stored blob of item ``item_id`` (what APPEND finds it by to compact through it;
        sealed blobs hide their ids from scripts), or b"" when it is not held."""
        try:
            blobs = await self._client.lrange(keys.items, -_RECENT, -1)
            found = self._find(blobs, room, identity, item_id)
            if not found and len(blobs) == _RECENT:
                older = await self._client.lrange(keys.items, 0, -_RECENT - 1)
                found = self._find(older, room, identity, item_id)
        except rex.ResponseError:  # not a list: the write's script reports it
            return b""
        return found

    def _find(self, blobs: list[bytes], room: str, identity: str, item_id: str) -> bytes:
        for blob in reversed(blobs):
            try:
                item = self._codec.open(room, identity, TAG_ITEM, blob, orjson.loads)
            except StoreError:  # unreadable: not the one (a read of the record reports it)
                continue
            if isinstance(item, dict) and item.get("id") == item_id:
                return blob
        return b""

    async def keep_engaged(
        self, keys: ParticipantKeys, room: str, identity: str, away: list[Any], *, leaving: bool
    ) -> None:
        """Keep a left record as long as the retention policy says for its engagement.

        ``away`` is what a script read of it (``away_info`` in _scripts.py; empty while the
        participant is here). At the leave the script set ``retention``: the policy's answer
        replaces it. After a write while away the script kept the longer of what the record
        had left and ``retention``: the policy may only lengthen that (``kept_after_write``).
        A record written or re-joined since is left alone (its own write does this again).
        """
        if self._policy is None or not away:
            return
        reconnects, items, segments, joined, left, rev, pttl = away
        info = LeaveInfo(
            room, identity, int(items), int(segments), int(reconnects), int(joined) / 1000,
            int(left) / 1000,
        )  # fmt: skip
        if leaving:
            seconds = retention_for(self._policy, self._retention, info)
            needed = seconds != self._retention
        else:
            seconds = kept_after_write(int(pttl) / 1000, self._retention, self._policy, info)
            needed = ms(seconds) > int(pttl)
        if needed:
            await self._scripts["EXTEND"](keys=keys.data[:4], args=[rev, ms(seconds)])

    async def load(self, keys: ParticipantKeys, room: str, identity: str) -> Stored | None:
        """The record and its stored form, or None (absent, or quarantined just now)."""
        rev = ""
        try:
            found = await self.eval("LOAD", keys, [])
            if not found:
                return None
            fields, items, segments = unframe(found)
            rev = fields.get(F_REV, b"").decode()
            record = self._codec.decode(room, identity, fields, items, segments)
            return record, fields, items, segments
        except CorruptRecordError as exc:
            await self.quarantine(keys, room, identity, rev, str(exc))
            return None

    async def quarantine(
        self, keys: ParticipantKeys, room: str, identity: str, rev: str, reason: str
    ) -> None:
        """Move the record aside (unless it changed since revision ``rev``; "": whatever it
        is now) with a note saying why; the participant starts fresh."""
        stamp = uuid.uuid4().hex[:12]
        note = QuarantineNote(reason, identity_hash(identity), room_hash(room), time.time())
        moved = await self._scripts["QUARANTINE"](
            keys=keys.data[:4] + keys.quarantine(stamp),
            args=[rev, ms(self._quarantine_ttl), note.to_json()],
        )
        self._forget(room, identity)
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
