"""Leases with fencing tokens: the rules, stated once, and the lease table of each backend.

A lease says who may write for a key (a participant, a room) and carries a fencing token that
only ever grows. Every backend follows these rules, in one implementation each: the Lua
scripts ``ACQUIRE`` / ``RELEASE`` and ``fence_error`` of _scripts.py (Redis), the SQL of
_sqlite_leases.py (the SQLite file) and ``LocalLeaseTable`` below (this process). The room
lease (primary/room_lease.py) and the participants' leases (``SessionStore.acquire_lease``,
used by fenced.py) are the same leases under different keys.

- the holder renews with the same token; a holder whose lease lapsed while nobody else took it
  (an outage, a stalled event loop) reclaims it with the same token, so nothing it wrote or
  queued meanwhile becomes stale;
- a holder that says which token it holds (``held``) gets the lease back with that token if
  the store lost it entirely (Redis restarted without its data, a file restored from a copy);
- anyone else gets the lease only once it lapsed (or by ``force``), always with a higher
  token: at least the store's clock in microseconds, so tokens keep growing even when the
  store forgot every earlier one;
- a lapsed or released lease is remembered (owner and token) for ``LEASE_MEMORY_S``, so a write
  carrying a token older than the last one granted is refused even after the lease lapsed;
- a write carrying the newest token is accepted while its lease lives or after it lapsed; an
  unfenced write only while nobody holds a live lease.

A store that cannot answer raises StoreUnavailableError on ``acquire`` (a lease nobody else
can see would defeat its purpose); ``release`` then returns False and the lease lapses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .base import InvalidInputError, LeaseHeldError, StaleLeaseError

__all__ = [
    "LEASE_MEMORY_S",
    "NOBODY",
    "Grant",
    "LeaseKey",
    "LeaseState",
    "Leases",
    "LocalLeaseTable",
    "check_ttl",
    "held_error",
]

# how long a lapsed lease's owner and token are remembered (keeps tokens and fences monotonic)
LEASE_MEMORY_S = 86_400.0

LeaseKey = Hashable
"""A lease's name in its table: a Redis key, a SQLite row key, or a key of this process."""
_Key = TypeVar("_Key", bound=LeaseKey)


def check_ttl(ttl: float) -> None:
    """Lease times are positive seconds."""
    if not ttl > 0:
        raise InvalidInputError("lease ttl must be positive seconds")


def held_error(owner: str, expires_in: float) -> LeaseHeldError:
    """What ``acquire`` raises while another owner holds the lease."""
    return LeaseHeldError("the lease is held by another owner", owner=owner, expires_in=expires_in)


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease taken or renewed: its token, and until when (ms of the store's clock)."""

    token: int
    until_ms: int


@dataclass(frozen=True, slots=True)
class LeaseState:
    """Who holds a lease now (all None: nobody)."""

    owner: str | None
    token: int | None
    expires_in: float | None


NOBODY = LeaseState(None, None, None)


class Leases(Protocol[_Key]):
    """One backend's lease table (see the module docstring for the rules), keyed by ``_Key``
    (the Redis and SQLite tables by str)."""

    def room(self, room: str) -> _Key:
        """The key of a room's lease."""
        ...

    def participant(self, room: str, identity: str) -> _Key:
        """The key of a participant's lease (the one their records' writes are fenced by)."""
        ...

    async def acquire(
        self, key: _Key, owner: str, ttl: float, *, force: bool = False,
        held: int | None = None,
    ) -> Grant:  # fmt: skip
        """Take, renew or reclaim the lease; LeaseHeldError while another owner holds it."""
        ...

    async def release(self, key: _Key, owner: str, token: int) -> bool:
        """Give the lease up if ``owner``/``token`` hold it (its token stays remembered)."""
        ...

    async def state(self, key: _Key) -> LeaseState:
        """Who holds the lease now."""
        ...


@dataclass
class _Hold:
    owner: str
    token: int
    until: float  # monotonic; <= now: lapsed (or released)


class LocalLeaseTable:
    """The leases of this process: the memory store's participant leases, and the room leases
    of the jobs that share that store (``LocalRoomLease``). Whoever makes the table decides
    who shares it; nothing is shared by default.

    ``monotonic`` times the leases; ``clock`` (wall) floors the tokens, so they keep growing
    across restarts of a process, as Redis's do across restarts of Redis.
    """

    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self._clock = clock
        self._holds: dict[LeaseKey, _Hold] = {}
        self._last_token = 0

    def room(self, room: str) -> LeaseKey:
        """See ``Leases.room``."""
        return (room,)

    def participant(self, room: str, identity: str) -> LeaseKey:
        """See ``Leases.participant``."""
        return (room, identity)

    async def acquire(
        self, key: LeaseKey, owner: str, ttl: float, *, force: bool = False,
        held: int | None = None,
    ) -> Grant:  # fmt: skip
        """See ``Leases.acquire``."""
        check_ttl(ttl)
        now = self._monotonic()
        hold = self._holds.get(key)
        if hold is None and held is not None and not force:
            hold = self._holds[key] = _Hold(owner, held, now)
        if hold is not None and hold.owner == owner and not force:
            hold.until = now + ttl
            return Grant(hold.token, int(hold.until * 1000))
        if hold is not None and hold.until > now and not force:
            raise held_error(hold.owner, hold.until - now)
        floor = hold.token + 1 if hold is not None else 0
        token = max(floor, self._last_token + 1, int(self._clock() * 1_000_000))
        self._last_token = token
        self._holds[key] = _Hold(owner, token, now + ttl)
        return Grant(token, int((now + ttl) * 1000))

    async def release(self, key: LeaseKey, owner: str, token: int) -> bool:
        """See ``Leases.release``."""
        hold = self._holds.get(key)
        if hold is None or hold.owner != owner or hold.token != token:
            return False
        hold.owner, hold.until = "", 0.0
        return True

    async def state(self, key: LeaseKey) -> LeaseState:
        """See ``Leases.state``."""
        hold = self._holds.get(key)
        left = hold.until - self._monotonic() if hold is not None else 0.0
        if hold is None or left <= 0 or not hold.owner:
            return NOBODY
        return LeaseState(hold.owner, hold.token, left)

    def check_fence(self, key: LeaseKey, fence: int | None) -> None:
        """Raise StaleLeaseError unless a write carrying ``fence`` may go ahead (see above)."""
        hold = self._holds.get(key)
        if hold is None:
            return
        live = hold.until > self._monotonic()
        if fence is None:
            if live:
                raise StaleLeaseError("this participant's lease is held; pass its fencing token")
            return
        if fence < hold.token or (live and fence != hold.token):
            raise StaleLeaseError(
                f"fencing token {fence} is older than the lease's ({hold.token}): "
                "another worker took over"
            )

    def forget(self, key: LeaseKey) -> None:
        """Drop what is known of the key's lease (the record was purged)."""
        self._holds.pop(key, None)

    def sweep(self) -> None:
        """Forget leases that lapsed more than ``LEASE_MEMORY_S`` ago."""
        cutoff = self._monotonic() - LEASE_MEMORY_S
        for key in [k for k, hold in self._holds.items() if hold.until < cutoff]:
            del self._holds[key]
