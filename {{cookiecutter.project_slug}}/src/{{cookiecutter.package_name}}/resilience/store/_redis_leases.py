"""The leases of leases.py in Redis: one hash per lease (owner, token, until in Redis ms),
written only by the ``ACQUIRE`` and ``RELEASE`` scripts of _scripts.py.

A participant's lease sits in the participant's hash tag, beside the record it fences; a
room's has a tag of its own (_keys.py). Any refusal or outage of Redis while acquiring is
StoreUnavailableError (a lease nobody else can see would defeat its purpose).
"""

from __future__ import annotations

import logging
from typing import Any

from ._codec import ms
from ._keys import participant_keys, redis_room_lease
from ._redis_client import run_script
from ._scripts import ACQUIRE, RELEASE
from .base import StoreUnavailableError
from .leases import NOBODY, Grant, LeaseState, check_ttl, held_error

__all__ = ["RedisLeases"]

logger = logging.getLogger(__name__)


class RedisLeases:
    """``Leases`` on the Redis ``client`` under key prefix ``prefix``."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.prefix = prefix
        self._client = client
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)

    def room(self, room: str) -> str:
        """See ``Leases.room``."""
        return redis_room_lease(self.prefix, room)

    def participant(self, room: str, identity: str) -> str:
        """See ``Leases.participant``: KEYS[5] of the participant's scripts."""
        return participant_keys(self.prefix, room, identity).lease

    async def acquire(
        self, key: str, owner: str, ttl: float, *, force: bool = False, held: int | None = None
    ) -> Grant:
        """See ``Leases.acquire``."""
        check_ttl(ttl)
        args: list[Any] = [owner, max(1, ms(ttl)), "1" if force else "0"]
        if held is not None:
            args.append(held)
        reply = await run_script(self._acquire, [key], args, "the lease cannot be checked")
        if reply[0] == b"held":
            raise held_error(reply[1].decode(), int(reply[2]) / 1000)
        return Grant(int(reply[1]), int(reply[2]))

    async def release(self, key: str, owner: str, token: int) -> bool:
        """See ``Leases.release``; False when Redis cannot answer (the lease then lapses)."""
        try:
            return bool(await run_script(self._release, [key], [owner, token], "the lease stays"))
        except StoreUnavailableError:
            logger.warning("lease not released: redis unavailable; it will lapse")
            return False

    async def state(self, key: str) -> LeaseState:
        """See ``Leases.state`` (operators, tests)."""
        owner, token, until = await self._client.hmget(key, "owner", "token", "until")
        now_s, now_us = await self._client.time()
        left = (int(until or 0) - (now_s * 1000 + now_us // 1000)) / 1000
        if not owner or left <= 0:
            return NOBODY
        return LeaseState(owner.decode(), int(token), left)
