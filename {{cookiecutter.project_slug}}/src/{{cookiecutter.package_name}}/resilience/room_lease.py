"""Which worker is primary for a room: a lease with a fencing token, renewed by heartbeat.

Two workers can end up in one room (a dispatch retried after a timeout, a second agent
deployment). Each asks for the room's lease; the holder runs the conversation, the other
stands by (listen-only, or leaves). The holder renews every ``ttl / 3``; if it dies, its lease
lapses at most ``ttl`` later and a standby (polling every ``ttl / 10``, at most 0.5 s) takes
it with a higher fencing token and continues from the session store.

- :class:`RedisRoomLease`: one Redis hash per room (owner, token) with a TTL, plus a counter
  that never expires, so tokens only ever grow; each operation is one Lua script.
- :class:`LocalRoomLease`: the same in one process, for the in-memory store (one worker).
- :class:`RoomPrimacy`: the heartbeat. It acquires, renews, notices a lost lease, and stops
  calling itself primary once its lease may have lapsed even when Redis cannot answer.
- :class:`FencedStore`: a SessionStore whose writes carry the participant's store lease
  token, taken by force while this worker holds the room lease; a worker whose room lease
  lapsed writes nothing (refused here, and by token in the store once a successor took over).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..log import get_logger
from .store import SessionStore, StaleLeaseError, StoreUnavailableError
from .store.redis_client import UNAVAILABLE

logger = get_logger(__name__)

# a standby polls every ttl/10 (at most 0.5 s), so a dead holder is replaced at most
# ttl + poll after its last renewal: 8.5 s with the defaults, inside the 10 s promised
DEFAULT_TTL_S = 8.0
MAX_POLL_S = 0.5

# KEYS: lease hash, token counter. ARGV: owner, ttl_ms. Same owner: renew and keep its token.
_ACQUIRE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'ok', redis.call('HGET', KEYS[1], 'token')}
end
if owner then return {'held', owner, redis.call('PTTL', KEYS[1])} end
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'ok', tostring(token)}
"""
# KEYS: lease hash. ARGV: owner, token, ttl_ms. Extends only the holder's own live lease.
_RENEW = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class LeaseState:
    """Who holds a room's lease now (None: nobody)."""

    owner: str | None
    token: int | None
    expires_in: float | None


class RoomLease(Protocol):
    """One worker's handle on a room's lease."""

    room: str
    owner: str
    ttl: float

    async def acquire(self) -> int | None:
        """Take the lease (or extend it, if ours); its token, or None while another holds it."""
        ...

    async def renew(self, token: int) -> bool:
        """Extend our lease; False when it is no longer ours (lapsed, taken over)."""
        ...

    async def release(self, token: int) -> bool:
        """Give the lease up if still ours."""
        ...


def _check(room: str, owner: str, ttl: float) -> None:
    if not room or not owner:
        raise ValueError("a room lease needs a room name and an owner id")
    if ttl <= 0:
        raise ValueError("the room lease time must be positive seconds")


class RedisRoomLease:
    """The room lease in Redis, shared by every worker; see the module docstring."""

    def __init__(
        self, client: Any, room: str, owner: str, *, ttl: float = DEFAULT_TTL_S,
        prefix: str = "lkagent",
    ) -> None:  # fmt: skip
        _check(room, owner, ttl)
        self.room, self.owner, self.ttl = room, owner, ttl
        # one hash tag: both keys in one Cluster slot; the room name is hashed, never stored
        tag = "{" + prefix + ":room:" + hashlib.sha256(room.encode()).hexdigest()[:32] + "}"
        self.key, self.counter_key = tag + ":lease", tag + ":epoch"
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def acquire(self) -> int | None:
        """See :meth:`RoomLease.acquire`; raises StoreUnavailableError without Redis."""
        reply = await self._call(
            self._acquire, [self.key, self.counter_key], [self.owner, _ms(self.ttl)]
        )
        return int(reply[1]) if reply[0] == b"ok" else None

    async def renew(self, token: int) -> bool:
        """See :meth:`RoomLease.renew`; raises StoreUnavailableError without Redis."""
        return bool(await self._call(self._renew, [self.key], [self.owner, token, _ms(self.ttl)]))

    async def release(self, token: int) -> bool:
        """See :meth:`RoomLease.release`; False when Redis cannot answer (it then lapses)."""
        try:
            return bool(await self._call(self._release, [self.key], [self.owner, token]))
        except StoreUnavailableError:
            return False

    async def state(self) -> LeaseState:
        """Who holds it now (operators, tests)."""
        owner, token = await self._client.hmget(self.key, "owner", "token")
        ttl = await self._client.pttl(self.key)
        if owner is None:
            return LeaseState(None, None, None)
        return LeaseState(owner.decode(), int(token), ttl / 1000 if ttl > 0 else None)

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except UNAVAILABLE as exc:
            raise StoreUnavailableError(
                f"redis is unavailable ({type(exc).__name__}); the room lease cannot be checked"
            ) from None


@dataclass
class _LocalHold:
    owner: str
    token: int
    expires_at: float


class LocalRoomLease:
    """The room lease within one process (the in-memory store: one worker per room)."""

    _holds: dict[str, _LocalHold] = {}
    _tokens = itertools.count(1)

    def __init__(self, room: str, owner: str, *, ttl: float = DEFAULT_TTL_S) -> None:
        _check(room, owner, ttl)
        self.room, self.owner, self.ttl = room, owner, ttl

    async def acquire(self) -> int | None:
        """See :meth:`RoomLease.acquire`."""
        now = time.monotonic()
        hold = self._holds.get(self.room)
        if hold is not None and hold.expires_at > now and hold.owner != self.owner:
            return None
        if hold is None or hold.expires_at <= now:
            hold = _LocalHold(self.owner, next(self._tokens), now)
            self._holds[self.room] = hold
        hold.expires_at = now + self.ttl
        return hold.token

    async def renew(self, token: int) -> bool:
        """See :meth:`RoomLease.renew`."""
        hold, now = self._holds.get(self.room), time.monotonic()
        if (
            hold is None
            or hold.owner != self.owner
            or hold.token != token
            or hold.expires_at <= now
        ):
            return False
        hold.expires_at = now + self.ttl
        return True

    async def release(self, token: int) -> bool:
        """See :meth:`RoomLease.release`."""
        hold = self._holds.get(self.room)
        if hold is None or hold.owner != self.owner or hold.token != token:
            return False
        del self._holds[self.room]
        return True


class RoomPrimacy:
    """Holds (or waits for) a room's lease and says whether this worker is primary.

    ``on_acquired(token)`` and ``on_lost()`` are called as that changes, and ``heartbeat()``
    after each successful renewal (``FencedStore.renew``). ``is_primary`` turns
    False as soon as a renewal is refused, or when no renewal succeeded for ``ttl`` seconds
    (measured from before the last successful one was sent), so a worker cut off from Redis
    steps down no later than Redis lets its lease lapse.
    """

    def __init__(
        self,
        lease: RoomLease,
        *,
        on_acquired: Callable[[int], Any] | None = None,
        on_lost: Callable[[], Any] | None = None,
        heartbeat: Callable[[], Awaitable[None]] | None = None,
        renew_every: float | None = None,
        poll_every: float | None = None,
    ) -> None:
        self.lease = lease
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._heartbeats: list[Callable[[], Awaitable[None]]] = [heartbeat] if heartbeat else []
        self._renew_every = renew_every or lease.ttl / 3
        self._poll_every = poll_every or min(lease.ttl / 10, MAX_POLL_S)
        self._token: int | None = None
        self._valid_until = 0.0
        self._primary = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def token(self) -> int | None:
        """The fencing token while primary, else None."""
        return self._token if self.is_primary else None

    @property
    def is_primary(self) -> bool:
        """Whether this worker holds the room's lease (and it cannot have lapsed yet)."""
        return self._token is not None and time.monotonic() < self._valid_until

    async def start(self) -> bool:
        """Try once now, then keep trying / renewing in the background; True when primary."""
        await self._attempt()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="room_primacy")
        return self.is_primary

    def add_heartbeat(self, beat: Callable[[], Awaitable[None]]) -> None:
        """Also call ``beat()`` after each successful renewal."""
        self._heartbeats.append(beat)

    async def wait_until_primary(self) -> int:
        """Wait until this worker holds the lease; returns the token."""
        while True:
            await self._primary.wait()
            token = self.token
            if token is not None:
                return token
            self._primary.clear()

    async def aclose(self, *, release: bool = True) -> None:
        """Stop the heartbeat and (by default) give the lease up for a fast handover."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        token, self._token = self._token, None
        self._primary.clear()
        if release and token is not None:
            await self.lease.release(token)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every if self._token is not None else self._poll_every)
            await self._attempt()

    async def _attempt(self) -> None:
        sent = time.monotonic()
        try:
            if self._token is None:
                token = await self.lease.acquire()
                if token is not None:
                    self._gain(token, sent)
                return
            if await self.lease.renew(self._token):
                self._valid_until = sent + self.lease.ttl
                for beat in self._heartbeats:
                    await beat()
            else:
                self._lose("renewal refused")
        except StoreUnavailableError as exc:
            logger.warning("room lease not renewed", error=str(exc))
        except Exception:
            logger.exception("room lease heartbeat failed")
        if self._token is not None and not self.is_primary:
            self._lose("lease may have lapsed")

    def _gain(self, token: int, sent: float) -> None:
        self._token, self._valid_until = token, sent + self.lease.ttl
        self._primary.set()
        logger.info("room lease acquired", token=token, ttl_s=self.lease.ttl)
        if self._on_acquired is not None:
            self._on_acquired(token)

    def _lose(self, reason: str) -> None:
        token, self._token = self._token, None
        self._primary.clear()
        logger.warning("room lease lost", token=token, reason=reason)
        if self._on_lost is not None:
            self._on_lost()


class FencedStore:
    """A SessionStore for the room's primary worker: every write carries a fencing token.

    The first write for a participant under a room-lease token takes the participant's store
    lease by force (``acquire_lease(force=True)``): from then on the store refuses the
    writes of any earlier holder by token, and this worker's own, once a successor does the
    same. Reads pass through. The primacy's heartbeat renews the participant leases.
    """

    def __init__(self, store: SessionStore, primacy: RoomPrimacy) -> None:
        self._store = store
        self._primacy = primacy
        primacy.add_heartbeat(self.renew)
        self._fences: dict[tuple[str, str], tuple[int, int]] = {}  # -> (room token, fence)
        self._lock = asyncio.Lock()

    async def fence(self, room: str, identity: str) -> int:
        """This worker's fencing token for the participant; StaleLeaseError unless primary."""
        room_token = self._primacy.token
        if room_token is None:
            raise StaleLeaseError("this worker does not hold the room's lease; it must not write")
        async with self._lock:
            held = self._fences.get((room, identity))
            if held is not None and held[0] == room_token:
                return held[1]
            fence = await self._store.acquire_lease(
                room, identity, self._primacy.lease.owner, self._primacy.lease.ttl, force=True
            )
            self._fences[(room, identity)] = (room_token, fence)
            return fence

    async def renew(self) -> None:
        """Extend the participant leases taken under the current room-lease token."""
        room_token = self._primacy.token
        for (room, identity), (token, _) in list(self._fences.items()):
            if token == room_token:
                await self._store.acquire_lease(
                    room, identity, self._primacy.lease.owner, self._primacy.lease.ttl
                )

    async def join(self, room: str, identity: str, session_id: str, **_: Any) -> Any:
        fence = await self.fence(room, identity)
        return await self._store.join(room, identity, session_id, fence=fence)

    async def append(
        self,
        room: str,
        identity: str,
        items: Sequence[Mapping[str, Any]] = (),
        transcript: Sequence[Mapping[str, Any]] = (),
        **_: Any,
    ) -> Any:
        fence = await self.fence(room, identity)
        return await self._store.append(room, identity, items, transcript, fence=fence)

    async def set_gemini_handle(
        self, room: str, identity: str, handle: str, covered_item_ids: Sequence[str], **_: Any
    ) -> None:
        fence = await self.fence(room, identity)
        await self._store.set_gemini_handle(room, identity, handle, covered_item_ids, fence=fence)

    async def update_profile(self, room: str, identity: str, **kwargs: Any) -> None:
        kwargs["fence"] = await self.fence(room, identity)
        await self._store.update_profile(room, identity, **kwargs)

    async def leave(self, room: str, identity: str, session_id: str, **_: Any) -> None:
        fence = await self.fence(room, identity)
        await self._store.leave(room, identity, session_id, fence=fence)

    def __getattr__(self, name: str) -> Any:
        # reads, leases, events and aclose are the store's own
        return getattr(self._store, name)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
