"""Text and byte streams the agent writes, recorded instead of sent through the FFI.

The writers subclass the SDK's ``rtc.TextStreamWriter`` / ``rtc.ByteStreamWriter`` through
:mod:`._sdk`, which replaces only the three calls that go through the FFI (opening, writing a
chunk, closing): the SDK's own ``aclose()`` (double close raises, open-writer bookkeeping)
still runs. Each writer fills a record as the agent writes, so a test sees exactly what a
frontend would receive. The readers of streams *to* the agent are in :mod:`._sdk`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from livekit import rtc

from . import _sdk
from .records import ByteStreamRecord, RoomRecorder, TextStreamRecord

_DISCONNECTED = "room is disconnected"


def new_stream_id() -> str:
    """A stream id in the SDK's format (a UUID4 string)."""
    return str(uuid.uuid4())


class _RecordingWriter:
    """What both writers do with their record: refuse once the room is gone, and close it."""

    kind: str  # "text" or "byte": the recorder's event names
    record: Any
    _recorder: RoomRecorder
    _is_connected: Callable[[], bool]

    def _check_connected(self) -> None:
        if not self._is_connected():
            raise rtc.StreamError(_DISCONNECTED)

    def _open_record(self) -> Any:
        assert self.record is not None
        self._check_connected()
        return self.record

    def close_stream(self, reason: str, attributes: dict[str, str]) -> None:
        record = self._open_record()
        record.close_attributes = attributes
        record.close_reason = reason
        record.closed_at = time.time()
        self._recorder.emit(f"{self.kind}_stream_closed", record)


class SimulatedTextStreamWriter(_RecordingWriter, _sdk.OfflineTextStreamWriter):
    """A text stream the agent writes; recorded in ``SimulatedRoom.text_streams``."""

    kind = "text"

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

    def open_stream(self, opening: _sdk.StreamOpening) -> rtc.TextStreamInfo:
        self._check_connected()
        now = time.time()
        stream_id = opening.stream_id or new_stream_id()
        self.record = TextStreamRecord(
            stream_id=stream_id,
            topic=opening.topic,
            sender_identity=opening.sender_identity,
            direction="outgoing",
            header_attributes=opening.attributes,
            destination_identities=opening.destination_identities,
            opened_at=now,
        )
        self._recorder.text_streams.append(self.record)
        self._recorder.emit("text_stream_opened", self.record)
        return rtc.TextStreamInfo(
            stream_id=stream_id,
            mime_type="text/plain",
            topic=opening.topic,
            timestamp=int(now * 1000),
            size=opening.total_size,
            attributes=opening.attributes,  # the same dict as the record's header
            attachments=[],
        )

    def write_chunk(self, chunk: str) -> None:
        self._open_record().chunks.append(chunk)
        self._recorder.emit("text_stream_written", self.record)


class SimulatedByteStreamWriter(_RecordingWriter, _sdk.OfflineByteStreamWriter):
    """A byte stream the agent writes; recorded in ``SimulatedRoom.byte_streams``."""

    kind = "byte"

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

    def open_stream(self, opening: _sdk.StreamOpening) -> rtc.ByteStreamInfo:
        self._check_connected()
        now = time.time()
        stream_id = opening.stream_id or new_stream_id()
        self.record = ByteStreamRecord(
            stream_id=stream_id,
            topic=opening.topic,
            name=opening.name,
            mime_type=opening.mime_type,
            sender_identity=opening.sender_identity,
            direction="outgoing",
            header_attributes=opening.attributes,
            destination_identities=opening.destination_identities,
            opened_at=now,
        )
        self._recorder.byte_streams.append(self.record)
        self._recorder.emit("byte_stream_opened", self.record)
        return rtc.ByteStreamInfo(
            stream_id=stream_id,
            mime_type=opening.mime_type,
            topic=opening.topic,
            timestamp=int(now * 1000),
            size=opening.total_size,
            attributes=opening.attributes,  # the same dict as the record's header
            name=opening.name,
        )

    def write_chunk(self, chunk: Any) -> None:
        self._open_record().chunks.append(bytes(chunk))
        self._recorder.emit("byte_stream_written", self.record)
