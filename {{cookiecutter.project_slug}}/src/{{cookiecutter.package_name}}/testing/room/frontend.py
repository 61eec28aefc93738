"""The conversation as a frontend shows it, rebuilt from the streams a room recorded.

LiveKit frontends (``useTranscriptions`` / ``useSessionMessages`` in components-js) build the
transcript from text streams: ``lk.transcription`` streams grouped by their ``lk.segment_id``
attribute (a later stream of the same segment replaces the earlier text, which is how
non-delta user transcripts update), plus the ``lk.chat`` messages typed by participants.

A :class:`FrontendLine` is what a user sees; the agent's own record of the conversation is
``resilience.transcript.TranscriptSegment``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_CHAT,
    TOPIC_TRANSCRIPTION,
)

from .records import TextStreamRecord


@dataclass(frozen=True)
class FrontendLine:
    """One line of the transcript, as a frontend shows it.

    ``role`` is ``agent`` when the agent itself spoke it, else ``user`` (including user speech
    the agent transcribed and published on the user's behalf). ``source`` tells a transcribed
    line from a typed chat message. ``segment_id`` is the ``lk.segment_id`` of a transcribed
    line (a chat message's stream id); ``streams`` counts the streams that carried it.
    """

    segment_id: str
    speaker: str
    role: Literal["agent", "user"]
    source: Literal["transcription", "chat"]
    text: str
    final: bool
    track_id: str | None
    started_at: float
    streams: int


def build_transcript(
    streams: Iterable[TextStreamRecord], agent_identity: str
) -> list[FrontendLine]:
    """Group ``streams`` (in the order they were opened) into the lines a frontend shows."""
    order: list[str] = []
    by_segment: dict[str, list[TextStreamRecord]] = {}
    for record in streams:
        if record.topic == TOPIC_TRANSCRIPTION:
            key = "tr:" + record.attributes.get(
                ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID, record.stream_id
            )
        elif record.topic == TOPIC_CHAT:
            key = "chat:" + record.stream_id
        else:
            continue
        if key not in by_segment:
            order.append(key)
            by_segment[key] = []
        by_segment[key].append(record)

    lines = []
    for key in order:
        records = by_segment[key]
        latest, first = records[-1], records[0]
        is_chat = key.startswith("chat:")
        attrs = latest.attributes
        lines.append(
            FrontendLine(
                segment_id=key.split(":", 1)[1],
                speaker=latest.sender_identity,
                role="agent" if latest.sender_identity == agent_identity else "user",
                source="chat" if is_chat else "transcription",
                text=latest.text,
                # a chat message is complete once its stream is closed
                final=latest.closed
                if is_chat
                else attrs.get(ATTRIBUTE_TRANSCRIPTION_FINAL) == "true",
                track_id=attrs.get(ATTRIBUTE_TRANSCRIPTION_TRACK_ID),
                started_at=first.opened_at,
                streams=len(records),
            )
        )
    return lines


def received_by(
    streams: Iterable[TextStreamRecord],
    identity: str,
    visits: Iterable[tuple[float, float | None]],
) -> list[TextStreamRecord]:
    """The streams ``identity``'s frontend got: its own, and the agent's sent to everyone or
    to it that opened during one of its ``visits`` (joined, left or None) to the room."""
    spans = list(visits)

    def present(at: float) -> bool:
        return any(joined <= at and (left is None or at < left) for joined, left in spans)

    return [
        record
        for record in streams
        if record.sender_identity == identity
        or (
            record.direction == "outgoing"
            and (not record.destination_identities or identity in record.destination_identities)
            and present(record.opened_at)
        )
    ]
