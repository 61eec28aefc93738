"""What a reconnect sends besides the handle: the chat items the server lacks, and the
re-ask of a reply the lost connection cut.

A reply cut mid-way is *held*: the AgentSession's speech keeps reading its message channel
while the session reconnects, the cut part goes to the server with the chat context, then
:func:`reask` asks once for the rest, which arrives as the speech's next message. Tool
results whose reply already exists (or whose call the resumed server never held) go as
content, in chat order, never as a toolResponse that would ask for the reply again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from google.genai import types
from livekit.agents import llm, utils

from .resume import CONTINUE_PROMPT

__all__ = ["REASK_TIMEOUT_S", "HeldReply", "answered_or_unknown_calls", "paired", "reask"]

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
