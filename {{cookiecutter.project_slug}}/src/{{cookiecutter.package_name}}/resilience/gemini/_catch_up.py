"""What a reconnect sends besides the handle: the chat items the server lacks, and the
re-ask of a reply the lost connection cut.

A reply cut mid-way is *held*: the AgentSession's speech keeps reading its message channel
while the session reconnects, the cut part goes to the server with the chat context, then
:func:`reask` asks once for the rest, which arrives as the speech's next message (a rest
cut in turn is asked for again, up to ``MAX_REASKS`` times a reply). Tool
results whose reply already exists (or whose call the resumed server never held) go as
content, in chat order, never as a toolResponse that would ask for the reply again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from google.genai import types
from livekit.agents import llm, utils

from .resume import CONTINUE_PROMPT

__all__ = [
    "MAX_REASKS",
    "REASK_TIMEOUT_S",
    "HeldReply",
    "UnansweredSpeech",
    "answered_or_unknown_calls",
    "paired",
    "reask",
]

MAX_REASKS = 3
"""Re-asks for one reply: a rest cut in turn is asked for again, up to this many times in
all, so a server that cuts every reply cannot keep the handler asking."""

REASK_TIMEOUT_S = 8.0
"""Seconds a cut reply's speech waits, after the re-ask went out, for the rest to begin;
then it ends with the part said."""


@dataclass
class HeldReply:
    """A reply a lost connection cut. Its speech (the AgentSession reads ``message_ch``)
    stays open: the rest, asked for once after the reconnect, arrives as its next message."""

    message_ch: utils.aio.Chan[llm.MessageGeneration]
    function_ch: utils.aio.Chan[llm.FunctionCall]
    response_id: str
    expires: asyncio.TimerHandle | None = None

    def expire_in(self, seconds: float, expire: Callable[[HeldReply], None]) -> None:
        """Call ``expire(self)`` in ``seconds`` (instead of any earlier such call)."""
        if self.expires is not None:
            self.expires.cancel()
        self.expires = asyncio.get_running_loop().call_later(seconds, expire, self)

    def close(self) -> None:
        if self.expires is not None:
            self.expires.cancel()
        self.message_ch.close()
        self.function_ch.close()


def answered_or_unknown_calls(missing: list[llm.ChatItem], target: llm.ChatContext) -> bool:
    """Whether the catch-up holds a function call (unknown to the resumed server), or a tool
    result an assistant message already follows (its reply exists, maybe cut and held)."""
    if any(i.type == "function_call" for i in missing):
        return True
    outputs = {i.id for i in missing if i.type == "function_call_output"}
    last = max((n for n, i in enumerate(target.items) if i.id in outputs), default=None)
    return last is not None and any(
        i.type == "message" and i.role == "assistant" for i in target.items[last + 1 :]
    )


def paired(items: list[llm.ChatItem]) -> list[llm.ChatItem]:
    """``items`` with each function call kept only with its result and each result only
    with its call (Gemini content pairs them; a lone one would be dropped with a warning)."""
    calls = {i.call_id for i in items if isinstance(i, llm.FunctionCall)}
    results = {i.call_id for i in items if isinstance(i, llm.FunctionCallOutput)}
    both = calls & results
    return [
        i
        for i in items
        if not isinstance(i, llm.FunctionCall | llm.FunctionCallOutput) or i.call_id in both
    ]


def reask() -> types.LiveClientContent:
    turn = types.Content(role="user", parts=[types.Part(text=CONTINUE_PROMPT)])
    return types.LiveClientContent(turns=[turn], turn_complete=True)


class UnansweredSpeech:
    """The input audio of a user turn the server has not answered yet, from its first loud
    chunk: a lost connection loses what was in flight, and a spoken turn, unlike a typed
    one, is in no chat context to send again, so the new connection gets it again.

    It is forgotten when the model starts answering or completes a turn, or a handle is
    adopted (the server holds the turn); at most ``MAX_CHUNKS`` chunks (the oldest go first).
    """

    MAX_CHUNKS = 1200  # a minute of livekit's 50 ms chunks

    def __init__(self) -> None:
        self._chunks: deque[types.LiveClientRealtimeInput] = deque(maxlen=self.MAX_CHUNKS)
        self._speaking = False

    def sent(self, msg: types.LiveClientRealtimeInput, *, speech: bool) -> None:
        """An audio chunk went out; keep it once the user has started speaking."""
        self._speaking = self._speaking or speech
        if self._speaking:
            self._chunks.append(msg)

    def answered(self) -> None:
        """The server holds the turn (or answered it): nothing to send again."""
        self._chunks.clear()
        self._speaking = False

    def take(self) -> list[types.LiveClientRealtimeInput]:
        """The chunks to send again on a new connection (kept again as they go out)."""
        chunks = list(self._chunks)
        self._chunks.clear()
        return chunks
