"""What a simulated room records: one dataclass per kind of thing the agent does to the room.

A :class:`RoomRecorder` keeps the records in lists and in one ordered timeline, and calls
observers with every new :class:`TimelineEvent`, so a test can assert on them afterwards and a
CLI can print them as they happen. Records are plain mutable dataclasses: a stream record grows
while the agent writes to it, so an observer that keeps a reference sees the final state.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

Direction = Literal["outgoing", "incoming"]
"""``outgoing``: sent by the agent (local participant); ``incoming``: sent to it by a
simulated participant."""


@dataclass
class TrackRecord:
    """A track published by a participant (the agent's audio output, a user's microphone)."""

    sid: str
    name: str
    kind: str  # "audio" | "video"
    source: str  # "microphone" | "camera" | "screen_share" | ...
    participant_identity: str
    published_at: float
    unpublished_at: float | None = None
    subscribed_at: float | None = None

    @property
    def is_published(self) -> bool:
        """True while the track has not been unpublished."""
        return self.unpublished_at is None


class _StreamState:
    """What a receiver knows of any stream: whether it ended, and its final attributes."""

    closed_at: float | None
    header_attributes: dict[str, str]
    close_attributes: dict[str, str]

    @property
    def closed(self) -> bool:
        """True once the sender closed the stream."""
        return self.closed_at is not None

    @property
    def attributes(self) -> dict[str, str]:
        """Header attributes overlaid with the close attributes."""
        return {**self.header_attributes, **self.close_attributes}


@dataclass
class TextStreamRecord(_StreamState):
    """A text stream, as its receiver sees it once it has ended.

    ``header_attributes`` are those sent when the stream opened; ``attributes`` adds the ones
    sent with the close (a receiver's ``reader.info.attributes`` after end of stream), which is
    where ``lk.transcription_final="true"`` of a delta transcription stream arrives.
    """

    stream_id: str
    topic: str
    sender_identity: str
    direction: Direction
    header_attributes: dict[str, str]
    destination_identities: list[str]
    opened_at: float
    chunks: list[str] = field(default_factory=list)
    close_attributes: dict[str, str] = field(default_factory=dict)
    close_reason: str = ""
    closed_at: float | None = None

    @property
    def text(self) -> str:
        """All text written so far."""
        return "".join(self.chunks)


@dataclass
class ByteStreamRecord(_StreamState):
    """A byte stream (file, session message); same attribute rules as text streams."""

    stream_id: str
    topic: str
    name: str
    mime_type: str
    sender_identity: str
    direction: Direction
    header_attributes: dict[str, str]
    destination_identities: list[str]
    opened_at: float
    chunks: list[bytes] = field(default_factory=list)
    close_attributes: dict[str, str] = field(default_factory=dict)
    close_reason: str = ""
    closed_at: float | None = None

    @property
    def data(self) -> bytes:
        """All bytes written so far."""
        return b"".join(self.chunks)


@dataclass
class AttributeChange:
    """Attributes, metadata or name set by a participant."""

    participant_identity: str
    changed: dict[str, str]
    at: float
    field: Literal["attributes", "metadata", "name"] = "attributes"


@dataclass
class RpcMethodRecord:
    """An RPC method the agent registered on its local participant."""

    method: str
    registered_at: float
    unregistered_at: float | None = None


@dataclass
class RpcCallRecord:
    """One RPC invocation, in either direction, with its outcome."""

    caller_identity: str
    destination_identity: str
    method: str
    payload: str
    at: float
    response: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    finished_at: float | None = None


@dataclass
class DataPacketRecord:
    """A data packet (``publish_data``), a SIP DTMF or a legacy transcription packet."""

    kind: Literal["data", "dtmf", "legacy_transcription"]
    sender_identity: str
    topic: str
    payload: bytes | str | dict[str, Any]
    destination_identities: list[str]
    at: float


@dataclass
class ParticipantRecord:
    """A simulated participant joining or leaving."""

    identity: str
    kind: str
    joined_at: float
    left_at: float | None = None
    disconnect_reason: str | None = None


@dataclass(frozen=True)
class TimelineEvent:
    """One entry of the room's ordered timeline; ``record`` is the record it concerns."""

    seq: int
    at: float
    kind: str
    record: Any


Observer = Callable[[TimelineEvent], object]  # what it returns is ignored


class RoomRecorder:
    """Keeps every record of one room, the ordered timeline, and the observers."""

    def __init__(self) -> None:
        self.tracks: list[TrackRecord] = []
        self.text_streams: list[TextStreamRecord] = []
        self.byte_streams: list[ByteStreamRecord] = []
        self.attribute_changes: list[AttributeChange] = []
        self.rpc_methods: list[RpcMethodRecord] = []
        self.rpc_calls: list[RpcCallRecord] = []
        self.data_packets: list[DataPacketRecord] = []
        self.participants: list[ParticipantRecord] = []
        self.timeline: list[TimelineEvent] = []
        self._observers: list[Observer] = []
        self._seq = itertools.count(1)

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer`` with every new timeline event (synchronously, in order)."""
        self._observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer``; unknown observers are ignored."""
        if observer in self._observers:
            self._observers.remove(observer)

    def emit(self, kind: str, record: Any) -> TimelineEvent:
        """Append an event to the timeline and tell every observer about it."""
        event = TimelineEvent(seq=next(self._seq), at=time.time(), kind=kind, record=record)
        self.timeline.append(event)
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:
                # an observer is a bystander (a progress printer): it must never break the
                # agent code that triggered the record
                logger.exception("room observer failed", extra={"event_kind": kind})
        return event
