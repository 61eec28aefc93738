"""The ``gemini-faults`` scenario: a Gemini Live conversation through drops, goAway and
refused handles, checked against what the server holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from livekit.agents import llm

from ..testing.gemini_protocol import HistoryItem

REPLY_PLACEHOLDER = "."


def server_conversation(history: Sequence[HistoryItem]) -> list[tuple[str, str]]:
    """What a Gemini server holds as (role, text): user and model turns, livekit's ``.``
    reply placeholder left out."""
    return [
        ("assistant" if item.role == "model" else "user", item.text)
        for item in history
        if item.role in ("user", "model") and item.text not in ("", REPLY_PLACEHOLDER)
    ]


def worker_conversation(
    chat_ctx: llm.ChatContext | Iterable[llm.ChatItem],
) -> list[tuple[str, str]]:
    """The worker's chat context as (role, text): user and assistant messages."""
    items = chat_ctx.items if isinstance(chat_ctx, llm.ChatContext) else chat_ctx
    return [
        (item.role, item.text_content or "")
        for item in items
        if item.type == "message" and item.role in ("user", "assistant") and item.text_content
    ]
