"""Server-side state of the local Gemini Live server: conversations, handles, armed faults.

A conversation is the ordered list of what the server took in and produced. A resumption
handle names a conversation *as it was when the handle was issued* (its length then), the
way Gemini documents it. Resuming by a handle starts a new conversation that copies that
prefix, so anything the server took in after the handle was issued is gone unless the client
sends it again; a test reading ``history()`` sees exactly what the server holds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .faults import Fault, FaultRecord, FaultSite
from .protocol import HistoryItem

__all__ = ["Conversation", "ConversationStore", "FaultPlan", "UnknownHandleError"]


class UnknownHandleError(KeyError):
    """The handle was never issued, or was forgotten (expired)."""


@dataclass
class Conversation:
    """One server-side conversation; ``parent``/``forked_at`` say which handle it resumed."""

    id: int
    items: list[HistoryItem] = field(default_factory=list)
    parent: int | None = None
    forked_at: int | None = None


class ConversationStore:
    """Conversations by id and resumption handles by name."""

    def __init__(self) -> None:
        self._conversations: dict[int, Conversation] = {}
        self._handles: dict[str, tuple[int, int]] = {}
        self._ids = itertools.count(1)
        self._handle_serial = itertools.count(1)

    def new(self) -> Conversation:
        """Start an empty conversation (a setup without a handle)."""
        conv = Conversation(id=next(self._ids))
        self._conversations[conv.id] = conv
        return conv

    def resume(self, handle: str) -> Conversation:
        """Start a conversation from the state a handle names; UnknownHandleError if none."""
        try:
            conv_id, length = self._handles[handle]
        except KeyError:
            raise UnknownHandleError(handle) from None
        source = self._conversations[conv_id]
        conv = Conversation(
            id=next(self._ids), items=source.items[:length], parent=conv_id, forked_at=length
        )
        self._conversations[conv.id] = conv
        return conv

    def issue_handle(self, conv: Conversation) -> str:
        """A new handle naming the conversation as it is now."""
        handle = f"handle-{conv.id}-{len(conv.items)}-{next(self._handle_serial)}"
        self._handles[handle] = (conv.id, len(conv.items))
        return handle

    def get(self, conversation: int) -> Conversation:
        """The conversation with this id."""
        return self._conversations[conversation]

    def snapshot(self, handle: str) -> list[HistoryItem]:
        """The items a handle stands for."""
        try:
            conv_id, length = self._handles[handle]
        except KeyError:
            raise UnknownHandleError(handle) from None
        return list(self._conversations[conv_id].items[:length])

    def forget(self, handle: str | None = None) -> None:
        """Make one handle (or all, when None) unknown, as if it expired."""
        if handle is None:
            self._handles.clear()
        else:
            self._handles.pop(handle, None)


class FaultPlan:
    """Armed faults waiting for their point, and the log of faults applied."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._armed: list[Fault] = []
        self.log: list[FaultRecord] = []
        self._on_change = on_change

    def arm(self, fault: Fault, *, first: bool = False) -> None:
        """Queue a fault (at the front when ``first``); it is used once, where it applies."""
        if first:
            self._armed.insert(0, fault)
        else:
            self._armed.append(fault)

    @property
    def armed(self) -> tuple[Fault, ...]:
        """Faults not yet applied, in the order they were armed."""
        return tuple(self._armed)

    def take(self, match: Callable[[Fault], bool]) -> Fault | None:
        """Remove and return the first armed fault that ``match`` accepts."""
        for i, fault in enumerate(self._armed):
            if match(fault):
                return self._armed.pop(i)
        return None

    def peek(self, match: Callable[[Fault], bool]) -> Fault | None:
        """The first armed fault that ``match`` accepts, left armed."""
        return next((f for f in self._armed if match(f)), None)

    def record(self, connection: int, fault: Fault, where: FaultSite) -> None:
        """Log that a fault was applied."""
        self.log.append(FaultRecord(connection, fault, where, time.monotonic()))
        self._on_change()
