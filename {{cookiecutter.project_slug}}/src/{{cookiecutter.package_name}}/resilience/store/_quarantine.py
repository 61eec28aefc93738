"""Quarantine: where a record proven unreadable goes instead of being deleted.

A record that is corrupt (altered under a key this worker holds, malformed, unsealed in an
encrypted store, of an unknown schema) is moved aside and the participant starts fresh. A
record sealed under a key the worker lacks is NOT corrupt and is never moved (MissingKeyError).

A quarantined record is kept ``quarantine_ttl`` seconds (SESSION_QUARANTINE_S, by default the
retention), with a note: the reason, the participant's identity hash (as in logs), a hash of
the room and the time. Operators list it (`sessions quarantine`), move it back (`sessions
restore KEY`) or delete it with the participant's or room's sessions (`sessions purge`).
In Redis it lives under ``{prefix:<participant hash>}:q<stamp>:rec|items|seg|ids|why``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._keys import participant_hash

__all__ = ["QuarantineNote", "QuarantineShelf", "QuarantinedRecord"]


@dataclass(frozen=True, slots=True)
class QuarantineNote:
    """What is kept with a quarantined record besides its data."""

    reason: str
    participant: str  # log.identity_ref of the identity ("?" when unknown)
    room_hash: str  # "" when unknown
    at: float

    def to_json(self) -> str:
        return json.dumps(
            {"reason": self.reason, "participant": self.participant, "room": self.room_hash,
             "at": round(self.at, 3)}
        )  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes | str) -> QuarantineNote:
        """Read a note; an older plain-text note is just its reason."""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            return cls(text, "?", "", 0.0)
        return cls(
            str(value.get("reason", "")),
            str(value.get("participant", "?")),
            str(value.get("room", "")),
            float(value.get("at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """A quarantined record as an operator sees it (`sessions quarantine`)."""

    key: str  # what `sessions restore` takes
    room: str | None  # None when the record cannot say (unreadable, or an older note)
    participant: str  # the identity hash logs and events use
    reason: str
    quarantined_at: float | None
    expires_at: float | None


@dataclass
class _Shelved:
    room: str
    identity: str
    note: QuarantineNote
    data: Any
    expires_at: float  # on the shelf's monotonic clock


class QuarantineShelf:
    """The memory store's quarantine: bounded (oldest dropped first) and expiring.

    ``clock`` / ``monotonic``: the store's wall and monotonic clocks (listing times are wall
    clock, expiry is monotonic)."""

    def __init__(
        self,
        ttl: float,
        max_records: int = 1000,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_records = max_records
        self._clock = clock
        self._monotonic = monotonic
        self._shelf: OrderedDict[str, _Shelved] = OrderedDict()

    def put(self, room: str, identity: str, note: QuarantineNote, data: Any) -> str:
        """Keep ``data`` aside; returns its quarantine key."""
        key = f"{participant_hash(room, identity)}:q{uuid.uuid4().hex[:12]}"
        self._shelf[key] = _Shelved(room, identity, note, data, self._monotonic() + self.ttl)
        while len(self._shelf) > self.max_records:
            self._shelf.popitem(last=False)
        return key

    def listing(self, room: str | None = None) -> list[QuarantinedRecord]:
        """Every quarantined record (of one room), oldest first."""
        self.sweep()
        now, mono = self._clock(), self._monotonic()
        return [
            QuarantinedRecord(
                key,
                kept.room,
                kept.note.participant,
                kept.note.reason,
                kept.note.at,
                now + kept.expires_at - mono,
            )
            for key, kept in self._shelf.items()
            if room is None or kept.room == room
        ]

    def purge(self, room: str, identity: str | None = None) -> int:
        """Delete the quarantined copies of one participant, or of a whole room."""
        doomed = [
            key
            for key, kept in self._shelf.items()
            if kept.room == room and identity in (None, kept.identity)
        ]
        for key in doomed:
            del self._shelf[key]
        return len(doomed)

    def sweep(self) -> None:
        """Forget what has expired."""
        mono = self._monotonic()
        for key in [k for k, kept in self._shelf.items() if kept.expires_at <= mono]:
            del self._shelf[key]
