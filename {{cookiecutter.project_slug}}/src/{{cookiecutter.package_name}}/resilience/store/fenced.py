"""``FencedStore``: the session store as the room's primary worker writes to it.

Why a participant lease exists beside the room lease: the room lease decides which worker
runs a room, but a write cannot check it. In Redis Cluster a Lua script may only touch keys
of one hash slot, and a participant's record lives under the participant's own hash tag
``{<prefix>:<participant hash>}`` while the room lease has ``{<prefix>:room:<room hash>}``
(_keys.py): a write script cannot read the room lease, so checking it before the write would
leave a gap in which another worker takes the room over. Each participant therefore has a
lease of their own under their tag (KEYS[5] of every participant script, _scripts.py), and
the script that writes checks its token in the same atomic step. The primary takes that
lease by force under its room-lease token, so the participant lease always follows the room
lease. The SQLite and memory stores keep the same two leases and the same rules (leases.py),
so a worker behaves the same on every store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from .base import (
    AppendResult,
    Fence,
    JoinOutcome,
    LeaseHeldError,
    SessionRecord,
    SessionStore,
)

__all__ = ["FencedStore", "RoomHolder"]


class RoomHolder(Protocol):
    """What ``FencedStore`` needs of the room lease's holder (``RoomPrimacy``)."""

    @property
    def token(self) -> int | None:
        """The room lease's fencing token while it is held, else None."""
        ...

    @property
    def owner(self) -> str:
        """Who holds the room lease (this worker's job)."""
        ...

    @property
    def ttl(self) -> float:
        """The room lease's time to live, seconds (the participant leases get the same)."""
        ...

    def fencing_token(self) -> int:
        """The room token for a write: StoreUnavailableError while the lease cannot be taken
        yet (the write waits in the store's queue), StaleLeaseError once the room is lost."""
        ...

    def add_heartbeat(self, beat: Callable[[], Awaitable[None]]) -> None:
        """Call ``beat()`` after each renewal of the room lease."""
        ...


class FencedStore:
    """A ``SessionStore`` for the room's primary worker: every write carries a fencing token.

    The first write for a participant under a room-lease token takes the participant's store
    lease by force (``acquire_lease(force=True)``): from then on the store refuses the
    writes of any earlier holder by token (their conversation entries are merged, not lost),
    and this worker's own once a successor does the same. Writes pass the store a fence
    resolved when they are sent, so a write queued during an outage carries the lease held
    when it lands. A ``fence`` given by the caller is ignored: the writer's own is used.
    ``load`` and ``acquire_lease`` are the store's; ``aclose`` closes the store. The room
    holder's heartbeat renews the participant leases (``renew``).
    """

    def __init__(self, store: SessionStore, holder: RoomHolder) -> None:
        self._store = store
        self._holder = holder
        holder.add_heartbeat(self.renew)
        self._fences: dict[tuple[str, str], tuple[int, int]] = {}  # -> (room token, fence)
        self._lock = asyncio.Lock()

    async def fence(self, room: str, identity: str) -> int:
        """This worker's fencing token for the participant; StaleLeaseError unless primary."""
        room_token = self._holder.fencing_token()
        async with self._lock:
            held = self._fences.get((room, identity))
            if held is not None and held[0] == room_token:
                return held[1]
            fence = await self._store.acquire_lease(
                room, identity, self._holder.owner, self._holder.ttl, force=True
            )
            self._fences[(room, identity)] = (room_token, fence)
            return fence

    async def renew(self) -> None:
        """Extend (or reclaim) the participant leases taken under the current room token."""
        room_token = self._holder.token
        for key, (token, fence) in list(self._fences.items()):
            if token != room_token:
                continue
            try:
                renewed = await self._store.acquire_lease(
                    *key, self._holder.owner, self._holder.ttl
                )
            except LeaseHeldError:
                del self._fences[key]  # taken over; the next write takes it back by force
                continue
            if renewed != fence:
                self._fences[key] = (token, renewed)

    # -- SessionStore: writes, fenced -----------------------------------------------------

    async def join(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None,
        transcript_tail: int | None = None,
    ) -> JoinOutcome:  # fmt: skip
        """``SessionStore.join`` under this worker's fence."""
        return await self._store.join(
            room, identity, session_id, fence=self._writer(room, identity),
            transcript_tail=transcript_tail,
        )  # fmt: skip

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
        """``SessionStore.append`` under this worker's fence (merged once it lost the room,
        then nothing is compacted)."""
        writer = self._writer(room, identity)
        return await self._store.append(
            room, identity, items, transcript, fence=writer, compact_through=compact_through
        )

    async def set_gemini_handle(
        self,
        room: str,
        identity: str,
        handle: str,
        covered_item_ids: Sequence[str],
        *,
        fence: Fence = None,
    ) -> None:
        """``SessionStore.set_gemini_handle`` under this worker's fence."""
        writer = self._writer(room, identity)
        await self._store.set_gemini_handle(room, identity, handle, covered_item_ids, fence=writer)

    async def update_profile(
        self,
        room: str,
        identity: str,
        *,
        language: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        fence: Fence = None,
    ) -> None:
        """``SessionStore.update_profile`` under this worker's fence."""
        writer = self._writer(room, identity)
        await self._store.update_profile(
            room, identity, language=language, metadata=metadata, fence=writer
        )

    async def leave(
        self, room: str, identity: str, session_id: str, *, fence: Fence = None
    ) -> None:
        """``SessionStore.leave`` under this worker's fence."""
        await self._store.leave(room, identity, session_id, fence=self._writer(room, identity))

    # -- SessionStore: the store's own ----------------------------------------------------

    async def load(self, room: str, identity: str) -> SessionRecord | None:
        """``SessionStore.load``: reads are not fenced."""
        return await self._store.load(room, identity)

    async def acquire_lease(
        self, room: str, identity: str, owner: str, ttl: float, *, force: bool = False
    ) -> int:
        """``SessionStore.acquire_lease`` of the store."""
        return await self._store.acquire_lease(room, identity, owner, ttl, force=force)

    async def aclose(self) -> None:
        """Close the store."""
        await self._store.aclose()

    def _writer(self, room: str, identity: str) -> Callable[[], Awaitable[int]]:
        return lambda: self.fence(room, identity)
