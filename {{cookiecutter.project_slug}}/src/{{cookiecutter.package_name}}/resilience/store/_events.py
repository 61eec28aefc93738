"""The events channel: what operators hear about sessions, without a name in it.

An event is a JSON object with ``type`` (``participant_returned``, ``session_ended``, or what a
caller publishes), ``room``, ``participant`` (the keyed identity hash, never the identity),
``at`` (epoch seconds, the store's clock) and its own fields. The Redis store publishes on
``<prefix>:events`` (its join and leave scripts publish in the same round trip); the memory
and SQLite stores deliver to subscribers in their own process (``LocalEvents``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ._keys import identity_hash

__all__ = ["LocalEvents", "RedisEvents", "event_head", "make_event"]

logger = logging.getLogger(__name__)

_QUEUE_SIZE = 1000


def make_event(
    event_type: str, room: str, identity: str, at: float, **fields: Any
) -> dict[str, Any]:
    """An operator event; carries the identity's hash, never the identity."""
    event = {"type": event_type, "room": room, "participant": identity_hash(identity), "at": at}
    event.update(fields)
    json.dumps(event)  # refuse non-JSON fields here rather than in a subscriber
    return event


def event_head(event_type: str, room: str, identity: str) -> str:
    """An event's JSON without its closing brace, for a Redis script to add its own fields
    (not cached: the identity hash it holds follows the process's key, itself cached)."""
    head = {"type": event_type, "room": room, "participant": identity_hash(identity)}
    return json.dumps(head)[:-1]


class LocalEvents:
    """Events delivered to subscribers in this process (a full subscriber misses events)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    async def publish(self, event_type: str, room: str, identity: str, **fields: Any) -> None:
        """Send an event to every subscriber."""
        self.emit(event_type, room, identity, **fields)

    def emit(self, event_type: str, room: str, identity: str, **fields: Any) -> None:
        """``publish`` from code that cannot await."""
        event = make_event(event_type, room, identity, self._clock(), **fields)
        for queue in list(self._subscribers):
            if not queue.full():
                queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Yield every event published from now on."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=_QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)


class RedisEvents:
    """Events on the Redis channel ``channel`` (standalone and Sentinel clients subscribe)."""

    def __init__(
        self, client: Any, channel: str, unavailable: tuple[type[BaseException], ...]
    ) -> None:
        self.channel = channel
        self._client = client
        self._unavailable = unavailable

    async def publish(self, event_type: str, room: str, identity: str, **fields: Any) -> None:
        """Publish an event (best effort: an unreachable Redis loses it, logged)."""
        event = make_event(event_type, room, identity, time.time(), **fields)
        try:
            await self._client.publish(self.channel, json.dumps(event))
        except self._unavailable as exc:
            logger.warning("event not published", extra={"type": event_type, "error": repr(exc)})

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Yield events from the channel."""
        pubsub = self._client.pubsub()
        await pubsub.subscribe(self.channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield json.loads(message["data"])
        finally:
            await pubsub.aclose()
