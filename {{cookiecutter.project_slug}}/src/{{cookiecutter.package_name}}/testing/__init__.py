"""Offline kit: run the real livekit-agents code without a LiveKit server.

- :class:`SimulatedRoom`: an ``rtc.Room`` with scripted participants that records everything
  the agent publishes (tracks, transcription streams, attributes, RPC).
- :class:`ScriptedLLM` / :class:`ScriptedTTS`: deterministic models.
- :class:`LocalGeminiLiveServer`: a TLS server speaking the Gemini Live protocol, with faults
  on demand (:mod:`.gemini_faults`), for the real google plugin.
- :class:`RedisServer`: a real redis-server on a free port that can be killed and restarted.
- :class:`SimulatedJob`: a job context whose ``shutdown(reason)`` calls are recorded.
- :class:`FaultyLink`: a TCP link to a server that can be cut and healed (a partition).
- :class:`LocalLiveKitServer`: the LiveKit server's dispatch and room lifecycle for real worker
  processes (:class:`KitWorkerProcess`: the production worker with the kit's room and models).
"""

from .gemini_server import LocalGeminiLiveServer
from .job import SimulatedJob
from .livekit_server import LocalLiveKitServer
from .models import (
    ChatItemRecord,
    LLMRequest,
    ScriptedLLM,
    ScriptedTTS,
    ScriptExhaustedError,
    ToolCall,
)
from .netfault import FaultyLink
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
from .redis_server import RedisServer
from .room import SimulatedRoom
from .transcript import TranscriptSegment
from .worker_process import KitWorkerProcess

__all__ = [
    "AttributeChange",
    "ByteStreamRecord",
    "ChatItemRecord",
    "DataPacketRecord",
    "FaultyLink",
    "KitWorkerProcess",
    "LLMRequest",
    "LocalGeminiLiveServer",
    "LocalLiveKitServer",
    "ParticipantRecord",
    "RedisServer",
    "RpcCallRecord",
    "RpcMethodRecord",
    "ScriptExhaustedError",
    "ScriptedLLM",
    "ScriptedTTS",
    "SimulatedJob",
    "SimulatedRoom",
    "TextStreamRecord",
    "TimelineEvent",
    "ToolCall",
    "TrackRecord",
    "TranscriptSegment",
]
