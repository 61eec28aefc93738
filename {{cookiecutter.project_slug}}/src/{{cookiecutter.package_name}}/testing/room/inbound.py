"""Streams a scripted participant sends to the agent (typed chat, files, session messages).

A mixin of :class:`SimulatedRoom`. Each stream is recorded (``direction="incoming"``) and, as the
SDK's event loop does, handed as a reader to the handler registered for its topic with
``room.register_text_stream_handler`` / ``register_byte_stream_handler`` (RoomIO registers
``lk.chat``); with no handler it is logged and dropped.
"""

from __future__ import annotations

import logging
import time

from livekit import rtc
from livekit.agents.types import TOPIC_CHAT

from . import _sdk
from .records import ByteStreamRecord, RoomRecorder, TextStreamRecord
from .sfu import require_connected, require_participant
from .streams import new_stream_id

logger = logging.getLogger(__name__)


class InboundStreamsMixin(rtc.Room):
    """``send_chat`` / ``send_text_as`` / ``send_bytes_as`` for :class:`SimulatedRoom`."""

    recorder: RoomRecorder

    async def send_chat(self, identity: str, text: str) -> rtc.TextStreamInfo:
        """The participant types ``text``: a ``lk.chat`` text stream, as a frontend sends it."""
        return await self.send_text_as(identity, text, topic=TOPIC_CHAT)

    async def send_text_as(
        self,
        identity: str,
        text: str,
        *,
        topic: str,
        attributes: dict[str, str] | None = None,
    ) -> rtc.TextStreamInfo:
        """The participant sends a text stream; the handler registered for ``topic`` gets it."""
        require_connected(self)
        require_participant(self, identity)
        now = time.time()
        info = rtc.TextStreamInfo(
            stream_id=new_stream_id(),
            mime_type="text/plain",
            topic=topic,
            timestamp=int(now * 1000),
            size=len(text.encode()),
            attributes=dict(attributes or {}),
            attachments=[],
        )
        record = TextStreamRecord(
            stream_id=info.stream_id,
            topic=topic,
            sender_identity=identity,
            direction="incoming",
            header_attributes=dict(attributes or {}),
            destination_identities=[self.local_participant.identity],
            opened_at=now,
            chunks=[text],
            closed_at=now,
        )
        self.recorder.text_streams.append(record)
        self.recorder.emit("text_stream_received", record)
        self._hand_over(info, text, identity, key=id(record))
        return info

    async def send_bytes_as(
        self,
        identity: str,
        data: bytes,
        *,
        topic: str,
        name: str = "unknown",
        mime_type: str = "application/octet-stream",
        attributes: dict[str, str] | None = None,
    ) -> rtc.ByteStreamInfo:
        """The participant sends a byte stream; the handler registered for ``topic`` gets it."""
        require_connected(self)
        require_participant(self, identity)
        now = time.time()
        info = rtc.ByteStreamInfo(
            stream_id=new_stream_id(),
            mime_type=mime_type,
            topic=topic,
            timestamp=int(now * 1000),
            size=len(data),
            attributes=dict(attributes or {}),
            name=name,
        )
        record = ByteStreamRecord(
            stream_id=info.stream_id,
            topic=topic,
            name=name,
            mime_type=mime_type,
            sender_identity=identity,
            direction="incoming",
            header_attributes=dict(attributes or {}),
            destination_identities=[self.local_participant.identity],
            opened_at=now,
            chunks=[bytes(data)],
            closed_at=now,
        )
        self.recorder.byte_streams.append(record)
        self.recorder.emit("byte_stream_received", record)
        self._hand_over(info, bytes(data), identity, key=id(record))
        return info

    def _hand_over(
        self,
        info: rtc.TextStreamInfo | rtc.ByteStreamInfo,
        content: str | bytes,
        identity: str,
        *,
        key: int,
    ) -> None:
        """Give a complete stream to the handler registered for its topic, as the SDK does."""
        if not _sdk.deliver_stream(self, info, content, identity, key=key):
            logger.info("ignoring stream, no handler", extra={"topic": info.topic})
