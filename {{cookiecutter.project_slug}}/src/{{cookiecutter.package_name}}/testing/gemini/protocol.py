"""The Gemini Live (BidiGenerateContent) wire protocol, as the local test server speaks it.

Only the JSON shapes live here: parsing what a client sends into small typed events, and
building what the server sends back. No sockets, no state. The shapes were read from
google-genai 3.4 (``google/genai/live.py``): the client mixes snake_case and camelCase keys
(``{"client_content": {"turnComplete": true}}``, ``"mime_type"``), so keys are normalised to
snake_case before use; the server answers in camelCase, which is what the client parses.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ActivityEnd",
    "ActivityStart",
    "AudioStreamEnd",
    "ClientContent",
    "ClientEvent",
    "FunctionCall",
    "HistoryItem",
    "HistoryRole",
    "HistorySource",
    "ProtocolError",
    "RealtimeAudio",
    "RealtimeText",
    "Reply",
    "Setup",
    "ToolResponse",
    "Turn",
    "live_path",
    "load_message",
    "match_live_path",
    "parse_client_message",
    "parse_setup",
]

_PATH_RE = re.compile(
    r"^/ws/google\.ai\.generativelanguage\.(?P<version>[\w.]+)\.GenerativeService\."
    r"BidiGenerateContent(?:Constrained)?$"
)
# user payloads whose keys belong to the user (tool arguments and results): never renamed
_OPAQUE_KEYS = frozenset({"args", "response", "parameters", "parameters_json_schema"})
_URLSAFE = str.maketrans("-_", "+/")
_CAMEL_RE = re.compile(r"(?<!^)(?=[A-Z])")


class ProtocolError(ValueError):
    """A client message the server cannot understand; the connection closes with 1007."""


def live_path(version: str = "v1beta") -> str:
    """The websocket path google-genai uses for the Gemini Developer API Live endpoint."""
    return f"/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent"


def match_live_path(path: str) -> str | None:
    """Return the API version named by a request path, or None when it is not the Live path."""
    match = _PATH_RE.match(path.split("?", 1)[0])
    return match.group("version") if match else None


def _snake(key: str) -> str:
    return _CAMEL_RE.sub("_", key).lower()


def normalize_keys(value: Any) -> Any:
    """Rename every dict key to snake_case, leaving tool arguments and results untouched."""
    if isinstance(value, dict):
        return {
            _snake(k): (v if _snake(k) in _OPAQUE_KEYS else normalize_keys(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalize_keys(v) for v in value]
    return value


def load_message(raw: str | bytes) -> dict[str, Any]:
    """Decode one client frame into a dict with snake_case keys; ProtocolError if not JSON."""
    try:
        message = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"message is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    return normalize_keys(message)


# -- the setup message ---------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """The first client message: model, modalities, and the resumption handle if any."""

    model: str
    response_modalities: tuple[str, ...]
    resumption_requested: bool
    """True when the setup carries a ``sessionResumption`` field (with or without a handle)."""
    handle: str | None
    """The handle the client resumes from, or None for a fresh session."""
    input_transcription: bool
    output_transcription: bool
    context_window_compression: dict[str, Any] | None
    system_instruction: str | None
    raw: dict[str, Any] = field(repr=False)
    """The whole setup object, keys in snake_case."""

    @property
    def audio_output(self) -> bool:
        """Whether replies are spoken (AUDIO modality, the Live API default)."""
        return not self.response_modalities or "AUDIO" in self.response_modalities


def parse_setup(message: dict[str, Any]) -> Setup:
    """Parse the first message of a connection; raise ProtocolError when it is not a setup."""
    setup = message.get("setup")
    if not isinstance(setup, dict) or not isinstance(setup.get("model"), str):
        raise ProtocolError("the first message must be a setup with a model")
    generation = setup.get("generation_config") or {}
    resumption = setup.get("session_resumption")
    instruction = setup.get("system_instruction")
    return Setup(
        model=setup["model"],
        response_modalities=tuple(
            str(m).upper() for m in generation.get("response_modalities", ())
        ),
        resumption_requested=resumption is not None,
        handle=(resumption or {}).get("handle") or None,
        input_transcription=setup.get("input_audio_transcription") is not None,
        output_transcription=setup.get("output_audio_transcription") is not None,
        context_window_compression=setup.get("context_window_compression"),
        system_instruction=_content_text(instruction) if isinstance(instruction, dict) else None,
        raw=setup,
    )


# -- client events -------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """One Content of a clientContent message: its role, text, and the function calls and
    results it carries (history a client sends as content, ids and all)."""

    role: str
    text: str
    function_calls: tuple[dict[str, Any], ...] = ()
    function_responses: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ClientContent:
    """Turns appended to the conversation; ``turn_complete`` asks the model to answer."""

    turns: tuple[Turn, ...]
    turn_complete: bool


@dataclass(frozen=True)
class RealtimeText:
    """Text typed into the realtime stream: a user turn the model answers."""

    text: str


@dataclass(frozen=True)
class RealtimeAudio:
    """A chunk of 16-bit little-endian mono PCM user audio."""

    pcm: bytes
    sample_rate: int


@dataclass(frozen=True)
class ActivityStart:
    """Manual activity detection: the user started speaking (interrupts a reply)."""


@dataclass(frozen=True)
class ActivityEnd:
    """Manual activity detection: the user stopped speaking (ends the audio turn)."""


@dataclass(frozen=True)
class AudioStreamEnd:
    """The client paused its microphone stream (ends the audio turn)."""


@dataclass(frozen=True)
class ToolResponse:
    """Results of function calls; the model answers them."""

    responses: tuple[dict[str, Any], ...]


ClientEvent = (
    ClientContent
    | RealtimeText
    | RealtimeAudio
    | ActivityStart
    | ActivityEnd
    | AudioStreamEnd
    | ToolResponse
)


def _content_text(content: dict[str, Any]) -> str:
    parts = content.get("parts") or []
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict))


def _turn(content: dict[str, Any]) -> Turn:
    parts = [p for p in content.get("parts") or [] if isinstance(p, dict)]
    return Turn(
        role=content.get("role") or "user",
        text=_content_text(content),
        function_calls=tuple(p["function_call"] for p in parts if p.get("function_call")),
        function_responses=tuple(
            p["function_response"] for p in parts if p.get("function_response")
        ),
    )


def _rate(mime_type: str) -> int:
    match = re.search(r"rate=(\d+)", mime_type or "")
    return int(match.group(1)) if match else 16000


def parse_client_message(message: dict[str, Any]) -> list[ClientEvent]:
    """Parse one client message after setup into events, in the order they take effect."""
    events: list[ClientEvent] = []
    if (content := message.get("client_content")) is not None:
        turns = tuple(_turn(t) for t in content.get("turns") or [])
        events.append(ClientContent(turns=turns, turn_complete=bool(content.get("turn_complete"))))
    if (realtime := message.get("realtime_input")) is not None:
        events.extend(_parse_realtime(realtime))
    if (tool := message.get("tool_response")) is not None:
        events.append(ToolResponse(responses=tuple(tool.get("function_responses") or ())))
    if not events:
        raise ProtocolError(f"unknown client message with keys {sorted(message)}")
    return events


def decode_base64(data: str) -> bytes:
    """Decode standard or URL-safe base64 (google-genai sends the URL-safe alphabet)."""
    try:
        return base64.b64decode(data.translate(_URLSAFE) + "=" * (-len(data) % 4), validate=True)
    except (ValueError, TypeError, AttributeError):
        raise ProtocolError("inline data is not base64") from None


def _parse_realtime(realtime: dict[str, Any]) -> list[ClientEvent]:
    events: list[ClientEvent] = []
    if realtime.get("activity_start") is not None:
        events.append(ActivityStart())
    # media_chunks is the deprecated spelling of audio
    blobs = [realtime["audio"]] if realtime.get("audio") else []
    blobs += realtime.get("media_chunks") or []
    for blob in blobs:
        if str(blob.get("mime_type", "")).startswith("audio/"):
            pcm = decode_base64(blob.get("data", ""))
            events.append(RealtimeAudio(pcm=pcm, sample_rate=_rate(blob["mime_type"])))
    if realtime.get("text"):
        events.append(RealtimeText(text=realtime["text"]))
    if realtime.get("activity_end") is not None:
        events.append(ActivityEnd())
    if realtime.get("audio_stream_end"):
        events.append(AudioStreamEnd())
    # video frames are accepted and ignored: nothing in the kit scripts on them
    return events


# -- conversation items and scripted replies -----------------------------------------------


HistoryRole = Literal["user", "model", "tool"]
HistorySource = Literal[
    "client_content", "realtime_text", "audio", "tool_response", "reply", "tool_call"
]


@dataclass(frozen=True)
class HistoryItem:
    """One entry of the server-side conversation, in the order the server took it in."""

    role: HistoryRole
    text: str
    source: HistorySource
    connection: int
    """Index of the connection (``server.connections[i]``) that added it."""
    interrupted: bool = False
    """For replies: cut before the end (by an interruption or a dropped connection)."""


@dataclass(frozen=True)
class FunctionCall:
    """A tool call the scripted model makes; the client answers with a toolResponse."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """What a responder returns when it wants more than plain text."""

    text: str = ""
    function_calls: tuple[FunctionCall, ...] = ()


# -- server messages -----------------------------------------------------------------------


def setup_complete() -> dict[str, Any]:
    """The answer to a setup: the session is ready."""
    return {"setupComplete": {}}


def model_text(text: str) -> dict[str, Any]:
    """A model turn part carrying text (TEXT modality)."""
    return {"serverContent": {"modelTurn": {"role": "model", "parts": [{"text": text}]}}}


def model_audio(pcm: bytes, sample_rate: int = 24000) -> dict[str, Any]:
    """A model turn part carrying 16-bit mono PCM (AUDIO modality; Gemini speaks at 24 kHz)."""
    blob = {"mimeType": f"audio/pcm;rate={sample_rate}", "data": base64.b64encode(pcm).decode()}
    return {"serverContent": {"modelTurn": {"role": "model", "parts": [{"inlineData": blob}]}}}


def output_transcription(text: str) -> dict[str, Any]:
    """The words of the spoken reply, sent alongside its audio."""
    return {"serverContent": {"outputTranscription": {"text": text}}}


def input_transcription(text: str) -> dict[str, Any]:
    """What the server heard in the user's audio turn."""
    return {"serverContent": {"inputTranscription": {"text": text}}}


def generation_complete() -> dict[str, Any]:
    """The model finished producing the reply (playback may still be running)."""
    return {"serverContent": {"generationComplete": True}}


def turn_complete() -> dict[str, Any]:
    """The model's turn is over; the client may speak."""
    return {"serverContent": {"turnComplete": True}}


def interrupted() -> dict[str, Any]:
    """The reply was cut by user activity."""
    return {"serverContent": {"interrupted": True}}


def usage_metadata(prompt_tokens: int, response_tokens: int) -> dict[str, Any]:
    """Token counts for the turn (word counts here; nothing bills them)."""
    return {
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "responseTokenCount": response_tokens,
            "totalTokenCount": prompt_tokens + response_tokens,
        }
    }


def tool_call(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The model asks the client to run functions (``[{"id", "name", "args"}]``)."""
    return {"toolCall": {"functionCalls": calls}}


def resumption_update(handle: str | None, resumable: bool) -> dict[str, Any]:
    """A new resumption handle; Gemini omits the handle when the state is not resumable."""
    update: dict[str, Any] = {"resumable": resumable}
    if resumable and handle:
        update["newHandle"] = handle
    return {"sessionResumptionUpdate": update}


def go_away(time_left: float) -> dict[str, Any]:
    """The server will close the connection in ``time_left`` seconds (a protobuf Duration)."""
    return {"goAway": {"timeLeft": f"{time_left:.3f}s"}}


def summarize_sent(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of a server message fit for records: inline audio replaced by its byte count."""
    content = message.get("serverContent", {}).get("modelTurn")
    if not content:
        return message
    parts = [
        {"inlineData": {"bytes": len(base64.b64decode(p["inlineData"]["data"]))}}
        if "inlineData" in p
        else p
        for p in content["parts"]
    ]
    return {"serverContent": {"modelTurn": {**content, "parts": parts}}}


def summarize_received(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of a client message fit for records: audio data replaced by its byte count."""
    realtime = message.get("realtime_input")
    if not realtime or not realtime.get("audio"):
        return message
    audio = realtime["audio"]
    size = len(decode_base64(audio.get("data", "")))
    summary = {"mime_type": audio.get("mime_type"), "bytes": size}
    return {**message, "realtime_input": {**realtime, "audio": summary}}
