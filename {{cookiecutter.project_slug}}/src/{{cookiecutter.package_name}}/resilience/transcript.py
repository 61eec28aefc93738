"""The conversation's transcript: its final lines, in order, bounded.

A :class:`TranscriptLog` keeps the newest final lines of one conversation (or of a
multi-participant room) as :class:`TranscriptSegment` values numbered from 1; it backs the
``transcript.history`` RPC, and each segment's :meth:`~TranscriptSegment.to_dict` form is what
the store keeps.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["KEPT_SEGMENTS", "TranscriptLog", "TranscriptSegment"]

# how many of a conversation's newest lines a TranscriptLog keeps by default, and so what a
# join asks of the store (``SessionStore.join(transcript_tail=...)``)
KEPT_SEGMENTS = 2000


@dataclass(frozen=True)
class TranscriptSegment:
    """One final line of the conversation.

    ``seq`` orders the conversation from 1 (pagination cursor); ``id`` is the ``lk.segment_id``
    the frontend saw for agent lines, and the chat item id for participant turns.
    """

    seq: int
    id: str
    role: Literal["agent", "user"]
    speaker: str
    text: str
    at: float
    track_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the store's transcript entries and the RPC's segments)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TranscriptSegment:
        """Rebuild a segment kept with :meth:`to_dict`; raises ValueError on a malformed one."""
        try:
            role = data["role"]
            if role not in ("agent", "user"):
                raise ValueError(f"unknown role {role!r}")
            return cls(
                seq=int(data["seq"]),
                id=str(data["id"]),
                role=role,
                speaker=str(data["speaker"]),
                text=str(data["text"]),
                at=float(data["at"]),
                track_id=data.get("track_id"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a transcript segment: {exc}") from exc


class TranscriptLog:
    """The conversation's final segments in order, keeping the newest ``max_segments``."""

    def __init__(
        self, max_segments: int = KEPT_SEGMENTS, initial: Iterable[TranscriptSegment] = ()
    ) -> None:
        if max_segments < 1:
            raise ValueError("max_segments must be at least 1")
        self._segments: deque[TranscriptSegment] = deque(maxlen=max_segments)
        for segment in sorted(initial, key=lambda s: s.seq):
            self._segments.append(segment)
        last = self._segments[-1].seq if self._segments else 0
        self._seq = itertools.count(last + 1)

    def append(
        self,
        *,
        id: str,
        role: Literal["agent", "user"],
        speaker: str,
        text: str,
        track_id: str | None = None,
    ) -> TranscriptSegment:
        """Add a final segment at the end of the conversation and return it."""
        segment = TranscriptSegment(
            seq=next(self._seq),
            id=id,
            role=role,
            speaker=speaker,
            text=text,
            at=time.time(),
            track_id=track_id,
        )
        self._segments.append(segment)
        return segment

    def after(self, seq: int, limit: int) -> list[TranscriptSegment]:
        """Up to ``limit`` segments with a ``seq`` greater than ``seq``, oldest first."""
        found = []
        for segment in self._segments:
            if segment.seq > seq:
                found.append(segment)
                if len(found) == limit:
                    break
        return found

    @property
    def oldest_seq(self) -> int:
        """The first ``seq`` still kept (older segments were dropped), 0 when empty."""
        return self._segments[0].seq if self._segments else 0

    @property
    def latest_seq(self) -> int:
        """The last ``seq`` so far, 0 when empty."""
        return self._segments[-1].seq if self._segments else 0

    def __len__(self) -> int:
        return len(self._segments)

    def __iter__(self) -> Iterator[TranscriptSegment]:
        return iter(list(self._segments))
