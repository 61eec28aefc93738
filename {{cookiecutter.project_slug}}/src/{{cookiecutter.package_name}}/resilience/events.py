"""What the session supervisor hands out: the spec of the next session, its event
payloads, and the filter that decides which chat items a new session carries over."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from livekit.agents import AgentSession, llm

from ..models import ModelStack
from .transcript import TranscriptSegment

__all__ = [
    "BeforeStart",
    "ClosedEvent",
    "RestartedEvent",
    "SessionSpec",
    "SessionStartedEvent",
    "TranscriptSegmentEvent",
    "conversation_items",
]


@dataclass
class SessionSpec:
    """What the next session is built from; a ``before_start`` hook may change it in place
    (another model stack carrying a resumption handle, more context from the store)."""

    models: ModelStack
    chat_ctx: llm.ChatContext
    """The whole conversation so far, which the new Agent starts with."""
    restart: bool
    reason: str
    previous: AgentSession | None


BeforeStart = Callable[[SessionSpec], Awaitable[None] | None]


@dataclass(frozen=True)
class SessionStartedEvent:
    """A session is running: the first one (``restart=False``) or a replacement."""

    session: AgentSession
    restart: bool
    reason: str
    models: str


@dataclass(frozen=True)
class TranscriptSegmentEvent:
    """A final line of the conversation (for the store)."""

    segment: TranscriptSegment


@dataclass(frozen=True)
class RestartedEvent:
    """A restart completed; ``blackout`` is seconds from closing the old session to listening."""

    reason: str
    restarts: int
    blackout: float
    models: str


@dataclass(frozen=True)
class ClosedEvent:
    """The conversation ended; no session will start again."""

    reason: str
    error: BaseException | None = None


def conversation_items(items: Iterable[llm.ChatItem]) -> list[llm.ChatItem]:
    """What a new session needs to continue: user and assistant messages (a reply cut short
    stays, marked interrupted) and the tool calls that have their outputs, in order.
    Instructions, handoffs, config updates and empty messages are left out."""
    items = list(items)
    calls = {i.call_id for i in items if i.type == "function_call"}
    outputs = {i.call_id for i in items if i.type == "function_call_output"}
    kept: list[llm.ChatItem] = []
    for item in items:
        if item.type == "message":
            if item.role in ("user", "assistant") and any(c != "" for c in item.content):
                kept.append(item)
        elif (item.type == "function_call" and item.call_id in outputs) or (
            item.type == "function_call_output" and item.call_id in calls
        ):
            kept.append(item)
    return kept
