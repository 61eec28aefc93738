"""A memory store's record: the stored form of _codec.py held as Python objects."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._codec import F_VERSION, RecordCodec
from ._validate import Entry
from .base import SCHEMA_VERSION, SessionRecord, StorageLimits

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
