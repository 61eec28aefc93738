"""Redis faults for tests: a real redis-server killed, frozen, wiped, full, or failed over.

Each fault owns the servers it acts on. ``async with fault.serving() as url`` starts them and
gives the ``REDIS_URL`` a worker uses; ``await fault.begin()`` makes Redis fail,
``await fault.end()`` brings it back (``await fault.run()`` does both, ``seconds`` apart).
``started_at`` / ``ended_at`` are the monotonic times they happened::

    fault = Kill(seconds=12)
    async with fault.serving() as url:
        settings = load_settings(redis_url=url)
        ...
        await fault.run()

- :class:`Kill`: SIGKILL, then a restart with the data (append-only file) after ``seconds``.
- :class:`Pause`: SIGSTOP for ``seconds``: connections stay open and nothing answers.
- :class:`Wipe`: killed and restarted without persistence: Redis comes back empty.
- :class:`OutOfMemory`: ``maxmemory`` reached, ``noeviction``: every write is refused
  (``-OOM``) until the limit is lifted ``seconds`` later.
- :class:`Failover`: a primary, a replica and a Sentinel; the primary is killed for good and
  the fault ends when the Sentinel has promoted the replica.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from .redis_server import RedisSentinel, RedisServer

__all__ = ["Failover", "Kill", "OutOfMemory", "Pause", "RedisFault", "Wipe"]


class RedisFault(abc.ABC):
    """What every fault shares; subclasses say how Redis fails and comes back."""

    name = "fault"
    breaks = "redis fails"  # what begin() does, for progress lines
    heals = "redis is back"  # what end() does
    durable = True  # the server keeps its data across a kill (append-only file)

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.server: RedisServer | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None

    @property
    def label(self) -> str:
        """A short name with the duration (test ids, reports)."""
        return f"{self.name}-{self.seconds:g}s" if self.seconds else self.name

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Start the server(s) this fault acts on; yields the URL a worker connects to."""
        server = RedisServer(durable=self.durable)
        try:
            await asyncio.to_thread(server.start)
            self.server = server
            yield server.url
        finally:
            await asyncio.to_thread(server.stop)

    async def run(self) -> None:
        """Begin the fault, wait ``seconds``, end it."""
        await self.begin()
        await asyncio.sleep(self.seconds)
        await self.end()

    async def begin(self) -> None:
        self.started_at = time.monotonic()
        await asyncio.to_thread(self._break)

    async def end(self) -> None:
        await asyncio.to_thread(self._heal)
        self.ended_at = time.monotonic()

    @abc.abstractmethod
    def _break(self) -> None:
        """Break Redis (each fault its own way)."""

    @abc.abstractmethod
    def _heal(self) -> None:
        """Undo what ``_break`` did."""

    def _running_server(self) -> RedisServer:
        if self.server is None:
            raise RuntimeError(f"{self.name}: use the fault inside `async with fault.serving()`")
        return self.server


class Kill(RedisFault):
    """Redis crashes (SIGKILL) and is back ``seconds`` later with its data."""

    name = "kill"
    breaks = "redis killed (SIGKILL)"
    heals = "redis restarted with its data"

    def _break(self) -> None:
        self._running_server().kill()

    def _heal(self) -> None:
        self._running_server().start()


class Pause(RedisFault):
    """Redis hangs (SIGSTOP) for ``seconds``: commands time out instead of failing fast."""

    name = "sigstop"
    breaks = "redis frozen (SIGSTOP)"
    heals = "redis resumed (SIGCONT)"

    def _break(self) -> None:
        self._running_server().pause()

    def _heal(self) -> None:
        self._running_server().resume()


class Wipe(Kill):
    """Redis restarts without persistence after ``seconds``: every key is gone."""

    name = "wipe"
    breaks = "redis killed (no persistence)"
    heals = "redis restarted empty"
    durable = False


class OutOfMemory(RedisFault):
    """``maxmemory`` reached with ``noeviction`` for ``seconds``, then lifted."""

    name = "oom"
    breaks = "redis maxmemory reached (noeviction)"
    heals = "redis maxmemory lifted"
    # Redis's own use swings by about 33 kB from one moment to the next (buffers it allocates
    # and frees): a limit just above it is reached only now and then, and writes slip through
    # in between. The limit is set this far below, so every write is refused until lifted.
    swing = 64 * 1024

    def _break(self) -> None:
        with self._running_server().client() as admin:
            admin.config_set("maxmemory-policy", "noeviction")
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory", max(1, used - self.swing))

    def _heal(self) -> None:
        with self._running_server().client() as admin:
            admin.config_set("maxmemory", 0)


class Failover(RedisFault):
    """Through a Sentinel: the primary dies for good and the replica is promoted."""

    name = "failover"
    breaks = "redis primary killed"
    heals = "sentinel promoted the replica"

    def __init__(self) -> None:
        super().__init__()
        self.sentinel: RedisSentinel | None = None
        self.replica: RedisServer | None = None

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """A primary, its replica and a Sentinel watching them; yields the Sentinel URL."""
        primary = RedisServer()
        replica = RedisServer(replica_of=primary)
        sentinel = RedisSentinel(primary)
        started: list[RedisServer | RedisSentinel] = []
        try:
            for process in (primary, replica, sentinel):
                started.append(process)  # stopped even if its start fails half-way
                await asyncio.to_thread(process.start)
            self.server, self.replica, self.sentinel = primary, replica, sentinel
            yield sentinel.url
        finally:
            for process in reversed(started):
                await asyncio.to_thread(process.stop)

    async def run(self) -> None:
        """Kill the primary; done when the replica is promoted."""
        await self.begin()
        await self.end()

    def _break(self) -> None:
        self._running_server().kill()

    def _heal(self) -> None:
        if self.sentinel is None:
            raise RuntimeError("failover: use the fault inside `async with fault.serving()`")
        self.sentinel.wait_for_failover(away_from=self._running_server().port)
