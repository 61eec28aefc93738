"""The older transcript lines of a record a join read only the newest of.

A returning participant's join reads only the newest transcript lines (what the job keeps
in memory), so a restore costs the same whatever the record's length. The Redis store's
in-memory copy must still hold every line, because it gives a Redis that lost its data the
whole conversation back: :class:`OlderLines` reads the record again in the background, off
the restore's path, and puts the older lines before the newest in the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Container
from typing import Any

from ._codec import unframe
from .memory import MemoryStore

__all__ = ["OlderLines"]


class OlderLines:
    """Background reads of whole records into a store's in-memory copy (stopped on close).

    load: the raw LOAD reply for a record's keys; cache: the copy; live: who is still in a
    call (a record read for someone who left since is not kept); unavailable: the errors a
    store outage raises (the read is then skipped: the outage rewrites what memory holds).
    """

    def __init__(
        self,
        load: Callable[[Any], Awaitable[Any]],
        cache: MemoryStore,
        *,
        live: Container[tuple[str, str]],
        unavailable: tuple[type[BaseException], ...],
    ) -> None:
        self._load, self._cache, self._live = load, cache, live
        self._unavailable = unavailable
        self._tasks: set[asyncio.Task[None]] = set()

    def read(self, room: str, identity: str, keys: Any) -> None:
        """Read the record at ``keys`` again and complete the copy's transcript."""

        async def read() -> None:
            with contextlib.suppress(*self._unavailable):
                found = await self._load(keys)
                if found and (room, identity) in self._live:
                    self._cache.add_older_lines(room, identity, unframe(found)[2])

        task = asyncio.create_task(read(), name="store-older-lines")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the reads still running and wait for them to end (the store is closing)."""
        tasks = list(self._tasks)  # the store modules do not import livekit (the CLI's reads)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
