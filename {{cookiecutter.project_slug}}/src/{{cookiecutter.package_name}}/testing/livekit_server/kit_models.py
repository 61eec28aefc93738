"""The models a kit worker (:mod:`.kit_worker`) answers with, importable without starting one.

The scripted model answers from the conversation it is given (:func:`kit_reply`), so a test
reads from the room's transcript what the model knew.
"""

from __future__ import annotations

from ...assistant import WELCOME_BACK
from ...models import ModelStack
from ..models import LLMRequest, ScriptedLLM, ScriptedTTS

__all__ = ["GREETING_REPLY", "kit_reply", "scripted_models"]

GREETING_REPLY = "Hello! How can I help?"


def kit_reply(request: LLMRequest) -> str:
    """What the scripted model says: it counts the participant's lines it was given."""
    heard = [text for role, text in request.messages if role == "user"]
    asked = " ".join(text for role, text in request.messages if role in ("system", "developer"))
    if WELCOME_BACK in asked:
        return f"Welcome back! I remember {len(heard)} things you said."
    if not heard:
        return GREETING_REPLY
    return f"You said: {heard[-1]} ({len(heard)} lines of yours so far)"


def scripted_models() -> ModelStack:
    """The kit's model stack: scripted LLM and TTS; typed input, so manual turn detection."""
    return ModelStack(
        name="scripted",
        llm=ScriptedLLM(responder=kit_reply),
        tts=ScriptedTTS(),
        turn_detection="manual",
    )
