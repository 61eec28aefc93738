"""Writes waiting for Redis (or the SQLite file) to come back, replayed in order by one task.

While Redis cannot answer (down, restarting, failing over, out of memory or refusing a
command) the store answers from memory and queues each write here. Once Redis answers, a
single task first runs ``before_replay`` (the store rewrites live conversations Redis may
have lost), then retries the oldest write with exponential backoff; a write leaves the queue
only once Redis has applied it, so nothing is lost while the queue has room. All store writes
are idempotent (joins keyed by session id, appends deduplicated by item id), so replaying one
that Redis had in fact applied before the connection broke does no harm.

The queue is bounded: when full, the new write is dropped and logged at ERROR with counts.
A write the store refuses for good (a stale fencing token: another worker took the
participant over) cannot succeed by retrying; it is dropped with an ERROR so one bad write
does not block the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ... import metrics
from ..backoff import Backoff

__all__ = ["PendingWrite", "WriteQueue"]

logger = logging.getLogger(__name__)

_LOG_EVERY_DROPS = 100


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """One queued write: what it is (for logs) and how to send it to Redis."""

    name: str
    room: str
    participant: str  # identity hash
    send: Callable[[], Awaitable[Any]]


class WriteQueue:
    """Bounded FIFO of writes plus the task that replays them when the service is back."""

    def __init__(
        self,
        *,
        probe: Callable[[], Awaitable[Any]],
        unavailable: tuple[type[BaseException], ...],
        max_writes: int = 10_000,
        base_delay: float = 0.05,
        max_delay: float = 1.0,
        before_replay: Callable[[], Awaitable[Any]] | None = None,
        backend: str = "redis",
    ) -> None:
        self.max_writes = max_writes
        self.backend = backend  # what the logs name: "redis", "sqlite"
        self._before_replay = before_replay
        self._probe = probe
        self._unavailable = unavailable
        self._backoff = Backoff(base_delay, max_delay, jitter=0.5)
        self._writes: deque[PendingWrite] = deque()
        self._degraded = False
        self._atask: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0
        self.refused = 0
        self.replayed = 0
        self.outages = 0

    @property
    def busy(self) -> bool:
        """True while the service is considered down or writes are still waiting."""
        return self._degraded or bool(self._writes)

    def __len__(self) -> int:
        return len(self._writes)

    def mark_unavailable(self, error: BaseException) -> None:
        """Switch to queueing (first failure of an outage) and start the replay task."""
        if not self._degraded:
            self._degraded = True
            self.outages += 1
            logger.warning(
                "session store unavailable; answering from memory and queueing writes",
                extra={
                    "backend": self.backend,
                    "error": type(error).__name__,
                    "detail": str(error)[:200],
                },
            )
        self._idle.clear()
        if self._atask is None or self._atask.done():
            self._atask = asyncio.create_task(self._replay(), name="session-store-replay")

    def put(self, write: PendingWrite) -> bool:
        """Queue a write behind the others; False (and an ERROR log) when the queue is full."""
        if len(self._writes) >= self.max_writes:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % _LOG_EVERY_DROPS == 0:
                logger.error(
                    "session write queue full: write dropped (live conversations are "
                    "rewritten from memory when the store answers)",
                    extra={
                        "backend": self.backend,
                        "write": write.name,
                        "room": write.room,
                        "participant": write.participant,
                        "queued": len(self._writes),
                        "max_writes": self.max_writes,
                        "dropped_total": self.dropped,
                    },
                )
            return False
        self._writes.append(write)
        metrics.STORE_WRITES.labels("queued").inc()
        metrics.STORE_QUEUE_DEPTH.inc()
        return True

    async def wait_idle(self, max_wait: float | None = None) -> bool:
        """Wait until every queued write is applied; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), max_wait)
        except TimeoutError:
            return False
        return True

    async def aclose(self, grace: float = 5.0) -> None:
        """Give queued writes ``grace`` seconds to land, then stop (logging what is left)."""
        if self.busy and not await self.wait_idle(grace):
            logger.error(
                "session store closed with writes that never reached it",
                extra={
                    "backend": self.backend,
                    "lost_writes": len(self._writes),
                    "dropped_total": self.dropped,
                },
            )
        if self._atask is not None:
            self._atask.cancel()
            await asyncio.gather(self._atask, return_exceptions=True)
            self._atask = None
        metrics.STORE_QUEUE_DEPTH.dec(len(self._writes))
        self._writes.clear()

    async def _replay(self) -> None:
        failures = 0
        prepared = self._before_replay is None
        while True:
            if not prepared:
                prepared = await self._prepare()
                if prepared:
                    continue
            elif not self._writes:
                if await self._probe_ok():
                    self._degraded = False
                    self._idle.set()
                    logger.info(
                        "session store available again; queued writes replayed",
                        extra={
                            "backend": self.backend,
                            "replayed_total": self.replayed,
                            "dropped_total": self.dropped,
                        },
                    )
                    return
            else:
                write = self._writes[0]
                try:
                    if await self._attempt(write.send):
                        self.replayed += 1
                        self._writes.popleft()
                        metrics.STORE_WRITES.labels("retried").inc()
                        metrics.STORE_QUEUE_DEPTH.dec()
                        failures = 0
                        continue
                except Exception as exc:
                    self._refuse(write, exc)
                    continue
            # jitter keeps many workers from hammering a recovering server together
            failures += 1
            await asyncio.sleep(self._backoff.delay(failures))

    async def _prepare(self) -> bool:
        """Run ``before_replay`` once the service answers; False while it still cannot."""
        if self._before_replay is None:
            return True
        try:
            return await self._attempt(self._before_replay)
        except Exception:
            logger.exception("preparing the replay of queued writes failed; replaying them")
            return True

    async def _probe_ok(self) -> bool:
        try:
            return await self._attempt(self._probe)
        except Exception as exc:  # e.g. a misconfigured server: keep probing, keep serving
            logger.warning(
                "session store probe failed",
                extra={"backend": self.backend, "error": type(exc).__name__},
            )
            return False

    async def _attempt(self, send: Callable[[], Awaitable[Any]]) -> bool:
        """True when ``send`` went through, False when the service is still unavailable."""
        try:
            await send()
        except self._unavailable:
            return False
        return True

    def _refuse(self, write: PendingWrite, exc: Exception) -> None:
        self._writes.popleft()
        self.refused += 1
        metrics.STORE_WRITES.labels("refused").inc()
        metrics.STORE_QUEUE_DEPTH.dec()
        logger.error(
            "session store refused a queued write; dropped",
            extra={
                "backend": self.backend,
                "write": write.name,
                "room": write.room,
                "participant": write.participant,
                "error": type(exc).__name__,
                "detail": str(exc)[:200],
            },
        )
