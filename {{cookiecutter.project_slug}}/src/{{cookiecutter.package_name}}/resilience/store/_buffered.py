"""What a store whose backend can fail (Redis, a SQLite file) does while it cannot answer.

Writes are sent at once; when the backend cannot answer they are applied to an in-process copy
of the last known records (``_cache``, a MemoryStore) and queued (``_queue``, _write_queue.py)
until it can. A join so answered comes back with ``JoinOutcome.settled``, which resolves to the
backend's own answer once the queued join lands. A write the backend took is mirrored into the
copy, but only for a record held in full: a partial copy would later be served as the whole
conversation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ... import metrics
from ._keys import identity_hash
from ._write_queue import PendingWrite, WriteQueue
from .base import AppendResult, JoinOutcome
from .memory import MemoryStore

__all__ = ["BufferedWrites"]

T = TypeVar("T")


class BufferedWrites:
    """Base of the stores with a backend that can fail; they set the three attributes."""

    _cache: MemoryStore
    _queue: WriteQueue
    _unavailable: tuple[type[BaseException], ...]

    @property
    def pending_writes(self) -> int:
        """Writes waiting for the backend (0 when healthy)."""
        return len(self._queue)

    @property
    def write_queue(self) -> WriteQueue:
        """The replay queue (counters: replayed, dropped, refused, outages)."""
        return self._queue

    async def wait_flushed(self, max_wait: float | None = None) -> bool:
        """Wait until the backend answers and every queued write has landed; False on timeout."""
        return await self._queue.wait_idle(max_wait)

    async def _write(
        self,
        name: str,
        room: str,
        identity: str,
        send: Callable[[], Awaitable[T]],
        local: Callable[[], Awaitable[T]],
    ) -> T:
        """Send now; while the backend cannot answer, apply ``local`` and queue ``send``."""
        if not self._queue.busy:
            started = time.perf_counter()
            try:
                result = await send()
            except self._unavailable as exc:
                self._queue.mark_unavailable(exc)
            else:
                metrics.STORE_WRITES.labels("sent").inc()
                metrics.STORE_WRITE_SECONDS.observe(time.perf_counter() - started)
                return result
        result = await local()
        self._queue.put(PendingWrite(name, room, identity_hash(identity), send))
        return result

    async def _write_join(
        self, room: str, identity: str, session_id: str,
        send: Callable[[], Awaitable[JoinOutcome]], tail: int | None = None,
    ) -> JoinOutcome:  # fmt: skip
        """A join through ``_write`` whose answer from memory settles later.

        ``send`` keeps the record the backend answered with in the copy; when it lands late,
        what this process added to the copy meanwhile is appended after it again.
        """
        settled: asyncio.Future[JoinOutcome] | None = None

        async def send_and_settle() -> JoinOutcome:
            meanwhile = await self._cache.load(room, identity) if settled is not None else None
            try:
                outcome = await send()
            except self._unavailable:
                raise
            except Exception as exc:
                if settled is not None and not settled.done():
                    settled.set_exception(exc)
                raise
            if settled is not None:
                if meanwhile is not None:
                    await self._cache.append(room, identity, meanwhile.items, meanwhile.transcript)
                if not settled.done():
                    settled.set_result(outcome)
            return outcome

        async def local() -> JoinOutcome:
            nonlocal settled
            settled = asyncio.get_running_loop().create_future()
            outcome = await self._cache.join(room, identity, session_id, transcript_tail=tail)
            return dataclasses.replace(outcome, settled=settled)

        return await self._write("join", room, identity, send_and_settle, local)

    def _note_merged(self, room: str, identity: str, result: AppendResult) -> AppendResult:
        """Say so when the backend merged the append of a writer whose lease was taken over
        (turns are facts: they are kept, not refused)."""
        if result.merged:
            logging.getLogger(type(self).__module__).warning(
                "merged a write from a worker that lost this participant",
                extra={"room": room, "participant": identity_hash(identity),
                       "items": result.items_added},
            )  # fmt: skip
        return result

    async def _mirror(self, room: str, identity: str, local: Callable[[], Awaitable[Any]]) -> None:
        """Apply a write the backend took to the copy too, if the copy holds the record."""
        if self._cache.has_record(room, identity):
            await local()
