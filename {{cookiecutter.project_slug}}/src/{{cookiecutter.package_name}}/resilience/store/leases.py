"""Leases with fencing tokens, in one process: the rules the Redis scripts follow too.

A lease says who may write for a key (a participant, a room) and carries a fencing token that
only ever grows. The rules, shared by ``LeaseTable`` and the Lua scripts in redis_scripts.py:

- the holder renews with the same token; a holder whose lease lapsed while nobody else took it
  (an outage, a stalled event loop) reclaims it with the same token, so nothing it wrote or
  queued meanwhile becomes stale;
- anyone else gets the lease only once it lapsed (or by ``force``), always with a higher token;
- a lapsed lease is remembered (owner and token) for a day, so a write carrying a token older
  than the last one granted is refused even after the lease lapsed;
- a write carrying the newest token is accepted while its lease lives or after it lapsed; an
  unfenced write only while nobody holds a live lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from .base import InvalidInputError, LeaseHeldError, StaleLeaseError

__all__ = ["LEASE_MEMORY_S", "LeaseTable", "check_ttl"]

# how long a lapsed lease's owner and token are remembered (keeps tokens and fences monotonic)
LEASE_MEMORY_S = 86_400.0


def check_ttl(ttl: float) -> None:
    """Lease times are positive seconds."""
    if not ttl > 0:
        raise InvalidInputError("lease ttl must be positive seconds")


@dataclass
class _Hold:
    owner: str
    token: int
    until: float  # monotonic; <= now: lapsed (or released)


class LeaseTable:
    """The lease rules above for keys held in this process."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._holds: dict[Hashable, _Hold] = {}
        self._last_token = 0

    def acquire(self, key: Hashable, owner: str, ttl: float, *, force: bool = False) -> int:
        """Take, renew or reclaim the lease; its token. LeaseHeldError while another holds it."""
        check_ttl(ttl)
        now = self._clock()
        hold = self._holds.get(key)
        if hold is not None and hold.owner == owner and not force:
            hold.until = now + ttl
            return hold.token
        if hold is not None and hold.until > now and not force:
            raise LeaseHeldError(
                "the lease is held by another owner", owner=hold.owner, expires_in=hold.until - now
            )
        # tokens are microseconds of the wall clock at least: they keep growing across
        # restarts of a process, as Redis's do across restarts of Redis
        floor = hold.token + 1 if hold is not None else 0
        token = max(floor, self._last_token + 1, int(time.time() * 1_000_000))
        self._last_token = token
        self._holds[key] = _Hold(owner, token, now + ttl)
        return token

    def release(self, key: Hashable, owner: str, token: int) -> bool:
        """Give the lease up if ``owner``/``token`` hold it (its token stays remembered)."""
        hold = self._holds.get(key)
        if hold is None or hold.owner != owner or hold.token != token:
            return False
        hold.owner, hold.until = "", 0.0
        return True

    def check_fence(self, key: Hashable, fence: int | None) -> None:
        """Raise StaleLeaseError unless a write carrying ``fence`` may go ahead (see above)."""
        hold = self._holds.get(key)
        if hold is None:
            return
        live = hold.until > self._clock()
        if fence is None:
            if live:
                raise StaleLeaseError("this participant's lease is held; pass its fencing token")
            return
        if fence < hold.token or (live and fence != hold.token):
            raise StaleLeaseError(
                f"fencing token {fence} is older than the lease's ({hold.token}): "
                "another worker took over"
            )

    def holder(self, key: Hashable) -> tuple[str, int] | None:
        """(owner, token) of the live lease, or None."""
        hold = self._holds.get(key)
        if hold is None or hold.until <= self._clock() or not hold.owner:
            return None
        return hold.owner, hold.token

    def forget(self, key: Hashable) -> None:
        """Drop what is known of the key's lease (the record was purged)."""
        self._holds.pop(key, None)

    def sweep(self) -> None:
        """Forget leases that lapsed more than ``LEASE_MEMORY_S`` ago."""
        cutoff = self._clock() - LEASE_MEMORY_S
        for key in [k for k, hold in self._holds.items() if hold.until < cutoff]:
            del self._holds[key]
