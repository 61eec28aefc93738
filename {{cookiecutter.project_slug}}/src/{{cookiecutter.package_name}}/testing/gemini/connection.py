"""One websocket connection of the local Gemini Live server, from setup to close.

The connection reads client messages in order, appends what they say to its conversation,
and answers each reply trigger (a completed clientContent turn, realtime text, the end of an
audio turn, a tool response) with a scripted reply streamed in chunks, so a fault can land
mid-reply. Replies run one at a time in a task of their own; activityStart cancels the one
in flight, the way a user barging in does.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from . import protocol as proto
from .audio import AudioTurnDetector, tone
from .faults import (
    ConnectionRecord,
    Drop,
    Fault,
    FaultSite,
    GoAway,
    NoSetupComplete,
    RefuseHandle,
    RefuseSetup,
    ReplyRecord,
    ResumableFalse,
    SlowSetup,
)
from .protocol import HistoryItem, Reply
from .state import Conversation, ConversationStore, FaultPlan, UnknownHandleError

logger = logging.getLogger(__name__)

Responder = Callable[[Sequence[HistoryItem]], "str | Reply | Awaitable[str | Reply]"]
"""Scripted model: the conversation so far -> the reply (text, or a Reply with tool calls)."""
Transcriber = Callable[[bytes, int], str]
"""What the server "heard": (16-bit mono PCM, sample rate) -> transcript text."""


@dataclass(frozen=True)
class ReplyOptions:
    """How replies are made and paced."""

    responder: Responder
    transcriber: Transcriber
    chunks: int = 4
    chunk_delay: float = 0.02
    audio_chunk_ms: int = 60
    silence_ms: int = 400


def split_reply(text: str, chunks: int) -> list[str]:
    """Split text at word boundaries into at most ``chunks`` pieces that join back to it."""
    words = text.split(" ")
    size = max(1, -(-len(words) // max(1, chunks)))
    pieces = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [p + " " for p in pieces[:-1]] + pieces[-1:] if pieces else []


class LiveConnection:
    """Serves one client websocket; everything it does is written to ``record``."""

    def __init__(
        self,
        ws: ServerConnection,
        record: ConnectionRecord,
        *,
        store: ConversationStore,
        faults: FaultPlan,
        options: ReplyOptions,
        on_change: Callable[[], None],
        key_accepted: bool = True,
    ) -> None:
        self.ws = ws
        self._key_accepted = key_accepted
        self.record = record
        self._store = store
        self._faults = faults
        self._opts = options
        self._on_change = on_change
        self._conv: Conversation | None = None
        self._setup: proto.Setup | None = None
        self._audio: AudioTurnDetector | None = None
        # each trigger carries the history as it stood then: the model answers that, not
        # whatever the client sent while the reply was being prepared
        self._triggers: asyncio.Queue[tuple[HistoryItem, ...]] = asyncio.Queue()
        self._reply_task: asyncio.Task[None] | None = None
        self._triggered = False
        self._timers: set[asyncio.Task[None]] = set()
        self.server_closed = False
        """Whether the server side started the close (a fault or a refusal)."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        replier: asyncio.Task[None] | None = None
        try:
            if not await self._handshake():
                return
            replier = asyncio.create_task(self._reply_loop(), name="gemini-local-replier")
            async for raw in self.ws:
                await self._on_message(raw)
        except ConnectionClosed:
            pass
        except proto.ProtocolError as e:
            logger.warning("closing on a bad client message", extra={"error": str(e)})
            await self.close(1007, str(e)[:120])
        finally:
            # a reply cut by the close is settled (recorded as interrupted) here
            for task in [replier, *self._timers]:
                if task:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def close(self, code: int | None, reason: str = "") -> None:
        """Close from the server side; ``code`` None drops the TCP connection, no close frame."""
        self.server_closed = True
        if code is None:
            self.ws.transport.abort()
        else:
            # a close frame carries at most 123 bytes of reason, as Gemini's are cut
            await self.ws.close(code, reason.encode()[:123].decode(errors="ignore"))

    async def apply(self, fault: Fault, where: FaultSite) -> None:
        """Apply a drop or goAway to this connection now."""
        self._faults.record(self.record.index, fault, where)
        if isinstance(fault, Drop):
            await self.close(fault.close_code, fault.reason)
        elif isinstance(fault, GoAway):
            self.record.go_away_sent_at = time.monotonic()
            await self._send(proto.go_away(fault.time_left))
            timer = asyncio.create_task(self._close_after(fault), name="gemini-local-goaway")
            self._timers.add(timer)
            timer.add_done_callback(self._timers.discard)
        else:
            raise TypeError(f"{type(fault).__name__} cannot be applied to a live connection")

    async def _close_after(self, fault: GoAway) -> None:
        await asyncio.sleep(fault.time_left)
        with contextlib.suppress(ConnectionClosed):
            await self.close(fault.close_code, fault.reason)

    # -- setup -------------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        """Read the setup, apply setup faults, answer; False when the connection ends here."""
        setup = proto.parse_setup(proto.load_message(await self.ws.recv()))
        self._setup, self.record.setup, self.record.handle = setup, setup, setup.handle
        self._on_change()
        idx = self.record.index
        if not self._key_accepted:
            # Gemini reads the setup, then closes: 1007 with the reason (not an HTTP 401)
            return await self._refuse(1007, RefuseSetup().reason)
        if refuse_setup := self._faults.take(lambda f: isinstance(f, RefuseSetup)):
            assert isinstance(refuse_setup, RefuseSetup)
            self._faults.record(idx, refuse_setup, "setup")
            return await self._refuse(refuse_setup.code, refuse_setup.reason)
        if setup.handle is not None:
            refuse = self._faults.take(lambda f: isinstance(f, RefuseHandle))
            if isinstance(refuse, RefuseHandle):
                self._faults.record(idx, refuse, "setup")
                return await self._refuse(refuse.code, refuse.reason)
            try:
                self._conv = self._store.resume(setup.handle)
            except UnknownHandleError:
                return await self._refuse(1008, "session not found")
        else:
            self._conv = self._store.new()
        self.record.conversation = self._conv.id
        realtime = setup.raw.get("realtime_input_config") or {}
        automatic = not (realtime.get("automatic_activity_detection") or {}).get("disabled")
        self._audio = AudioTurnDetector(automatic=automatic, silence_ms=self._opts.silence_ms)
        logger.debug(
            "gemini setup",
            extra={"connection": idx, "resumed": setup.handle is not None, "model": setup.model},
        )

        if stall := self._faults.take(lambda f: isinstance(f, NoSetupComplete | SlowSetup)):
            self._faults.record(idx, stall, "setup")
            if isinstance(stall, NoSetupComplete):
                await self.ws.wait_closed()
                return False
            assert isinstance(stall, SlowSetup)
            await asyncio.sleep(stall.delay)
        await self._send(proto.setup_complete())
        self.record.setup_complete_after = time.monotonic() - self.record.opened_at
        self._on_change()

        if fault := self._take_at("setup"):
            await self.apply(fault, "setup")
            if isinstance(fault, Drop):
                return False
        await self._send_resumption_update()
        return True

    async def _refuse(self, code: int, reason: str) -> bool:
        self.record.refused_with = code
        logger.info("gemini handle refused", extra={"connection": self.record.index, "code": code})
        await self.close(code, reason)
        return False

    def _take_at(
        self, where: Literal["setup", "reply"], chunks_sent: int | None = None
    ) -> Drop | GoAway | None:
        def match(f: Fault) -> bool:
            return (
                isinstance(f, Drop | GoAway)
                and f.at == where
                and (chunks_sent is None or f.after_chunks == chunks_sent)
            )

        fault = self._faults.take(match)
        assert fault is None or isinstance(fault, Drop | GoAway)  # what match accepts
        return fault

    # -- client messages ---------------------------------------------------------------------

    async def _on_message(self, raw: str | bytes) -> None:
        message = proto.load_message(raw)
        self.record.received.append(proto.summarize_received(message))
        self._on_change()
        for event in proto.parse_client_message(message):
            await self._on_event(event)

    async def _on_event(self, event: proto.ClientEvent) -> None:
        assert self._audio is not None
        if isinstance(event, proto.ClientContent):
            for turn in event.turns:
                role: proto.HistoryRole = "model" if turn.role == "model" else "user"
                for call in turn.function_calls:
                    self._append("model", json.dumps(call, sort_keys=True), "tool_call")
                if turn.function_responses:
                    results = json.dumps(list(turn.function_responses), sort_keys=True)
                    self._append("tool", results, "tool_response")
                if turn.text or not (turn.function_calls or turn.function_responses):
                    self._append(role, turn.text, "client_content")
            if event.turn_complete:
                self._trigger()
            else:
                if not self._triggered:
                    self.record.replayed_turns += len(event.turns)
                if event.turns:
                    await self._send_resumption_update()
        elif isinstance(event, proto.RealtimeText):
            self._append("user", event.text, "realtime_text")
            self._trigger()
        elif isinstance(event, proto.RealtimeAudio):
            if (pcm := self._audio.push(event.pcm, event.sample_rate)) is not None:
                await self._audio_turn(pcm)
        elif isinstance(event, proto.ActivityStart):
            self._interrupt()
        elif isinstance(event, proto.ActivityEnd | proto.AudioStreamEnd):
            if (pcm := self._audio.end()) is not None:
                await self._audio_turn(pcm)
        elif isinstance(event, proto.ToolResponse):
            self._append("tool", json.dumps(list(event.responses), sort_keys=True), "tool_response")
            self._trigger()

    async def _audio_turn(self, pcm: bytes) -> None:
        assert self._setup is not None and self._audio is not None
        text = self._opts.transcriber(pcm, self._audio.sample_rate)
        self._append("user", text, "audio")
        if self._setup.input_transcription:
            await self._send(proto.input_transcription(text))
        self._trigger()

    def _append(
        self,
        role: proto.HistoryRole,
        text: str,
        source: proto.HistorySource,
        *,
        interrupted: bool = False,
    ) -> None:
        assert self._conv is not None
        item = HistoryItem(role, text, source, self.record.index, interrupted)
        self._conv.items.append(item)
        self._on_change()

    def _trigger(self) -> None:
        assert self._conv is not None
        self._triggered = True
        self._triggers.put_nowait(tuple(self._conv.items))

    def _interrupt(self) -> None:
        if self._reply_task and not self._reply_task.done():
            self._reply_task.cancel()

    # -- replies -----------------------------------------------------------------------------

    async def _reply_loop(self) -> None:
        while True:
            history = await self._triggers.get()
            self._reply_task = asyncio.create_task(self._reply(history), name="gemini-local-reply")
            # a barge-in cancels only the reply task; a close cancels this loop too (and the
            # reply with it), which must end the loop rather than be taken for a barge-in
            with contextlib.suppress(asyncio.CancelledError):
                await self._reply_task
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError

    async def _reply(self, history: tuple[HistoryItem, ...]) -> None:
        assert self._conv is not None
        try:
            answer = self._opts.responder(history)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception:
            # a broken script is the test's bug: fail loudly, as Gemini fails on its own errors
            logger.exception("scripted responder failed", extra={"connection": self.record.index})
            await self.close(1011, "scripted responder failed")
            return
        reply = answer if isinstance(answer, Reply) else Reply(text=str(answer))
        if reply.function_calls:
            await self._send_tool_calls(reply)
            return
        pieces = split_reply(reply.text, self._opts.chunks)
        record = ReplyRecord(text=reply.text, chunks_total=len(pieces))
        self.record.replies.append(record)
        try:
            for piece in pieces:
                await self._send_chunk(piece)
                record.chunks_sent += 1
                if fault := self._take_at("reply", record.chunks_sent):
                    await self.apply(fault, "reply")
                    if isinstance(fault, Drop):
                        raise asyncio.CancelledError
                await asyncio.sleep(self._opts.chunk_delay)
            await self._send(proto.generation_complete())
            await self._send(proto.turn_complete())
            record.completed = True
            self._append("model", reply.text, "reply")
            prompt = sum(len(i.text.split()) for i in self._conv.items[:-1])
            await self._send(proto.usage_metadata(prompt, len(reply.text.split())))
            await self._send_resumption_update()
        except ConnectionClosed:
            # the client left mid-reply: keep what was said, as Gemini would
            self._cut(record, pieces)
        except asyncio.CancelledError:
            self._cut(record, pieces)
            if not self.server_closed:
                # Gemini ends a barged-in turn with interrupted, then turnComplete
                with contextlib.suppress(ConnectionClosed):
                    await self._send(proto.interrupted())
                    await self._send(proto.turn_complete())
            raise

    def _cut(self, record: ReplyRecord, pieces: list[str]) -> None:
        if not record.completed:
            said = "".join(pieces[: record.chunks_sent])
            self._append("model", said, "reply", interrupted=True)

    async def _send_chunk(self, piece: str) -> None:
        assert self._setup is not None
        if self._setup.audio_output:
            await self._send(proto.model_audio(tone(self._opts.audio_chunk_ms)))
            if self._setup.output_transcription:
                await self._send(proto.output_transcription(piece))
        else:
            await self._send(proto.model_text(piece))

    async def _send_tool_calls(self, reply: Reply) -> None:
        calls = []
        for n, call in enumerate(reply.function_calls):
            call_id = call.id or f"call-{self.record.index}-{len(self.record.sent)}-{n}"
            calls.append({"id": call_id, "name": call.name, "args": call.args})
            self._append("model", json.dumps(calls[-1], sort_keys=True), "tool_call")
        await self._send(proto.tool_call(calls))

    # -- sending -----------------------------------------------------------------------------

    async def _send_resumption_update(self) -> None:
        assert self._setup is not None and self._conv is not None
        if not self._setup.resumption_requested:
            return
        not_resumable = self._faults.take(lambda f: isinstance(f, ResumableFalse))
        if isinstance(not_resumable, ResumableFalse):
            self._faults.record(self.record.index, not_resumable, "update")
            if not_resumable.count > 1:
                self._faults.arm(ResumableFalse(not_resumable.count - 1), first=True)
            await self._send(proto.resumption_update(None, resumable=False))
            return
        handle = self._store.issue_handle(self._conv)
        self.record.handles_issued.append(handle)
        await self._send(proto.resumption_update(handle, resumable=True))

    async def _send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))
        self.record.sent.append(proto.summarize_sent(message))
        self._on_change()
