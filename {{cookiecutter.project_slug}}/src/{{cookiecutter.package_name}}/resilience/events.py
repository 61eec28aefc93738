"""What the session supervisor carries and hands out: the conversation it carries from one
session to the next (and the one filter that decides which chat items are the
conversation), the spec of the next session, and its event payloads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from livekit.agents import AgentSession, llm

from ..models import ModelStack
from .transcript import TranscriptSegment

__all__ = [
    "CONVERSATION_TYPES",
    "BeforeStart",
    "CarriedContext",
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


# Item types the model needs to continue a conversation; others (config updates, handoffs)
# describe the session, not the conversation.
CONVERSATION_TYPES = ("message", "function_call", "function_call_output")


def conversation_items(items: Iterable[llm.ChatItem]) -> list[llm.ChatItem]:
    """What a new session needs to continue: user and assistant messages (a reply cut short
    stays, marked interrupted) and the tool calls that have their outputs, in order.
    Instructions, handoffs, config updates and empty messages are left out."""
    items = [i for i in items if i.type in CONVERSATION_TYPES]
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


class CarriedContext:
    """The conversation carried across sessions: each item once, in the order said."""

    def __init__(self) -> None:
        self._items: list[llm.ChatItem] = []
        self._ids: set[str] = set()

    def absorb(self, items: Iterable[llm.ChatItem]) -> None:
        """Keep what a closing session said (its conversation items not carried yet)."""
        for item in conversation_items(items):
            if item.id not in self._ids:
                self._ids.add(item.id)
                self._items.append(item)

    def prepend(self, items: Iterable[llm.ChatItem]) -> list[llm.ChatItem]:
        """Put an earlier conversation first; returns the items that were new."""
        earlier = [i for i in conversation_items(items) if i.id not in self._ids]
        self._items[:0] = earlier
        self._ids.update(i.id for i in earlier)
        return earlier

    def items(self, current: Iterable[llm.ChatItem] = ()) -> list[llm.ChatItem]:
        """Everything carried, then what the ``current`` session added since (a copy)."""
        return self._items + [i for i in conversation_items(current) if i.id not in self._ids]

    def agent_spoke(self) -> bool:
        """Whether anything the agent said is carried (its greeting, at least)."""
        return any(i.type == "message" and i.role == "assistant" for i in self._items)

    def ends_with_user_turn(self) -> bool:
        """Whether the last thing carried is the user's turn (which nobody answered)."""
        last = self._items[-1] if self._items else None
        return last is not None and last.type == "message" and last.role == "user"
