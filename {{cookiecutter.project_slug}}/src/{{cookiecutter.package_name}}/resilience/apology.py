"""What the caller hears when a conversation gives up: a short apology, then the call ends.

The supervisor gives up when its restart budget is spent (a model that fails on every
start, a restart loop). The apology is spoken by the session still running, or by one
started only for it: said as written with a TTS, generated word for word by a realtime
model. It never blocks the end of the call for longer than ``APOLOGY_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio

from livekit.agents import AgentSession

from ..log import get_logger

__all__ = ["APOLOGY", "APOLOGY_TIMEOUT_S", "GAVE_UP", "say_apology"]

logger = get_logger(__name__)

# the ``closed`` reason when the restart budget is spent (the agent apologised)
GAVE_UP = "restart_budget_exhausted"
APOLOGY = (
    "I'm sorry, I'm having technical trouble and need to end our call now. "
    "Please try again in a moment."
)
APOLOGY_TIMEOUT_S = 15.0


async def say_apology(session: AgentSession, text: str = APOLOGY) -> None:
    """Interrupt whatever ``session`` is saying and say ``text``; log when it cannot."""
    try:
        await asyncio.wait_for(session.interrupt(force=True), APOLOGY_TIMEOUT_S)
        if session.tts is not None:
            handle = session.say(text, allow_interruptions=False)
        else:  # a realtime model speaks for itself
            handle = session.generate_reply(
                instructions=f"Say exactly this and nothing else: {text}",
                allow_interruptions=False,
            )
        await asyncio.wait_for(handle.wait_for_playout(), APOLOGY_TIMEOUT_S)
    except Exception as exc:
        logger.warning("apology not spoken", error=repr(exc))
