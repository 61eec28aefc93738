"""`sessions stats`: what the stored conversations add up to. Pure: it sums records an
admin listed (read-only) as of a given time.

- **Active per day**: a participant counts on each UTC day the store saw them: the day they
  joined, were last seen, left, and the days of their stored conversation items
  (``created_at``) and transcript lines (``at``). A record keeps no log of every visit, so a
  participant who came and went on a day with nothing stored that day is not counted there.
- **Returns**: of the participants active in the window, how many came back at least once
  (``reconnect_count`` > 0) and how many times in all (over each record's life).
- **Conversation length**: turns per participant, the messages stored plus the items
  trimmed away (StorageLimits): median, 90th percentile (nearest rank) and maximum.

A room's own record (its meeting transcript, identity ``"\\x00meeting"`` in
resilience/transcribers.py; no LiveKit identity holds a NUL) is no participant: it is counted
apart, as the meeting transcripts' rooms and lines.
"""

from __future__ import annotations

import datetime
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .base import SessionRecord

__all__ = ["SessionStats", "is_room_record", "session_stats", "turns"]

_DAY = datetime.timedelta(days=1)


def is_room_record(identity: str) -> bool:
    """Whether a record is a room's own (its meeting transcript), not a participant's."""
    return identity.startswith("\x00")


def turns(record: SessionRecord) -> int:
    """A conversation's length: its chat messages, stored or trimmed away."""
    stored = sum(1 for item in record.items if item.get("type", "message") == "message")
    return stored + record.items_trimmed


@dataclass(frozen=True, slots=True)
class SessionStats:
    """The figures of ``session_stats``; ``to_json()`` is the `--json` output."""

    room: str | None
    active_per_day: tuple[tuple[str, int], ...]  # (YYYY-MM-DD, participants), oldest first
    participants: int  # active in the window
    rooms: int  # they were in
    returned: int  # of them, came back at least once
    returns: int  # times they came back, in all
    turns_median: float
    turns_p90: int
    turns_max: int
    meeting_rooms: int  # rooms with a meeting transcript active in the window
    meeting_lines: int  # the lines those transcripts hold

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON data, grouped as the table shows them."""
        return {
            "room": self.room,
            "days": len(self.active_per_day),
            "active_per_day": dict(self.active_per_day),
            "participants": self.participants,
            "rooms": self.rooms,
            "returns": {"participants": self.returned, "times": self.returns},
            "turns": {
                "median": self.turns_median,
                "p90": self.turns_p90,
                "max": self.turns_max,
            },
            "meeting_transcripts": {"rooms": self.meeting_rooms, "lines": self.meeting_lines},
        }

    def rows(self) -> list[tuple[str, str]]:
        """(measure, value) rows for a table."""
        median = f"{self.turns_median:g}"
        return [
            *((f"active on {day}", str(n)) for day, n in self.active_per_day),
            ("participants", f"{self.participants} in {self.rooms} room(s)"),
            ("came back", f"{self.returned} participant(s), {self.returns} time(s)"),
            ("turns median / p90 / max", f"{median} / {self.turns_p90} / {self.turns_max}"),
            ("meeting transcripts", f"{self.meeting_rooms} room(s), {self.meeting_lines} lines"),
        ]


def session_stats(
    records: Iterable[SessionRecord], *, now: float, days: int, room: str | None = None
) -> SessionStats:
    """Sum up the records active in the ``days`` UTC days that end with ``now``'s."""
    if days < 1:
        raise ValueError("days must be at least 1")
    today = _day(now)
    assert today is not None
    window = [today - _DAY * back for back in range(days - 1, -1, -1)]
    first = window[0]
    per_day = dict.fromkeys(window, 0)
    people: list[SessionRecord] = []
    meetings: list[SessionRecord] = []
    for record in records:
        seen = {day for day in active_days(record) if first <= day <= today}
        if not seen or (room is not None and record.room != room):
            continue
        if is_room_record(record.identity):
            meetings.append(record)
            continue
        people.append(record)
        for day in seen:
            per_day[day] += 1
    lengths = sorted(turns(r) for r in people)
    return SessionStats(
        room=room,
        active_per_day=tuple((day.isoformat(), n) for day, n in per_day.items()),
        participants=len(people),
        rooms=len({r.room for r in people}),
        returned=sum(1 for r in people if r.reconnect_count > 0),
        returns=sum(r.reconnect_count for r in people),
        turns_median=statistics.median(lengths) if lengths else 0,
        turns_p90=lengths[math.ceil(0.9 * len(lengths)) - 1] if lengths else 0,
        turns_max=lengths[-1] if lengths else 0,
        meeting_rooms=len({r.room for r in meetings}),
        meeting_lines=sum(len(r.transcript) + r.transcript_trimmed for r in meetings),
    )


def active_days(record: SessionRecord) -> set[datetime.date]:
    """The UTC days the store saw a record's participant (see the module docstring)."""
    stamps: list[Any] = [record.joined_at, record.last_seen, record.left_at]
    stamps += [item.get("created_at") for item in record.items]
    stamps += [segment.get("at") for segment in record.transcript]
    return {day for stamp in stamps if (day := _day(stamp)) is not None}


def _day(stamp: Any) -> datetime.date | None:
    """The UTC day of epoch seconds; None for what is not a usable time."""
    if type(stamp) not in (int, float) or not 0 < stamp < 1e11:  # not NaN, not year 5000
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).date()
