"""Text and byte streams without the FFI data channel.

The writers subclass the SDK's ``rtc.TextStreamWriter`` / ``rtc.ByteStreamWriter`` and replace
only the three calls that go through the FFI (``_send_header``, ``write``, ``_send_close``): the
SDK's own ``aclose()`` (double close raises, open-writer bookkeeping) still runs. Each writer
fills a record as the agent writes, so a test sees exactly what a frontend would receive.

The readers subclass ``rtc.TextStreamReader`` / ``rtc.ByteStreamReader`` and keep the SDK's
``__anext__`` / ``read_all`` / close logic; only the FFI subscription is replaced by a local
queue that the simulated room fills with the same chunk and end-of-stream events the FFI sends.
Their ``__init__`` does not call the SDK's, which would ask the FFI for a reader handle: it
sets the same fields instead (checked against livekit-rtc 1.1.x).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

from livekit import rtc
from livekit.rtc._proto import ffi_pb2 as proto_ffi

from .records import ByteStreamRecord, RoomRecorder, TextStreamRecord

# pseudo writer handles: never handed to the FFI, only used as bookkeeping keys by the SDK
_writer_ids = itertools.count(1 << 40)

_DISCONNECTED = "room is disconnected"


def new_stream_id() -> str:
    """A stream id in the SDK's format (a UUID4 string)."""
    return str(uuid.uuid4())


class SimulatedTextStreamWriter(rtc.TextStreamWriter):
    """A text stream the agent writes; recorded in ``SimulatedRoom.text_streams``."""

    def __init__(
        self,
        local_participant: rtc.LocalParticipant,
        *,
        recorder: RoomRecorder,
        is_connected: Callable[[], bool],
        topic: str = "",
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
        total_size: int | None = None,
        reply_to_id: str | None = None,
        destination_identities: list[str] | None = None,
        sender_identity: str | None = None,
    ) -> None:
        super().__init__(
            local_participant,
            topic=topic,
            attributes=attributes,
            stream_id=stream_id,
            total_size=total_size,
            reply_to_id=reply_to_id,
            destination_identities=destination_identities,
            sender_identity=sender_identity,
        )
        self._recorder = recorder
        self._is_connected = is_connected
        self.record: TextStreamRecord | None = None

    async def _send_header(self) -> None:
        if not self._is_connected():
            raise rtc.StreamError(_DISCONNECTED)
        now = time.time()
        stream_id = self._options.id or new_stream_id()
        attributes = dict(self._options.attributes)
        self._info = rtc.TextStreamInfo(
            stream_id=stream_id,
            mime_type="text/plain",
            topic=self._options.topic,
            timestamp=int(now * 1000),
            size=self._total_size,
            attributes=attributes,
            attachments=[],
        )
        # no native writer exists: the handle is a bookkeeping key only, never dropped
        self._writer_handle = next(_writer_ids)
        self.record = TextStreamRecord(
            stream_id=stream_id,
            topic=self._options.topic,
            sender_identity=self._sender_identity,
            direction="outgoing",
            header_attributes=attributes,
            destination_identities=list(self._options.destination_identities),
            opened_at=now,
        )
        self._recorder.text_streams.append(self.record)
        self._recorder.emit("text_stream_opened", self.record)

    async def write(self, text: str) -> None:
        async with self._write_lock:
            if self._closed:
                raise RuntimeError("Cannot write after stream is closed")
            if self.record is None:
                raise RuntimeError("Stream is not open")
            if not self._is_connected():
                raise rtc.StreamError(_DISCONNECTED)
            self.record.chunks.append(text)
            self._recorder.emit("text_stream_written", self.record)

    async def _send_close(self, *, reason: str, attributes: dict[str, str] | None) -> None:
        assert self.record is not None
        if not self._is_connected():
            raise rtc.StreamError(_DISCONNECTED)
        self.record.close_attributes = dict(attributes or {})
        self.record.close_reason = reason
        self.record.closed_at = time.time()
        self._recorder.emit("text_stream_closed", self.record)


class SimulatedByteStreamWriter(rtc.ByteStreamWriter):
    """A byte stream the agent writes; recorded in ``SimulatedRoom.byte_streams``."""

    def __init__(
        self,
        local_participant: rtc.LocalParticipant,
        *,
        recorder: RoomRecorder,
        is_connected: Callable[[], bool],
        name: str,
        topic: str = "",
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
        total_size: int | None = None,
        mime_type: str = "application/octet-stream",
        destination_identities: list[str] | None = None,
    ) -> None:
        super().__init__(
            local_participant,
            name=name,
            topic=topic,
            attributes=attributes,
            stream_id=stream_id,
            total_size=total_size,
            mime_type=mime_type,
            destination_identities=destination_identities,
        )
        self._recorder = recorder
        self._is_connected = is_connected
        self.record: ByteStreamRecord | None = None

    async def _send_header(self) -> None:
        if not self._is_connected():
            raise rtc.StreamError(_DISCONNECTED)
        now = time.time()
        opts = self._options
        stream_id = opts.id or new_stream_id()
        attributes = dict(opts.attributes)
        self._info = rtc.ByteStreamInfo(
            stream_id=stream_id,
            mime_type=opts.mime_type,
            topic=opts.topic,
            timestamp=int(now * 1000),
            size=self._total_size,
            attributes=attributes,
            name=opts.name,
        )
        self._writer_handle = next(_writer_ids)
        self.record = ByteStreamRecord(
            stream_id=stream_id,
            topic=opts.topic,
            name=opts.name,
            mime_type=opts.mime_type,
            sender_identity=self._sender_identity,
            direction="outgoing",
            header_attributes=attributes,
            destination_identities=list(opts.destination_identities),
            opened_at=now,
        )
        self._recorder.byte_streams.append(self.record)
        self._recorder.emit("byte_stream_opened", self.record)

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            if self._closed:
                raise RuntimeError("Cannot write after stream is closed")
            if self.record is None:
                raise RuntimeError("Stream is not open")
            if not self._is_connected():
                raise rtc.StreamError(_DISCONNECTED)
            self.record.chunks.append(bytes(data))
            self._recorder.emit("byte_stream_written", self.record)

    async def _send_close(self, *, reason: str, attributes: dict[str, str] | None) -> None:
        assert self.record is not None
        if not self._is_connected():
            raise rtc.StreamError(_DISCONNECTED)
        self.record.close_attributes = dict(attributes or {})
        self.record.close_reason = reason
        self.record.closed_at = time.time()
        self._recorder.emit("byte_stream_closed", self.record)


class _LocalReader:
    """What the simulated text and byte readers share: the SDK reader's state, fed from a
    local queue instead of an FFI subscription. ``_EVENT`` names the FFI event field."""

    _EVENT: str

    def __init__(self, info: Any, *, on_close: Callable[[], None] | None = None):
        # mirrors the SDK reader's __init__ minus the FFI subscription and request
        self._info = info
        self._reader_handle = 0
        self._on_close = on_close
        self._closed = False
        self._error: rtc.StreamError | None = None
        self._queue: asyncio.Queue[proto_ffi.FfiEvent] = asyncio.Queue()

    def _unsubscribe(self) -> None:
        # nothing to unsubscribe from: the queue is local
        pass

    def deliver_chunk(self, content: str | bytes) -> None:
        """Queue a chunk as the FFI would deliver it."""
        event = proto_ffi.FfiEvent()
        reader_event = getattr(event, self._EVENT)
        reader_event.reader_handle = self._reader_handle
        reader_event.chunk_received.content = content
        self._queue.put_nowait(event)

    def deliver_end(self, attributes: dict[str, str] | None = None, error: str = "") -> None:
        """Queue the end of the stream (trailer attributes, or an error)."""
        event = proto_ffi.FfiEvent()
        reader_event = getattr(event, self._EVENT)
        eos = reader_event.eos
        eos.SetInParent()
        reader_event.reader_handle = self._reader_handle
        if attributes:
            eos.attributes.update(attributes)
        if error:
            eos.error.description = error
        self._queue.put_nowait(event)


class SimulatedTextStreamReader(_LocalReader, rtc.TextStreamReader):
    """An incoming text stream handed to a handler registered with
    ``room.register_text_stream_handler`` (RoomIO's ``lk.chat`` handler, for one)."""

    _EVENT = "text_stream_reader_event"


class SimulatedByteStreamReader(_LocalReader, rtc.ByteStreamReader):
    """An incoming byte stream handed to a handler registered with
    ``room.register_byte_stream_handler`` (the session host's messages, for one)."""

    _EVENT = "byte_stream_reader_event"
