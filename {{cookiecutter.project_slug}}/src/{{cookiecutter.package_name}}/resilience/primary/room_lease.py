"""Which worker is primary for a room: a lease with a fencing token, renewed by heartbeat.

Two workers can end up in one room (a dispatch retried after a timeout, a second agent
deployment). Each asks for the room's lease; the holder runs the conversation, the other
stands by (listen-only, or leaves). The holder renews every ``ttl / 3``; if it dies, its lease
lapses ``ttl`` later and a standby (polling every ``ttl / 10``, at most 0.5 s) takes it with a
higher fencing token and continues from the session store.

The lease follows the rules of ``store/leases.py``. What matters for a call:

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
- :class:`LocalRoomLease`: the same within one process (the in-memory store: one worker).
- :class:`RoomPrimacy`: the heartbeat that acquires, renews and reports losing the lease.
- :class:`FencedStore`: a SessionStore whose writes carry the participant's store lease
  token, taken by force while this worker holds the room lease; a worker that lost the room
  writes nothing but conversation entries, which the store merges (see ``SessionStore``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ...log import get_logger
from ..store import (
    LeaseHeldError,
    SessionStore,
    StaleLeaseError,
    StoreUnavailableError,
    redis_scripts,
    sqlite_ops,
)
from ..store.leases import LeaseTable, check_ttl
from ..store.redis_client import run_script
from ..store.sqlite_db import SqliteDatabase
from .room_registry import RedisRoomRegistry

logger = get_logger(__name__)

# a standby (or another worker's room watcher) polls every ttl/10, at most 0.5 s, so a dead
# holder is replaced at most ttl + poll after its last renewal: 3.3 s with the defaults
DEFAULT_TTL_S = 3.0
MAX_POLL_S = 0.5
# how long a job waits for the lease's first answer before serving its room provisionally
FIRST_ANSWER_S = 1.0


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
    check_ttl(ttl)


class RedisRoomLease:
    """The room lease in Redis, shared by every worker; see the module docstring.

    ``watch_as``: the agent name to dispatch the room again with if this worker dies (None:
    not watched). The watch list has a Cluster slot of its own, so its entry is written just
    after the lease, with the lease's until.
    """

    def __init__(
        self, client: Any, room: str, owner: str, *, ttl: float = DEFAULT_TTL_S,
        prefix: str = "lkagent", watch_as: str | None = None,
    ) -> None:  # fmt: skip
        _check(room, owner, ttl)
        self.room, self.owner, self.ttl, self.watch_as = room, owner, ttl, watch_as
        # a hash tag of its own: one Cluster slot; the room name is hashed, never stored (but
        # on the watch list while watched)
        tag = "{" + prefix + ":room:" + hashlib.sha256(room.encode()).hexdigest()[:32] + "}"
        self.key = tag + ":lease"
        self._client = client
        self._acquire = client.register_script(redis_scripts.ACQUIRE)
        self._release = client.register_script(redis_scripts.RELEASE)
        self._watch = RedisRoomRegistry(client, prefix=prefix) if watch_as is not None else None
        self._until: int | None = None  # the until of the entry this lease last wrote

    async def acquire(self) -> int | None:
        """See :meth:`RoomLease.acquire`; raises StoreUnavailableError without Redis."""
        return await self._take()

    async def renew(self, token: int) -> bool:
        """See :meth:`RoomLease.renew`; raises StoreUnavailableError without Redis."""
        return await self._take(token) == token

    async def release(self, token: int) -> bool:
        """See :meth:`RoomLease.release`; False when Redis cannot answer (it then lapses)."""
        try:
            released = bool(await self._call(self._release, [self.owner, token]))
        except StoreUnavailableError:
            return False
        if released and self._watch is not None and self._until is not None:
            # only the entry this lease wrote: never a successor's (unreachable: it lapses)
            with contextlib.suppress(StoreUnavailableError):
                await self._watch.remove(self.room, self._until)
        return released

    async def _take(self, *held: int) -> int | None:
        """ACQUIRE (renewing ``held``); the token, or None while another holds the lease."""
        reply = await self._call(self._acquire, [self.owner, _ms(self.ttl), "0", *held])
        if reply[0] != b"ok":
            return None
        if self._watch is not None and self.watch_as is not None:
            self._until = int(reply[2])
            await self._watch.record(self.room, self.watch_as, self._until)
        return int(reply[1])

    async def state(self) -> LeaseState:
        """Who holds it now (operators, tests)."""
        owner, token, until = await self._client.hmget(self.key, "owner", "token", "until")
        now_s, now_us = await self._client.time()
        left = (int(until or 0) - (now_s * 1000 + now_us // 1000)) / 1000
        if not owner or left <= 0:
            return LeaseState(None, None, None)
        return LeaseState(owner.decode(), int(token), left)

    async def _call(self, script: Any, args: list[Any]) -> Any:
        return await run_script(script, [self.key], args, "the room lease cannot be checked")


class SqliteRoomLease:
    """The room lease in the SQLite session file (SESSION_DB_PATH), seen by every job and
    worker process on the host; the same rules and outage behaviour as ``RedisRoomLease``
    (a locked or failing file raises StoreUnavailableError: the holder keeps its room).
    ``watch_as`` as there; the entry is written in the lease's own transaction."""

    def __init__(
        self, db: SqliteDatabase | str, room: str, owner: str, *, ttl: float = DEFAULT_TTL_S,
        watch_as: str | None = None,
    ) -> None:  # fmt: skip
        _check(room, owner, ttl)
        self.room, self.owner, self.ttl, self.watch_as = room, owner, ttl, watch_as
        # the room name hashed, never stored (but on the watch list while watched)
        self.key = sqlite_ops.room_lease(room)
        self._db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(db)
        self._watch = (room, watch_as) if watch_as is not None else None

    async def acquire(self) -> int | None:
        """See :meth:`RoomLease.acquire`; raises StoreUnavailableError without the file."""
        return await self._take(None)

    async def renew(self, token: int) -> bool:
        """See :meth:`RoomLease.renew`; raises StoreUnavailableError without the file."""
        return await self._take(token) == token

    async def release(self, token: int) -> bool:
        """See :meth:`RoomLease.release`; False when the file cannot answer (it then lapses)."""
        room = self.room if self._watch is not None else None
        try:
            return await self._db.write(sqlite_ops.release_room, self.key, self.owner, token, room)
        except StoreUnavailableError:
            return False

    async def _take(self, held: int | None) -> int | None:
        try:
            return await self._db.write(
                sqlite_ops.acquire_room, self.key, self.owner, _ms(self.ttl), held, self._watch
            )
        except LeaseHeldError:
            return None

    async def state(self) -> LeaseState:
        """Who holds it now (operators, tests)."""
        found = await self._db.read(sqlite_ops.lease_state, self.key)
        return LeaseState(*found) if found is not None else LeaseState(None, None, None)


# the room leases of this process's jobs (LocalRoomLease's default)
PROCESS_ROOM_LEASES = LeaseTable()


class LocalRoomLease:
    """The room lease within one process (the in-memory store: one worker per room)."""

    def __init__(
        self, room: str, owner: str, *, ttl: float = DEFAULT_TTL_S,
        table: LeaseTable = PROCESS_ROOM_LEASES,
    ) -> None:  # fmt: skip
        _check(room, owner, ttl)
        self.room, self.owner, self.ttl = room, owner, ttl
        self._table = table

    async def acquire(self) -> int | None:
        """See :meth:`RoomLease.acquire`."""
        try:
            return self._table.acquire(self.room, self.owner, self.ttl)
        except LeaseHeldError:
            return None

    async def renew(self, token: int) -> bool:
        """See :meth:`RoomLease.renew`."""
        return await self.acquire() == token

    async def release(self, token: int) -> bool:
        """See :meth:`RoomLease.release`."""
        return self._table.release(self.room, self.owner, token)


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


class FencedStore:
    """A SessionStore for the room's primary worker: every write carries a fencing token.

    The first write for a participant under a room-lease token takes the participant's store
    lease by force (``acquire_lease(force=True)``): from then on the store refuses the
    writes of any earlier holder by token (their conversation entries are merged, not lost),
    and this worker's own once a successor does the same. Writes pass the store a fence
    resolved when they are sent, so a write queued during an outage carries the lease held
    when it lands. Reads pass through. The primacy's heartbeat renews the participant leases.
    """

    def __init__(self, store: SessionStore, primacy: RoomPrimacy) -> None:
        self._store = store
        self._primacy = primacy
        primacy.add_heartbeat(self.renew)
        self._fences: dict[tuple[str, str], tuple[int, int]] = {}  # -> (room token, fence)
        self._lock = asyncio.Lock()

    async def fence(self, room: str, identity: str) -> int:
        """This worker's fencing token for the participant; StaleLeaseError unless primary."""
        room_token = self._primacy.fencing_token()
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
        """Extend (or reclaim) the participant leases taken under the current room token."""
        room_token = self._primacy.token
        for key, (token, fence) in list(self._fences.items()):
            if token != room_token:
                continue
            try:
                renewed = await self._store.acquire_lease(
                    *key, self._primacy.lease.owner, self._primacy.lease.ttl
                )
            except LeaseHeldError:
                del self._fences[key]  # taken over; the next write takes it back by force
                continue
            if renewed != fence:
                self._fences[key] = (token, renewed)

    def _writer(self, room: str, identity: str) -> Callable[[], Awaitable[int]]:
        return lambda: self.fence(room, identity)

    async def join(self, room: str, identity: str, session_id: str, **_: Any) -> Any:
        fence = self._writer(room, identity)
        return await self._store.join(room, identity, session_id, fence=fence)

    async def append(
        self,
        room: str,
        identity: str,
        items: Sequence[Mapping[str, Any]] = (),
        transcript: Sequence[Mapping[str, Any]] = (),
        **_: Any,
    ) -> Any:
        fence = self._writer(room, identity)
        return await self._store.append(room, identity, items, transcript, fence=fence)

    async def set_gemini_handle(
        self, room: str, identity: str, handle: str, covered_item_ids: Sequence[str], **_: Any
    ) -> None:
        fence = self._writer(room, identity)
        await self._store.set_gemini_handle(room, identity, handle, covered_item_ids, fence=fence)

    async def update_profile(self, room: str, identity: str, **kwargs: Any) -> None:
        kwargs["fence"] = self._writer(room, identity)
        await self._store.update_profile(room, identity, **kwargs)

    async def leave(self, room: str, identity: str, session_id: str, **_: Any) -> None:
        fence = self._writer(room, identity)
        await self._store.leave(room, identity, session_id, fence=fence)

    def __getattr__(self, name: str) -> Any:
        # reads, leases, events and aclose are the store's own
        return getattr(self._store, name)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
