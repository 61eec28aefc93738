"""Which worker is primary for a room: a lease with a fencing token, renewed by heartbeat.

Two workers can end up in one room (a dispatch retried after a timeout, a second agent
deployment). Each asks for the room's lease; the holder runs the conversation, the other
stands by (listen-only, or leaves). The holder renews every ``ttl / 3``; if it dies, its lease
lapses ``ttl`` later and a standby (polling every ``ttl / 10``, at most 0.5 s) takes it with a
higher fencing token and continues from the session store.

The lease is the store's (store/leases.py, which states its rules once): the room lease and
the participants' leases are one implementation per backend under different keys. What
matters for a call:

- An unreachable or refusing Redis never ends a call and never demotes the holder: while Redis
  cannot answer, nobody else can take the lease either. Renewals are retried every poll
  interval, and a holder whose lease lapsed during the fault reclaims it with the same token.
  A worker steps down only when Redis answers and shows another holder.
- A job that starts while Redis cannot answer serves its room at once (provisionally) and
  takes the lease once Redis answers, or steps down if another worker had it.
- A stalled event loop is not a lost lease: with nobody else asking, the holder reclaims it.

A lease made with ``watch_as=AGENT_NAME`` also keeps its room on the watch list of held rooms
(``room_registry.py``), so that a worker can dispatch a job again into a room whose holder died.

- :class:`RedisRoomLease`: one Redis hash per room, shared by every worker.
- :class:`SqliteRoomLease`: one row in the SQLite session file, shared by every job and worker
  process on a host (the default store's lease).
- :class:`LocalRoomLease`: a lease table of this process (the in-memory store's).
- :class:`RoomPrimacy`: the heartbeat that acquires, renews and reports losing the lease; the
  store's writes are fenced by it through ``store.fenced.FencedStore``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ...log import get_logger
from ..store import LeaseHeldError, StaleLeaseError, StoreUnavailableError
from ..store.file import Connection, SqliteDatabase, SqliteLeases
from ..store.leases import Grant, Leases, LeaseState, LocalLeaseTable, check_ttl
from ..store.redis import RedisLeases
from .room_registry import RedisRoomRegistry, unwatch_room, watch_room

logger = get_logger(__name__)

# a standby (or another worker's room watcher) polls every ttl/10, at most 0.5 s, so a dead
# holder is replaced at most ttl + poll after its last renewal: 3.3 s with the defaults
DEFAULT_TTL_S = 3.0
MAX_POLL_S = 0.5
# how long a job waits for the lease's first answer before serving its room provisionally
FIRST_ANSWER_S = 1.0


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
    check_ttl(ttl)


class _StoreRoomLease:
    """A room's lease in a store's lease table (``Leases``); see the module docstring."""

    def __init__(self, leases: Leases[Any], room: str, owner: str, ttl: float) -> None:
        _check(room, owner, ttl)
        self.room, self.owner, self.ttl = room, owner, ttl
        self._leases = leases
        # the room name hashed, never stored (but on the watch list while watched)
        self.key = leases.room(room)

    async def acquire(self) -> int | None:
        """See :meth:`RoomLease.acquire`; raises StoreUnavailableError without the store."""
        return await self._take(None)

    async def renew(self, token: int) -> bool:
        """See :meth:`RoomLease.renew`; raises StoreUnavailableError without the store."""
        return await self._take(token) == token

    async def release(self, token: int) -> bool:
        """See :meth:`RoomLease.release`; False when the store cannot answer (it then lapses)."""
        return await self._leases.release(self.key, self.owner, token)

    async def state(self) -> LeaseState:
        """Who holds it now (operators, tests)."""
        return await self._leases.state(self.key)

    async def _take(self, held: int | None) -> int | None:
        """Take (renewing ``held``); the token, or None while another holds the lease."""
        try:
            return (await self._grant(held)).token
        except LeaseHeldError:
            return None

    async def _grant(self, held: int | None) -> Grant:
        return await self._leases.acquire(self.key, self.owner, self.ttl, held=held)


class RedisRoomLease(_StoreRoomLease):
    """The room lease in Redis, shared by every worker; see the module docstring.

    ``watch_as``: the agent name to dispatch the room again with if this worker dies (None:
    not watched). The watch list has a Cluster slot of its own, so its entry is written just
    after the lease, with the lease's until.
    """

    def __init__(
        self, client: Any, room: str, owner: str, *, ttl: float = DEFAULT_TTL_S,
        prefix: str = "lkagent", watch_as: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(RedisLeases(client, prefix), room, owner, ttl)
        self.watch_as = watch_as
        self._watch = RedisRoomRegistry(client, prefix=prefix) if watch_as is not None else None
        self._until: int | None = None  # the until of the entry this lease last wrote

    async def release(self, token: int) -> bool:
        """See :meth:`RoomLease.release`; False when Redis cannot answer (it then lapses)."""
        released = await super().release(token)
        if released and self._watch is not None and self._until is not None:
            # only the entry this lease wrote: never a successor's (unreachable: it lapses)
            with contextlib.suppress(StoreUnavailableError):
                await self._watch.remove(self.room, self._until)
        return released

    async def _grant(self, held: int | None) -> Grant:
        grant = await super()._grant(held)
        if self._watch is not None and self.watch_as is not None:
            self._until = grant.until_ms
            await self._watch.record(self.room, self.watch_as, grant.until_ms)
        return grant


class SqliteRoomLease(_StoreRoomLease):
    """The room lease in the SQLite session file (SESSION_DB_PATH), seen by every job and
    worker process on the host; the same rules and outage behaviour as ``RedisRoomLease``
    (a locked or failing file raises StoreUnavailableError: the holder keeps its room).
    ``watch_as`` as there; the entry is written in the lease's own transaction."""

    def __init__(
        self, db: SqliteDatabase | str | os.PathLike[str], room: str, owner: str, *,
        ttl: float = DEFAULT_TTL_S, watch_as: str | None = None,
    ) -> None:  # fmt: skip
        leases = SqliteLeases(db if isinstance(db, SqliteDatabase) else SqliteDatabase(db))
        super().__init__(leases, room, owner, ttl)
        self._sqlite = leases
        self.watch_as = watch_as

    async def release(self, token: int) -> bool:
        """See :meth:`RoomLease.release`; False when the file cannot answer (it then lapses)."""
        if self.watch_as is None:
            return await super().release(token)
        room = self.room
        return await self._sqlite.release(
            self.key, self.owner, token, then=lambda conn, _: unwatch_room(conn, room)
        )

    async def _grant(self, held: int | None) -> Grant:
        return await self._sqlite.acquire(
            self.key, self.owner, self.ttl, held=held,
            then=None if self.watch_as is None else self._watched,
        )  # fmt: skip

    def _watched(self, conn: Connection, grant: Grant) -> None:
        """In the lease's transaction: the room's entry gets the lease's until."""
        watch_room(conn, self.room, self.watch_as or "", grant.until_ms)


class LocalRoomLease(_StoreRoomLease):
    """The room lease in a lease table of this process (the in-memory store: one worker).

    ``table``: the leases it contends with; pass the one every job sharing the store uses
    (``MemoryStore.leases``). By default it has a table of its own and contends with nobody,
    which is right for one job per process, as LiveKit runs jobs.
    """

    def __init__(
        self, room: str, owner: str, *, ttl: float = DEFAULT_TTL_S,
        table: LocalLeaseTable | None = None,
    ) -> None:  # fmt: skip
        super().__init__(table if table is not None else LocalLeaseTable(), room, owner, ttl)


class RoomPrimacy:
    """Holds (or waits for) a room's lease and says whether this worker is primary.

    ``on_acquired(token)`` and ``on_lost()`` are called as that changes, and each heartbeat
    (``add_heartbeat``) after every successful renewal. ``on_lost`` means Redis answered and
    showed another holder; a Redis that cannot answer changes nothing (module docstring).
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
        self._provisional = False  # serving without the lease: Redis could not answer yet
        self._unreachable_since: float | None = None
        self._primary = asyncio.Event()
        self._first: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def token(self) -> int | None:
        """The fencing token while this worker holds the lease, else None."""
        return self._token

    @property
    def owner(self) -> str:
        """This worker's name on the lease."""
        return self.lease.owner

    @property
    def ttl(self) -> float:
        """The lease's time to live, seconds."""
        return self.lease.ttl

    @property
    def is_primary(self) -> bool:
        """Whether this worker runs the room: it holds the lease, or serves provisionally."""
        return self._token is not None or self._provisional

    async def start(self) -> bool:
        """Try once now, then keep trying / renewing in the background; True when serving.

        When Redis cannot answer (within ``FIRST_ANSWER_S``: a frozen server answers
        nothing), the worker serves provisionally (True) and takes the lease once Redis
        answers; ``on_lost`` is called if another worker turns out to hold it.
        """
        self._first = asyncio.ensure_future(self._attempt())
        await asyncio.wait({self._first}, timeout=FIRST_ANSWER_S)
        if not self._first.done() and self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            logger.warning("room lease cannot be checked: its store does not answer")
        if self._unreachable_since is not None and self._token is None:
            self._provisional = True
            self._primary.set()
            logger.warning(
                "lease store unavailable: serving this room at once; the room lease is "
                "taken when the store answers"
            )
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="room_primacy")
        return self.is_primary

    def add_heartbeat(self, beat: Callable[[], Awaitable[None]]) -> None:
        """Also call ``beat()`` after each successful renewal."""
        self._heartbeats.append(beat)

    async def wait_until_primary(self) -> int | None:
        """Wait until this worker serves the room; the token (None while provisional)."""
        await self._primary.wait()
        return self._token

    def fencing_token(self) -> int:
        """The lease's token for a write: StoreUnavailableError while serving provisionally
        (the write waits in the store's queue), StaleLeaseError once the room is lost."""
        if self._token is not None:
            return self._token
        if self._provisional:
            raise StoreUnavailableError(
                "the room lease is not taken yet (its store is unavailable)"
            )
        raise StaleLeaseError("this worker does not hold the room's lease; it must not write")

    async def aclose(self, *, release: bool = True) -> None:
        """Stop the heartbeat and (by default) give the lease up for a fast handover."""
        for task in (self._task, self._first):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._first = None
        token, self._token, self._provisional = self._token, None, False
        self._primary.clear()
        if release and token is not None:
            await self.lease.release(token)

    async def _run(self) -> None:
        while True:
            healthy = self._token is not None and self._unreachable_since is None
            await asyncio.sleep(self._renew_every if healthy else self._poll_every)
            await self._attempt()

    async def _attempt(self) -> None:
        try:
            if self._token is None:
                token = await self.lease.acquire()
                self._reachable()
                if token is not None:
                    self._gain(token)
                elif self._provisional:
                    self._lose("another worker holds the room lease")
                return
            renewed = await self.lease.renew(self._token)
            self._reachable()
            if not renewed:
                self._lose("another worker holds the room lease")
                return
            for beat in self._heartbeats:
                await beat()
        except StoreUnavailableError as exc:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                logger.warning(
                    "room lease cannot be checked: its store is unavailable; keeping the room",
                    error=str(exc),
                )
        except Exception:
            logger.exception("room lease heartbeat failed")

    def _reachable(self) -> None:
        if self._unreachable_since is not None:
            logger.info(
                "room lease checked again",
                unreachable_s=round(time.monotonic() - self._unreachable_since, 1),
            )
            self._unreachable_since = None

    def _gain(self, token: int) -> None:
        self._token, self._provisional = token, False
        self._primary.set()
        logger.info("room lease acquired", token=token, ttl_s=self.lease.ttl)
        if self._on_acquired is not None:
            self._on_acquired(token)

    def _lose(self, reason: str) -> None:
        token, self._token, self._provisional = self._token, None, False
        self._primary.clear()
        logger.warning("room lease lost", token=token, reason=reason)
        if self._on_lost is not None:
            self._on_lost()
