"""The stored form of a record, and the codec between it and ``SessionRecord``.

Every store keeps a record in the same stored form, the one that maps onto Redis:

* ``fields``: a flat map of short names to bytes. Bookkeeping (timestamps in integer
  milliseconds, counters, the active session id) is plaintext so Redis scripts can update it;
  what a participant said or is (``who``, ``lang``, ``meta``, ``gem``) is a JSON blob, sealed
  when a key ring is configured (_crypto.py).
* ``items`` / ``transcript``: ordered lists of JSON blobs, one per conversation item or
  transcript segment, so an append writes only the new ones.

Item ids are kept in plaintext (they are opaque ids like ``item_3f2a``) because deduplication
runs inside Redis. This is the one JSON codec of the store: ``encode_json`` for fields,
``encode_entry`` (orjson, which also reads them back) for entries; both refuse what would not
come back equal.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from ._crypto import MAGIC, KeyRing, associated_data, sealed_key_id
from ._keys import participant_hash
from .base import (
    SCHEMA_VERSION,
    CorruptRecordError,
    DecryptionError,
    GeminiHandle,
    InvalidInputError,
    MissingKeyError,
    SessionRecord,
)

__all__ = ["Framed", "RecordCodec", "WhoCache", "encode_entry", "encode_json", "ms", "unframe"]

# stored field names (short: they are repeated in every Redis hash)
F_VERSION = "v"
F_JOINED = "joined"
F_SEEN = "seen"
F_RECONNECTS = "reconnects"
F_ACTIVE = "active"
F_LEFT = "left"
F_REV = "rev"
F_WHO = "who"
F_LANG = "lang"
F_META = "meta"
F_GEMINI = "gem"
F_GEMINI_AT = "gem_at"
# stored bytes and entries trimmed so far, per list (see StorageLimits)
F_ITEM_BYTES = "ib"
F_SEGMENT_BYTES = "sb"
F_ITEMS_TRIMMED = "it"
F_SEGMENTS_TRIMMED = "st"

# the field tag each blob is sealed under (part of the associated data)
TAG_ITEM = b"item"
TAG_SEGMENT = b"seg"


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def encode_json(value: Any, what: str) -> bytes:
    """Serialise JSON data, refusing anything that would not come back equal."""
    try:
        raw = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        same = json.loads(raw) == value
        data = raw.encode()  # lone surrogates fail here
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{what} is not JSON data: {exc}") from None
    if not same:
        raise InvalidInputError(
            f"{what} does not survive JSON (use dict/list/str/int/float/bool/None, "
            "string keys, no tuples)"
        )
    return data


def encode_entry(value: Any, what: str) -> bytes:
    """Serialise an item or segment with orjson, which also reads them back on restore.

    orjson refuses what it could not read back unchanged (integers beyond 64 bits, non-str
    keys, lone surrogates), so an entry that is stored is one a restore returns equal.
    """
    try:
        data = orjson.dumps(value)
        same = orjson.loads(data) == value
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{what} is not JSON data: {exc}") from None
    if not same:
        raise InvalidInputError(
            f"{what} does not survive JSON (use dict/list/str/int/float/bool/None, "
            "string keys, no tuples, no NaN)"
        )
    return data


class RecordCodec:
    """Turns values into stored blobs and stored forms back into records (sealing if keyed)."""

    def __init__(self, keyring: KeyRing | None = None) -> None:
        self.keyring = keyring

    def seal(self, room: str, identity: str, tag: bytes, raw_json: bytes) -> bytes:
        if self.keyring is None:
            return raw_json
        return self.keyring.seal(raw_json, associated_data(room, identity, tag))

    def seal_value(self, room: str, identity: str, tag: str, value: Any) -> bytes:
        return self.seal(room, identity, tag.encode(), encode_json(value, tag))

    def seal_who(self, key_hash: str, room: str, identity: str) -> bytes:
        # bound to the key hash (not room/identity) so an operator listing can open it unaided
        raw = encode_json({"room": room, "identity": identity}, "who")
        if self.keyring is None:
            return raw
        return self.keyring.seal(raw, associated_data("", key_hash, F_WHO.encode()))

    def open(
        self, room: str, identity: str, tag: bytes, blob: bytes, loads: Any = json.loads
    ) -> Any:
        """Decode a blob.

        MissingKeyError: sealed under a key id this worker lacks (or with no key ring at all);
        not corruption, so callers leave the record alone. CorruptRecordError, with the
        reason: proven bad (altered, moved, malformed, not JSON), or unsealed while a key
        ring is configured, which only tampering produces (this worker seals every blob).
        """
        what = tag.decode()
        if blob.startswith(MAGIC):
            try:
                if self.keyring is None:
                    raise MissingKeyError(sealed_key_id(blob), ring_configured=False)
                blob = self.keyring.open(blob, associated_data(room, identity, tag))
            except DecryptionError as exc:
                raise CorruptRecordError(f"{what}: {exc}") from None
        elif self.keyring is not None:
            raise CorruptRecordError(
                f"{what}: unsealed data in an encrypted store (tampering, or written before "
                "SESSION_ENCRYPTION_KEYS was set)"
            )
        try:
            return loads(blob)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f"{what}: not valid JSON ({exc})") from None

    def open_who(self, key_hash: str, blob: bytes) -> tuple[str, str]:
        """Room and identity of a stored record, checked against the key it was found under."""
        who = self.open("", key_hash, F_WHO.encode(), blob)
        if not isinstance(who, dict):
            raise CorruptRecordError("who: not an object")
        room, identity = who.get("room"), who.get("identity")
        if not isinstance(room, str) or not isinstance(identity, str):
            raise CorruptRecordError("who: room/identity missing")
        if participant_hash(room, identity) != key_hash:
            raise CorruptRecordError("who: names another participant than its key")
        return room, identity

    def decode(
        self,
        room: str,
        identity: str,
        fields: Mapping[str, bytes],
        items: Sequence[bytes],
        transcript: Sequence[bytes],
        own_who: bytes | None = None,
    ) -> SessionRecord:
        """Build a record from its stored form; raise CorruptRecordError if any part is bad.

        ``own_who``: the ``who`` blob this worker sealed for (room, identity); a record holding
        exactly it is known to be theirs without opening it.
        """
        version = _int_field(fields, F_VERSION)
        if not 1 <= version <= SCHEMA_VERSION:
            raise CorruptRecordError(
                f"unknown schema version {version} (this worker reads 1..{SCHEMA_VERSION})"
            )
        key_hash = participant_hash(room, identity)
        who_blob = fields.get(F_WHO)
        if (
            who_blob is not None
            and who_blob != own_who
            and self.open_who(key_hash, who_blob) != (room, identity)
        ):
            raise CorruptRecordError("who: names another participant")
        decoded_items = tuple(self._entries(room, identity, TAG_ITEM, items))
        decoded_segments = tuple(self._entries(room, identity, TAG_SEGMENT, transcript))
        metadata, language = self._profile(room, identity, fields)
        gemini = None
        if (blob := fields.get(F_GEMINI)) is not None:
            gemini = self._gemini(room, identity, blob, _int_field(fields, F_GEMINI_AT))
        active = fields.get(F_ACTIVE) or b""
        left = fields.get(F_LEFT) or b""
        return SessionRecord(
            room=room,
            identity=identity,
            schema_version=version,
            joined_at=_int_field(fields, F_JOINED) / 1000,
            last_seen=_int_field(fields, F_SEEN) / 1000,
            reconnect_count=_int_field(fields, F_RECONNECTS),
            active_session=active.decode() if active else None,
            left_at=_int_field(fields, F_LEFT) / 1000 if left else None,
            language=language,
            metadata=metadata,
            items=decoded_items,
            transcript=decoded_segments,
            gemini=gemini,
            items_trimmed=_int_field(fields, F_ITEMS_TRIMMED),
            transcript_trimmed=_int_field(fields, F_SEGMENTS_TRIMMED),
        )

    def encode(self, record: SessionRecord) -> tuple[dict[str, bytes], list[bytes], list[bytes]]:
        """The stored form of a record (used to keep a copy of a record read elsewhere)."""
        room, identity = record.room, record.identity
        fields = {
            F_VERSION: str(SCHEMA_VERSION).encode(),
            F_JOINED: str(ms(record.joined_at)).encode(),
            F_SEEN: str(ms(record.last_seen)).encode(),
            F_RECONNECTS: str(record.reconnect_count).encode(),
            F_ACTIVE: (record.active_session or "").encode(),
            F_REV: b"1",
            F_WHO: self.seal_who(participant_hash(room, identity), room, identity),
            F_META: self.seal_value(room, identity, F_META, record.metadata),
        }
        if record.left_at is not None:
            fields[F_LEFT] = str(ms(record.left_at)).encode()
        if record.language is not None:
            fields[F_LANG] = self.seal_value(room, identity, F_LANG, record.language)
        if record.gemini is not None:
            fields[F_GEMINI] = self.seal_value(
                room, identity, F_GEMINI, gemini_value(record.gemini)
            )
            fields[F_GEMINI_AT] = str(ms(record.gemini.issued_at)).encode()
        items = [self.seal(room, identity, TAG_ITEM, encode_entry(i, "item")) for i in record.items]
        segments = [
            self.seal(room, identity, TAG_SEGMENT, encode_entry(s, "segment"))
            for s in record.transcript
        ]
        return fields, items, segments

    def _entries(
        self, room: str, identity: str, tag: bytes, blobs: Sequence[bytes]
    ) -> Iterable[dict[str, Any]]:
        # with a key ring every entry must be sealed: no plaintext fast path to slip through
        if self.keyring is None and isinstance(blobs, Framed):
            fast = blobs.parse_plain()
            if fast is not None:
                return fast
        return self._each_entry(room, identity, tag, blobs)

    def _each_entry(
        self, room: str, identity: str, tag: bytes, blobs: Sequence[bytes]
    ) -> Iterable[dict[str, Any]]:
        for blob in blobs:
            entry = self.open(room, identity, tag, blob, orjson.loads)
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise CorruptRecordError(f"{tag.decode()}: entry without an id")
            yield entry

    def _profile(
        self, room: str, identity: str, fields: Mapping[str, bytes]
    ) -> tuple[dict[str, Any], str | None]:
        metadata: dict[str, Any] = {}
        if (blob := fields.get(F_META)) is not None:
            metadata = self.open(room, identity, F_META.encode(), blob)
            if not isinstance(metadata, dict):
                raise CorruptRecordError("meta: not an object")
        language = None
        if (blob := fields.get(F_LANG)) is not None:
            language = self.open(room, identity, F_LANG.encode(), blob)
            if language is not None and not isinstance(language, str):
                raise CorruptRecordError("lang: not a string")
        return metadata, language

    def _gemini(self, room: str, identity: str, blob: bytes, issued_ms: int) -> GeminiHandle:
        value = self.open(room, identity, F_GEMINI.encode(), blob)
        if not isinstance(value, dict) or not isinstance(value.get("handle"), str):
            raise CorruptRecordError("gem: no handle")
        covered = value.get("covered", [])
        if not isinstance(covered, list) or not all(isinstance(i, str) for i in covered):
            raise CorruptRecordError("gem: covered ids are not strings")
        return GeminiHandle(value["handle"], tuple(covered), issued_ms / 1000)


class WhoCache:
    """A participant's sealed ``who`` field, sealed once: every write carries it, and a record
    whose who field holds exactly these bytes needs no decryption to prove whose it is."""

    def __init__(self, codec: RecordCodec, size: int = 4096) -> None:
        self._codec = codec
        self._size = size
        self._sealed: dict[tuple[str, str], bytes] = {}

    def __call__(self, room: str, identity: str) -> bytes:
        key = (room, identity)
        who = self._sealed.get(key)
        if who is None:
            if len(self._sealed) >= self._size:
                self._sealed.clear()
            who = self._codec.seal_who(participant_hash(room, identity), room, identity)
            self._sealed[key] = who
        return who


class Framed(Sequence[bytes]):
    """Blobs Redis returned as one JSON array text ``[b1,b2,...]`` plus their lengths.

    Plaintext entries are read with one orjson call on the whole array; the lengths (split
    only when needed: sealed blobs, a bad entry, or a cached copy being appended to) give the
    blobs one by one. See ``frame`` in _scripts.py.
    """

    __slots__ = ("_blobs", "_count", "array", "lengths")

    def __init__(self, array: bytes, lengths: bytes) -> None:
        self.array = array
        self.lengths = lengths
        self._count = lengths.count(b",") + 1 if lengths else 0
        self._blobs: list[bytes] | None = None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        return self.blobs()[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.blobs())

    def blobs(self) -> list[bytes]:
        """The blobs one by one (split once, on first use)."""
        if self._blobs is None:
            sizes = [int(size) + 1 for size in self.lengths.split(b",")] if self.lengths else []
            ends = itertools.accumulate(sizes, initial=1)  # 1: after the opening '['
            array = self.array
            self._blobs = [
                array[end : end + size - 1] for size, end in zip(sizes, ends, strict=False)
            ]  # ends has one more
        return self._blobs

    def parse_plain(self) -> list[dict[str, Any]] | None:
        """Every entry in one orjson call when all blobs are plaintext entries; else None."""
        try:
            # sealed blobs start with a NUL byte, which no JSON text holds: they fail here
            entries = orjson.loads(self.array)
        except orjson.JSONDecodeError:
            return None
        # a blob holding '{..},{..}' would add entries: the count catches it
        if type(entries) is not list or len(entries) != self._count:
            return None
        for entry in entries:
            if type(entry) is not dict or type(entry.get("id")) is not str:
                return None
        return entries


def unframe(reply: Sequence[Any]) -> tuple[dict[str, bytes], Framed, Framed]:
    """Fields, items and transcript from a script's record reply (see _scripts.py)."""
    flat = reply[1]
    fields = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
    return fields, Framed(reply[2], reply[3]), Framed(reply[4], reply[5])


def gemini_value(gemini: GeminiHandle) -> dict[str, Any]:
    """The sealed part of a Gemini handle (its issue time is kept by the store clock)."""
    return {"handle": gemini.handle, "covered": list(gemini.covered_item_ids)}


def _int_field(fields: Mapping[str, bytes], name: str) -> int:
    raw = fields.get(name)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        raise CorruptRecordError(f"{name}: not an integer") from None
