"""Crash recovery: a room whose worker died gets a new job, with nothing asked of anyone.

The LiveKit server never dispatches a room again when the worker (or job process) holding it
dies: the participant would have no agent for as long as they stay. So each room's primary
job keeps the room on the store's watch list (its room lease does, on every renewal; see
``room_registry``), and every worker process runs a :class:`RoomWatcher` beside its
``AgentServer``. When a room's lease lapses without being released, the first watcher to
claim the lapse (atomically, in the store: exactly one re-dispatch per lapse across all
workers) asks the LiveKit server whether the room still has a participant other than agents,
and if so puts a new job into it (``AgentDispatchService.CreateDispatch``). That job
continues the conversation from the store and welcomes the participant back once.

A worker started after its predecessor on the host died finds the lapse the same way. A
dispatch that fails (the LiveKit server unreachable) puts the room back on the list for the
next check; a room that closed or emptied is dropped. The new job's metadata marks it as a
re-dispatch: if another worker holds the room by the time it starts (a standby took over),
it leaves instead of standing by.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from livekit import api

from ... import metrics
from ...log import get_logger
from ..store import StoreUnavailableError
from .room_registry import LapsedRoom, RoomRegistry

logger = get_logger(__name__)

# what a re-dispatched job's metadata carries
REDISPATCH_KEY = "lk_agent_redispatch"


def redispatch_metadata(room: LapsedRoom) -> str:
    """The job metadata of a re-dispatch (the lapse it answers)."""
    return json.dumps({REDISPATCH_KEY: {"lapsed_s": round(room.lapsed_s, 3)}})


def is_redispatch(metadata: str) -> bool:
    """Whether a job was dispatched by a watcher after its room's worker died."""
    try:
        return isinstance(json.loads(metadata or "{}").get(REDISPATCH_KEY), dict)
    except (ValueError, AttributeError):
        return False


class RoomWatcher:
    """Re-dispatches rooms whose lease lapsed while a participant is still in them.

    ``open_registry`` / ``open_livekit`` make the watch list and the LiveKit server API client
    (``api.LiveKitAPI``) when the watcher starts, inside the worker's event loop; ``poll_s``:
    how often the watch list is read (a fraction of the room lease time).
    """

    def __init__(
        self,
        open_registry: Callable[[], RoomRegistry],
        open_livekit: Callable[[], api.LiveKitAPI],
        *,
        poll_s: float,
    ) -> None:
        self._open_registry, self._open_livekit = open_registry, open_livekit
        self._poll_s = poll_s
        self._registry: RoomRegistry | None = None
        self._livekit: api.LiveKitAPI | None = None
        self._store_down = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Check every ``poll_s`` in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="room_watcher")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._livekit is not None:
            await self._livekit.aclose()
        if self._registry is not None:
            await self._registry.aclose()
        self._livekit = self._registry = None

    async def check(self) -> list[str]:
        """One pass over the watch list; the rooms given a new job."""
        if self._registry is None:
            self._registry, self._livekit = self._open_registry(), self._open_livekit()
        try:
            lapsed = await self._registry.lapsed()
        except StoreUnavailableError as exc:
            if not self._store_down:
                logger.warning("room watch list unavailable; rooms are checked again later",
                               error=str(exc))  # fmt: skip
            self._store_down = True
            return []
        self._store_down = False
        dispatched = []
        for room in lapsed:
            if await self._registry.claim(room) and await self._recover(room):
                dispatched.append(room.room)
        return dispatched

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                logger.exception("room watcher check failed")
            await asyncio.sleep(self._poll_s)

    async def _recover(self, room: LapsedRoom) -> bool:
        assert self._livekit is not None
        try:
            listed = await self._livekit.room.list_participants(
                api.ListParticipantsRequest(room=room.room)
            )
            people = [p for p in listed.participants if p.kind != api.ParticipantInfo.AGENT]
            if not people:
                logger.info("a room's worker stopped; nobody is left in it", lapsed_s=_s(room))
                return False
            dispatch = await self._livekit.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    room=room.room, agent_name=room.agent_name, metadata=redispatch_metadata(room)
                )
            )
        except api.TwirpError as exc:
            if exc.code == api.TwirpErrorCode.NOT_FOUND:
                logger.info("a room's worker stopped; the room has closed", lapsed_s=_s(room))
                return False
            return await self._retry_later(room, exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return await self._retry_later(room, exc)
        metrics.REDISPATCHES.inc()
        logger.warning(
            "room re-dispatched: its worker stopped renewing the room lease",
            lapsed_s=_s(room),
            dispatch_id=dispatch.id,
        )
        return True

    async def _retry_later(self, room: LapsedRoom, exc: Any) -> bool:
        logger.error("could not re-dispatch a room; retrying", error=str(exc)[:200])
        assert self._registry is not None
        try:
            await self._registry.restore(room)
        except StoreUnavailableError:
            logger.error("room watch list unavailable; the room will not be re-dispatched")
        return False


def _s(room: LapsedRoom) -> float:
    return round(room.lapsed_s, 2)
