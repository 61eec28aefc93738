"""A memory store's record: the stored form of _codec.py held as Python objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from ._codec import (
    F_ITEM_BYTES,
    F_ITEMS_TRIMMED,
    F_JOINED,
    F_LEFT,
    F_RECONNECTS,
    F_SEGMENTS_TRIMMED,
    F_VERSION,
    TAG_ITEM,
    RecordCodec,
)
from ._validate import Entry
from .base import SCHEMA_VERSION, LeaveInfo, SessionRecord, StorageLimits

__all__ = ["MemoryEntry"]


@dataclass
class MemoryEntry:
    """One record: its fields, its two lists of sealed blobs, and the entry ids seen."""

    fields: dict[str, bytes]
    items: list[bytes] = field(default_factory=list)
    transcript: list[bytes] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    expires_at: float = 0.0  # on the store's monotonic clock
    # a record kept by put_stored: its ids and plain lists are built on the first append
    seed: SessionRecord | None = None

    def mutable(self) -> MemoryEntry:
        """Make items/transcript plain lists and fill ids (deferred by put_stored)."""
        if self.seed is not None:
            self.items, self.transcript = list(self.items), list(self.transcript)
            self.ids = {"item:" + i["id"] for i in self.seed.items}
            self.ids.update("seg:" + s["id"] for s in self.seed.transcript)
            self.seed = None
        return self

    def add_older_lines(self, stored: Sequence[bytes]) -> bool:
        """Put the lines of a whole transcript (``stored``, as Redis holds it) that come
        before the ones kept here (the newest, read by a join) first; False when they do not
        line up (the record changed since): then nothing changes."""
        if not self.transcript or len(stored) <= len(self.transcript):
            return False
        try:
            at = list(stored).index(self.transcript[0])
        except ValueError:
            return False
        self.mutable()
        self.transcript[:0] = stored[:at]  # their ids stay unknown here: no one re-sends them
        return True

    def version_ok(self) -> bool:
        """Whether this worker reads the record's schema version."""
        return self.fields.get(F_VERSION, b"") == str(SCHEMA_VERSION).encode()

    def extend(
        self, sealed: tuple[RecordCodec, str, str], new: list[Entry], tag: bytes,
        target: list[bytes], counters: tuple[str, str], limits: StorageLimits,
    ) -> int:  # fmt: skip
        """Append to ``target`` (items or transcript) the entries not seen before, sealed by
        ``sealed`` (codec, room, identity), then drop the oldest beyond ``limits``, as the
        Redis APPEND script does; ``counters``: the list's (bytes, trimmed) fields. How many
        were added."""
        codec, room, identity = sealed
        bytes_field, trimmed_field = counters
        size, added = int(self.fields.get(bytes_field, b"0")), 0
        for entry_id, raw, _ in new:
            marker = f"{tag.decode()}:{entry_id}"
            if marker not in self.ids:
                self.ids.add(marker)
                target.append(codec.seal(room, identity, tag, raw))
                size, added = size + len(target[-1]), added + 1
        trimmed = 0
        while len(target) - trimmed > 1 and (
            len(target) - trimmed > limits.max_entries or size > limits.max_list_bytes
        ):
            size -= len(target[trimmed])
            trimmed += 1
        if trimmed:
            del target[:trimmed]
            done = int(self.fields.get(trimmed_field, b"0"))
            self.fields[trimmed_field] = str(done + trimmed).encode()
        self.fields[bytes_field] = str(size).encode()
        return added

    def compact(self, sealed: tuple[RecordCodec, str, str], through: str) -> int:
        """Drop the items from the oldest through the one with id ``through`` (ids stay seen;
        counted as trimmed, as the Redis APPEND script does); how many were dropped (0 when
        that item is not held)."""
        codec, room, identity = sealed
        for n in range(len(self.items) - 1, -1, -1):
            item = codec.open(room, identity, TAG_ITEM, self.items[n], orjson.loads)
            if isinstance(item, dict) and item.get("id") == through:
                break
        else:
            return 0
        size = int(self.fields.get(F_ITEM_BYTES, b"0")) - sum(map(len, self.items[: n + 1]))
        del self.items[: n + 1]
        self.fields[F_ITEM_BYTES] = str(size).encode()
        done = int(self.fields.get(F_ITEMS_TRIMMED, b"0"))
        self.fields[F_ITEMS_TRIMMED] = str(done + n + 1).encode()
        return n + 1

    def leave_info(self, key: tuple[str, str], now: int) -> LeaveInfo:
        """What the retention policy sees of the record (counts include trimmed entries)."""
        fields = self.fields
        return LeaveInfo(
            *key,
            item_count=len(self.items) + int(fields.get(F_ITEMS_TRIMMED, b"0")),
            transcript_count=len(self.transcript) + int(fields.get(F_SEGMENTS_TRIMMED, b"0")),
            reconnect_count=int(fields[F_RECONNECTS]),
            joined_at=int(fields[F_JOINED]) / 1000,
            left_at=int(fields.get(F_LEFT) or now) / 1000,
        )
