"""The agent users talk to: its instructions and tools. This is the file to edit.

Everything that keeps the conversation alive (restarts, reconnects, returning
participants) lives elsewhere; this class only says who the agent is.
"""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from livekit.agents import Agent, RunContext, function_tool, llm

INSTRUCTIONS = """\
You are a friendly, concise voice assistant. Your replies are spoken aloud, so use short
sentences without lists, markdown or emojis. Ask one question at a time. If you are not sure
what the user means, ask instead of guessing. Use your tools when they can give a precise
answer, and say plainly when you cannot help."""

GREETING = "Greet the user warmly in one short sentence and ask how you can help."

WELCOME_BACK = (
    "The user has just reconnected to this conversation. Welcome them back in one short "
    "sentence and offer to continue where you left off. Do not repeat earlier answers."
)


class Assistant(Agent):
    """The default assistant. ``chat_ctx`` carries an earlier conversation, if any."""

    def __init__(self, *, chat_ctx: llm.ChatContext | None = None) -> None:
        super().__init__(instructions=INSTRUCTIONS, chat_ctx=chat_ctx)

    @function_tool
    async def current_time(self, context: RunContext, timezone: str = "UTC") -> str:
        """Tell the current date and time in a timezone.

        Args:
            timezone: An IANA timezone name such as "Europe/Paris" or "America/New_York".
        """
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            return f"Unknown timezone {timezone!r}; ask the user for a city or region."
        now = datetime.datetime.now(zone)
        return now.strftime(f"%A %d %B %Y, %H:%M ({timezone})")
