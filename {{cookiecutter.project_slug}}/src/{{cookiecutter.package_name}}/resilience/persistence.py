"""Carry a participant's conversation through the session store.

`chat_ctx_from_record` rebuilds what the model should see from a stored record;
`ConversationRecorder` appends a live session's turns (messages, tool calls and their
outputs) and transcript segments to the store in order, off the call's hot path.
A store error never reaches the call: it is logged, and the Redis store queues writes
while Redis is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from livekit.agents import AgentSession, llm
from livekit.agents.voice.events import ConversationItemAddedEvent, FunctionToolsExecutedEvent

from ..log import get_logger, identity_ref
from .room_output import TranscriptSegment
from .store import SessionRecord, SessionStore, StoreError

logger = get_logger(__name__)

# Item types the model needs to continue a conversation; others (config updates, handoffs)
# describe the session, not the conversation.
CONVERSATION_TYPES = ("message", "function_call", "function_call_output")
TRIMMED_HISTORY_NOTE = (
    "The {count} oldest items of this conversation were trimmed from storage; "
    "what follows is the rest."
)


def item_to_dict(item: llm.ChatItem) -> dict[str, Any]:
    """A chat item as stored: livekit's own JSON form, with its id and timestamp."""
    return llm.ChatContext(items=[item]).to_dict(exclude_timestamp=False)["items"][0]


def chat_ctx_from_record(record: SessionRecord) -> llm.ChatContext:
    """The conversation a record holds, as a chat context for a new Agent.

    An item livekit cannot read (a record written by another version, a hand-edited one)
    is skipped with a warning naming its id; the rest of the conversation is kept.
    """
    items: list[llm.ChatItem] = []
    if record.items_trimmed:
        # the store keeps a bounded history (StorageLimits): say where the rest was
        items.append(
            llm.ChatMessage(
                role="system",
                content=[TRIMMED_HISTORY_NOTE.format(count=record.items_trimmed)],
                created_at=record.joined_at,
            )
        )
    for stored in record.items:
        if stored.get("type", "message") not in CONVERSATION_TYPES:
            continue
        try:
            items.extend(llm.ChatContext.from_dict({"items": [dict(stored)]}).items)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning(
                "skipped unreadable stored chat item",
                item_id=stored.get("id"),
                participant=identity_ref(record.identity),
                error=str(exc),
            )
    return llm.ChatContext(items=items)


def transcript_from_record(record: SessionRecord) -> list[TranscriptSegment]:
    """The transcript a record holds, for ``transcript.history``; unreadable entries skipped."""
    segments = []
    for stored in record.transcript:
        try:
            segments.append(TranscriptSegment.from_dict(stored))
        except ValueError as exc:
            logger.warning(
                "skipped unreadable stored transcript segment",
                segment_id=stored.get("id"),
                participant=identity_ref(record.identity),
                error=str(exc),
            )
    return segments


class ConversationRecorder:
    """Appends one participant's conversation to the store, in order, in the background."""

    def __init__(self, store: SessionStore, room: str, identity: str) -> None:
        self._store = store
        self._room = room
        self._identity = identity
        self._queue: asyncio.Queue[tuple[list[dict], list[dict]] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._write_loop(), name="conversation_recorder")

    def attach(self, session: AgentSession) -> None:
        """Record every turn of ``session`` (call again for each new session)."""

        @session.on("conversation_item_added")
        def _on_item(event: ConversationItemAddedEvent) -> None:
            if event.item.type in CONVERSATION_TYPES:
                self.add(items=[item_to_dict(event.item)])

        @session.on("function_tools_executed")
        def _on_tools(event: FunctionToolsExecutedEvent) -> None:
            calls: list[llm.ChatItem] = []
            for call, output in event.zipped():
                calls.append(call)
                if output is not None:
                    calls.append(output)
            self.add(items=[item_to_dict(i) for i in calls])

    def add(
        self,
        *,
        items: Sequence[Mapping[str, Any]] = (),
        transcript: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Queue items and transcript segments (dicts with an ``id``) for the store."""
        if items or transcript:
            self._queue.put_nowait(([dict(i) for i in items], [dict(t) for t in transcript]))

    async def flush(self) -> None:
        """Wait until everything queued so far has been handed to the store."""
        await self._queue.join()

    async def aclose(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put_nowait(None)
        await self._task

    async def _write_loop(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                if batch is None:
                    return
                items, transcript = batch
                await self._store.append(
                    self._room, self._identity, items=items, transcript=transcript
                )
            except StoreError as exc:
                logger.error(
                    "conversation not saved",
                    participant=identity_ref(self._identity),
                    items=len(batch[0]) if batch else 0,
                    error=str(exc),
                )
            except Exception:
                logger.exception("conversation recorder failed on a write")
            finally:
                self._queue.task_done()
