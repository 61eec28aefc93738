"""Offline kit: run the real livekit-agents code without a LiveKit server.

- :class:`SimulatedRoom`: an ``rtc.Room`` with scripted participants that records everything
  the agent publishes (tracks, transcription streams, attributes, RPC).
- :class:`ScriptedLLM` / :class:`ScriptedTTS`: deterministic models.
"""

from .models import (
    ChatItemRecord,
    LLMRequest,
    ScriptedLLM,
    ScriptedTTS,
    ScriptExhaustedError,
    ToolCall,
)
from .records import (
    AttributeChange,
    ByteStreamRecord,
    DataPacketRecord,
    ParticipantRecord,
    RpcCallRecord,
    RpcMethodRecord,
    TextStreamRecord,
    TimelineEvent,
    TrackRecord,
)
from .room import SimulatedRoom
from .transcript import TranscriptSegment

__all__ = [
    "AttributeChange",
    "ByteStreamRecord",
    "ChatItemRecord",
    "DataPacketRecord",
    "LLMRequest",
    "ParticipantRecord",
    "RpcCallRecord",
    "RpcMethodRecord",
    "ScriptExhaustedError",
    "ScriptedLLM",
    "ScriptedTTS",
    "SimulatedRoom",
    "TextStreamRecord",
    "TimelineEvent",
    "ToolCall",
    "TrackRecord",
    "TranscriptSegment",
]
