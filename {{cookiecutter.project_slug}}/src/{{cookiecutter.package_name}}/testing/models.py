"""Scripted models: a deterministic LLM and a TTS that makes short PCM audio.

Both are real subclasses of the livekit-agents bases and are shaped like the plugins: the LLM
streams ``ChatChunk``s (text word by word, tool calls as ``FunctionToolCall``) from
``LLMStream._run``; the TTS pushes PCM through the ``AudioEmitter`` from ``ChunkedStream._run``
and, when streaming, from ``SynthesizeStream._run`` with one emitter segment per flush. So the
framework around them (retries, metrics, tool execution, sentence tokenizing, transcript sync,
audio playout) is the production code path.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit.agents import APIConnectOptions, APIError, llm, tts, utils
from livekit.agents.llm.chat_context import Instructions
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

# -- LLM ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """A scripted reply that calls a tool.

    ``arguments`` is a dict (sent as JSON) or a raw JSON string. The framework runs the tool
    and asks the model again; that follow-up request is answered with ``then`` (when given),
    without consuming another scripted reply.
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    then: str | None = None


Reply = str | ToolCall


@dataclass(frozen=True)
class ChatItemRecord:
    """One chat-context item as the model received it."""

    id: str
    type: str  # message | function_call | function_call_output | agent_handoff | ...
    role: str  # system | developer | user | assistant for messages; "tool" otherwise
    text: str


@dataclass(frozen=True)
class LLMRequest:
    """What one ``chat()`` call sent to the model."""

    index: int
    items: tuple[ChatItemRecord, ...]
    tools: tuple[str, ...]
    tool_choice: Any

    @property
    def messages(self) -> list[tuple[str, str]]:
        """``(role, text)`` of each message item, in order."""
        return [(i.role, i.text) for i in self.items if i.type == "message"]

    @property
    def last_user_text(self) -> str | None:
        """Text of the last user message, if any."""
        users = [text for role, text in self.messages if role == "user"]
        return users[-1] if users else None


Responder = Callable[[LLMRequest], Reply | Awaitable[Reply]]


class ScriptExhaustedError(APIError):
    """The ScriptedLLM got a request it had no reply for (not retried)."""

    def __init__(self, index: int, scripted: int) -> None:
        super().__init__(
            f"ScriptedLLM has no reply for request #{index + 1}: {scripted} replies were "
            "scripted; add replies, pass a responder, or use on_exhausted='echo'",
            retryable=False,
        )


def _item_record(item: llm.ChatItem) -> ChatItemRecord:
    if isinstance(item, llm.ChatMessage):
        # instructions render to text; images and audio do not
        text = "\n".join(str(c) for c in item.content if isinstance(c, str | Instructions))
        return ChatItemRecord(item.id, item.type, item.role, text)
    if isinstance(item, llm.FunctionCall):
        return ChatItemRecord(item.id, item.type, "assistant", f"{item.name}({item.arguments})")
    if isinstance(item, llm.FunctionCallOutput):
        return ChatItemRecord(item.id, item.type, "tool", item.output)
    return ChatItemRecord(item.id, item.type, "system", "")


def _echo(request: LLMRequest) -> Reply:
    return f"You said: {request.last_user_text}" if request.last_user_text else "Hello!"


class ScriptedLLM(llm.LLM):
    """A deterministic LLM for tests and offline runs.

    Give ``replies`` (answered in order, one per request) or a ``responder`` (called with each
    :class:`LLMRequest`, may be async). When the replies run out, ``on_exhausted="error"`` (the
    default) fails the request with :class:`ScriptExhaustedError`, which the session reports as
    an unrecoverable LLM error; ``"echo"`` answers ``"You said: <last user text>"`` instead.
    ``ScriptedLLM()`` with neither echoes. Every request is kept in ``requests``.
    ``chunk_delay`` (seconds) spaces the streamed words, to imitate a slow model.
    """

    def __init__(
        self,
        replies: Iterable[Reply] | None = None,
        *,
        responder: Responder | None = None,
        on_exhausted: Literal["error", "echo"] = "error",
        chunk_delay: float = 0.0,
    ) -> None:
        super().__init__()
        if replies is not None and responder is not None:
            raise ValueError("give either replies or a responder, not both")
        if on_exhausted not in ("error", "echo"):
            raise ValueError("on_exhausted must be 'error' or 'echo'")
        if chunk_delay < 0:
            raise ValueError("chunk_delay must be >= 0")
        replies = list(replies) if replies is not None else None
        for reply in replies or []:
            if not isinstance(reply, str | ToolCall):
                raise TypeError(f"a scripted reply is a str or a ToolCall, not {reply!r}")
        self._script: deque[Reply] = deque(replies or [])
        self._scripted = len(self._script)
        self._responder = responder
        self._on_exhausted = "echo" if replies is None and responder is None else on_exhausted
        self._chunk_delay = chunk_delay
        self._pending_then: deque[str] = deque()
        self.requests: list[LLMRequest] = []

    @property
    def model(self) -> str:
        return "scripted"

    @property
    def provider(self) -> str:
        return "offline-kit"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        request = LLMRequest(
            index=len(self.requests),
            items=tuple(_item_record(item) for item in chat_ctx.items),
            tools=tuple(t.id for t in tools or []),
            tool_choice=tool_choice if utils.is_given(tool_choice) else None,
        )
        self.requests.append(request)
        return _ScriptedLLMStream(
            self, request=request, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )

    async def _next_reply(self, request: LLMRequest) -> Reply:
        last = request.items[-1] if request.items else None
        if self._pending_then and last is not None and last.type == "function_call_output":
            return self._pending_then.popleft()
        if self._responder is not None:
            reply = self._responder(request)
            reply = await reply if inspect.isawaitable(reply) else reply
            if not isinstance(reply, str | ToolCall):
                raise TypeError(f"the responder returned {reply!r}, not a str or a ToolCall")
        elif self._script:
            reply = self._script.popleft()
        elif self._on_exhausted == "echo":
            reply = _echo(request)
        else:
            raise ScriptExhaustedError(request.index, self._scripted)
        if isinstance(reply, ToolCall) and reply.then is not None:
            self._pending_then.append(reply.then)
        return reply


class _ScriptedLLMStream(llm.LLMStream):
    def __init__(self, llm_: ScriptedLLM, *, request: LLMRequest, **kwargs: Any) -> None:
        super().__init__(llm_, **kwargs)
        self._scripted_llm = llm_
        self._request = request

    async def _run(self) -> None:
        reply = await self._scripted_llm._next_reply(self._request)
        chunk_id = utils.shortuuid("chatcmpl_")
        if isinstance(reply, ToolCall):
            arguments = (
                reply.arguments if isinstance(reply.arguments, str) else json.dumps(reply.arguments)
            )
            call = llm.FunctionToolCall(
                name=reply.name, arguments=arguments, call_id=utils.shortuuid("call_")
            )
            delta = llm.ChoiceDelta(role="assistant", tool_calls=[call])
            self._event_ch.send_nowait(llm.ChatChunk(id=chunk_id, delta=delta))
            completion = 1
        else:
            words = _split_words(reply)
            for word in words:
                delta = llm.ChoiceDelta(role="assistant", content=word)
                self._event_ch.send_nowait(llm.ChatChunk(id=chunk_id, delta=delta))
                if self._scripted_llm._chunk_delay:
                    await asyncio.sleep(self._scripted_llm._chunk_delay)
            completion = len(words)
        prompt = sum(len(i.text.split()) for i in self._request.items)
        usage = llm.CompletionUsage(
            completion_tokens=completion, prompt_tokens=prompt, total_tokens=completion + prompt
        )
        self._event_ch.send_nowait(llm.ChatChunk(id=chunk_id, usage=usage))


def _split_words(text: str) -> list[str]:
    """``"a b c"`` -> ``["a", " b", " c"]``: word-sized deltas, as a model streams them."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]


# -- TTS ------------------------------------------------------------------------------------


class ScriptedTTS(tts.TTS):
    """A TTS that synthesizes silence (or a tone) lasting ``ms_per_char`` per character.

    The audio is 16-bit PCM at ``sample_rate``; each synthesis lasts at least one 10 ms frame.
    ``tone_hz`` gives a sine tone instead of silence (audible when played). ``streaming``
    chooses the base's streaming path (``stream()``); otherwise the session wraps
    ``synthesize()`` in its sentence-splitting adapter. Every synthesized text (one entry per
    ``synthesize()`` call or per flushed streaming segment) is kept in ``texts``.
    """

    def __init__(
        self,
        *,
        ms_per_char: float = 2.0,
        sample_rate: int = 24000,
        num_channels: int = 1,
        tone_hz: float | None = None,
        streaming: bool = True,
    ) -> None:
        if ms_per_char < 0:
            raise ValueError("ms_per_char must be >= 0")
        if sample_rate <= 0 or num_channels <= 0:
            raise ValueError("sample_rate and num_channels must be positive")
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=streaming),
            sample_rate=sample_rate,
            num_channels=num_channels,
        )
        self._ms_per_char = ms_per_char
        self._tone_hz = tone_hz
        self.texts: list[str] = []

    @property
    def model(self) -> str:
        return "scripted"

    @property
    def provider(self) -> str:
        return "offline-kit"

    def duration_for(self, text: str) -> float:
        """Seconds of audio synthesized for ``text``."""
        return max(len(text) * self._ms_per_char / 1000.0, 0.01)

    def pcm_for(self, text: str) -> bytes:
        """The PCM bytes synthesized for ``text``."""
        samples = int(self.duration_for(text) * self.sample_rate)
        if self._tone_hz is None:
            return bytes(2 * samples * self.num_channels)
        step = 2 * math.pi * self._tone_hz / self.sample_rate
        frame = (int(8000 * math.sin(step * n)) for n in range(samples))
        return b"".join(struct.pack("<h", s) * self.num_channels for s in frame)

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _ScriptedChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.SynthesizeStream:
        if not self.capabilities.streaming:
            return super().stream(conn_options=conn_options)
        return _ScriptedSynthesizeStream(tts=self, conn_options=conn_options)


class _ScriptedChunkedStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        scripted = self._tts
        assert isinstance(scripted, ScriptedTTS)  # the only TTS that opens this stream
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=scripted.sample_rate,
            num_channels=scripted.num_channels,
            mime_type="audio/pcm",
        )
        scripted.texts.append(self._input_text)
        output_emitter.push(scripted.pcm_for(self._input_text))


class _ScriptedSynthesizeStream(tts.SynthesizeStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        scripted = self._tts
        assert isinstance(scripted, ScriptedTTS)  # the only TTS that opens this stream
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=scripted.sample_rate,
            num_channels=scripted.num_channels,
            mime_type="audio/pcm",
            stream=True,
        )
        segment_text: list[str] = []

        def end_segment() -> None:
            scripted.texts.append("".join(segment_text))
            segment_text.clear()
            output_emitter.end_segment()

        async for data in self._input_ch:
            if isinstance(data, self._FlushSentinel):
                if segment_text:
                    end_segment()
                continue
            if not segment_text:
                # one emitter segment per flushed text, as the base counts them
                self._mark_started()
                output_emitter.start_segment(segment_id=utils.shortuuid())
            segment_text.append(data)
            # audio for each text chunk as it arrives, like a streaming provider
            output_emitter.push(scripted.pcm_for(data))
        if segment_text:
            end_segment()
