"""Offline kit: run the real livekit-agents code without a LiveKit server.

- :class:`SimulatedRoom`: an ``rtc.Room`` with scripted participants that records everything
  the agent publishes (tracks, transcription streams, attributes, RPC); its ``transcript()``
  is the list of :class:`FrontendLine` a frontend shows. In :mod:`.room`, with the one module
  that touches livekit internals (``room/_sdk.py``, version-pinned).
- :class:`ScriptedLLM` / :class:`ScriptedTTS`: deterministic models (:mod:`.models`).
- :class:`LocalGeminiLiveServer`: a TLS server speaking the Gemini Live protocol, with faults
  on demand (:mod:`.gemini.faults`), for the real google plugin.
- :class:`RedisServer`: a real redis-server on a free port that can be killed and restarted.
- :class:`SimulatedJob`: a job context whose ``shutdown(reason)`` calls are recorded.
- :class:`FaultyLink`: a TCP link to a server that can be cut and healed (a partition).
- :class:`LocalLiveKitServer`: the LiveKit server's dispatch and room lifecycle for real worker
  processes (:class:`KitWorkerProcess`: the production worker with the kit's room and models);
  in :mod:`.livekit_server`.
"""

from .gemini.server import LocalGeminiLiveServer
from .livekit_server.server import LocalLiveKitServer
from .livekit_server.worker_process import KitWorkerProcess
from .models import (
    ChatItemRecord,
    LLMRequest,
    ScriptedLLM,
    ScriptedTTS,
    ScriptExhaustedError,
    ToolCall,
)
from .netfault import FaultyLink
from .redis_server import RedisServer
from .room.frontend import FrontendLine
from .room.job import SimulatedJob
from .room.records import (
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
from .room.simulated import SimulatedRoom

__all__ = [
    "AttributeChange",
    "ByteStreamRecord",
    "ChatItemRecord",
    "DataPacketRecord",
    "FaultyLink",
    "FrontendLine",
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
]
