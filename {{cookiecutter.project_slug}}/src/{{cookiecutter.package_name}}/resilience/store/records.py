"""The session record: its schema, its stored form, validation and (de)serialisation.

Both stores keep a record in the same stored form, the one that maps onto Redis:

* ``fields``: a flat map of short names to bytes. Bookkeeping (timestamps in integer
  milliseconds, counters, the active session id) is plaintext so Redis scripts can update it;
  what a participant said or is (``who``, ``lang``, ``meta``, ``gem``) is a JSON blob, sealed
  when a key ring is configured.
* ``items`` / ``transcript``: ordered lists of JSON blobs, one per conversation item or
  transcript segment, so an append writes only the new ones.

Item ids are kept in plaintext (they are opaque ids like ``item_3f2a``) because deduplication
runs inside Redis.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...log import identity_ref
from .base import CorruptRecordError, DecryptionError, InvalidInputError, MissingKeyError
from .crypto import MAGIC, KeyRing, associated_data, sealed_key_id

__all__ = [
    "SCHEMA_VERSION",
    "GeminiHandle",
    "RecordCodec",
    "SessionRecord",
    "StorageLimits",
    "identity_hash",
    "participant_hash",
    "unframe",
]

SCHEMA_VERSION = 1

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


@dataclass(frozen=True, slots=True)
class GeminiHandle:
    """A Gemini Live resumption handle, the conversation item ids the server holds, and when."""

    handle: str
    covered_item_ids: tuple[str, ...]
    issued_at: float


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One participant's session in one room, as the store last saw it.

    Timestamps are epoch seconds from the store's clock. ``active_session`` is the session id
    of the last join that has not left yet (None after leave).
    """

    room: str
    identity: str
    schema_version: int
    joined_at: float
    last_seen: float
    reconnect_count: int
    active_session: str | None
    left_at: float | None = None
    language: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    items: tuple[dict[str, Any], ...] = ()
    transcript: tuple[dict[str, Any], ...] = ()
    gemini: GeminiHandle | None = None
    items_trimmed: int = 0
    transcript_trimmed: int = 0

    @classmethod
    def blank(cls, room: str, identity: str) -> SessionRecord:
        """A participant's record before anything is known of them."""
        now = time.time()
        return cls(room, identity, SCHEMA_VERSION, now, now, 0, None)

    @property
    def item_ids(self) -> list[str]:
        """Conversation item ids in order."""
        return [item["id"] for item in self.items]


@functools.lru_cache(maxsize=4096)  # every operation needs it several times
def participant_hash(room: str, identity: str) -> str:
    """128-bit key for (room, identity); length prefixes make every pair distinct.

    Unkeyed on purpose, unlike ``identity_hash``: it names the Redis keys a record lives
    under, so it must not change when a deployment's secrets do, or every stored record and
    quarantined copy would become unreachable. It is not shown in logs or events.
    """
    data = b"lk-session"
    for part in (room.encode(), identity.encode()):
        data += len(part).to_bytes(8, "big") + part
    return hashlib.sha256(data).hexdigest()[:32]


def identity_hash(identity: str) -> str:
    """A participant in logs and events: ``log.identity_ref``, the one keyed identity hash."""
    return identity_ref(identity)


def ms(seconds: float) -> int:
    return int(round(seconds * 1000))


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


@dataclass(frozen=True, slots=True)
class StorageLimits:
    """How much one participant may store, so no participant can fill a shared store.

    - An entry (conversation item or transcript segment) over ``max_entry_bytes`` of JSON keeps
      the start of its longest texts, each cut one ending in ``TRIMMED_MARK`` and the entry
      marked ``"trimmed_bytes": n``.
    - Each list (items, transcript) keeps at most ``max_entries`` entries and
      ``max_list_bytes`` bytes as stored: beyond that its oldest entries are dropped and
      counted in the record (``items_trimmed`` / ``transcript_trimmed``); the newest entry is
      always kept.
    """

    max_entry_bytes: int = 64 * 1024
    max_entries: int = 5000
    max_list_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.max_entry_bytes, self.max_entries, self.max_list_bytes) < 1:
            raise InvalidInputError("storage limits must be positive")
        if self.max_entry_bytes < 1024:
            raise InvalidInputError("max_entry_bytes must be at least 1024")


TRIMMED_MARK = " [trimmed]"


def validate_entries(
    entries: Iterable[Mapping[str, Any]], what: str, max_bytes: int = 64 * 1024
) -> list[tuple[str, bytes, dict[str, Any]]]:
    """Check items/segments and return (id, json bytes, copy) for each, in order.

    An entry over ``max_bytes`` is trimmed (see StorageLimits).
    """
    out: list[tuple[str, bytes, dict[str, Any]]] = []
    for index, entry in enumerate(entries):
        label = f"{what}[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidInputError(f"{label} must be a dict, not {type(entry).__name__}")
        entry_id = entry.get("id")
        if not isinstance(entry_id, str) or not entry_id:
            raise InvalidInputError(f"{label} needs a non-empty string 'id'")
        raw = encode_entry(dict(entry), label)
        if len(raw) > max_bytes:
            raw = _trim_entry(orjson.loads(raw), len(raw), max_bytes, label)
        out.append((entry_id, raw, orjson.loads(raw)))
    return out


def _trim_entry(entry: dict[str, Any], size: int, max_bytes: int, label: str) -> bytes:
    """Cut the entry's longest strings (top level and in lists) until its JSON fits."""
    slots: list[tuple[int, list[Any] | dict[str, Any], Any]] = []
    for key, value in entry.items():
        if isinstance(value, str) and key != "id":
            slots.append((len(value), entry, key))
        elif isinstance(value, list):
            slots += [(len(v), value, i) for i, v in enumerate(value) if isinstance(v, str)]
    slots.sort(key=lambda slot: slot[0], reverse=True)
    excess = size - max_bytes + 64  # room for the marks and the trimmed_bytes field
    for length, holder, key in slots:
        if excess <= 0:
            break
        text: str = holder[key]  # type: ignore[index]
        keep = max(0, length - excess - len(TRIMMED_MARK))
        holder[key] = text[:keep] + TRIMMED_MARK  # type: ignore[index]
        excess -= len(text[keep:].encode()) - len(TRIMMED_MARK)
    entry["trimmed_bytes"] = size - max_bytes
    raw = orjson.dumps(entry)
    if len(raw) > max_bytes:
        raise InvalidInputError(f"{label} is over {max_bytes} bytes even with its texts trimmed")
    return raw


def validate_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata is a JSON object; return a private copy."""
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a dict, not {type(metadata).__name__}")
    return json.loads(encode_json(dict(metadata), "metadata"))


def validate_names(room: str, identity: str) -> None:
    """Room and identity may hold any characters (even none) but must be valid Unicode."""
    for name, value in (("room", room), ("identity", identity)):
        if not isinstance(value, str):
            raise InvalidInputError(f"{name} must be a str, not {type(value).__name__}")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidInputError(f"{name} is not valid Unicode (lone surrogate)") from None


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
        # bound to the key hash (not room/identity) so list_records can open it unaided
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

    def _gemini(self, room: str, identity: str, blob: bytes, issued_ms: int) -> GeminiHandle:
        value = self.open(room, identity, F_GEMINI.encode(), blob)
        if not isinstance(value, dict) or not isinstance(value.get("handle"), str):
            raise CorruptRecordError("gem: no handle")
        covered = value.get("covered", [])
        if not isinstance(covered, list) or not all(isinstance(i, str) for i in covered):
            raise CorruptRecordError("gem: covered ids are not strings")
        return GeminiHandle(value["handle"], tuple(covered), issued_ms / 1000)


class Framed(Sequence[bytes]):
    """Blobs Redis returned as one JSON array text ``[b1,b2,...]`` plus their lengths.

    Plaintext entries are read with one orjson call on the whole array; the lengths (split
    only when needed: sealed blobs, a bad entry, or a cached copy being appended to) give the
    blobs one by one. See redis_scripts.frame.
    """

    __slots__ = ("array", "lengths", "_count", "_blobs")

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
    """Fields, items and transcript from a script's record reply (see redis_scripts)."""
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


def profile_updates(
    codec: RecordCodec,
    room: str,
    identity: str,
    language: str | None,
    metadata: Mapping[str, Any] | None,
) -> dict[str, bytes]:
    """Sealed fields for update_profile (only those given)."""
    validate_names(room, identity)
    updates: dict[str, bytes] = {}
    if language is not None:
        if not isinstance(language, str):
            raise InvalidInputError("language must be a str such as 'en-US'")
        updates[F_LANG] = codec.seal_value(room, identity, F_LANG, language)
    if metadata is not None:
        updates[F_META] = codec.seal_value(room, identity, F_META, validate_metadata(metadata))
    return updates


def gemini_input(handle: str, covered_item_ids: Sequence[str]) -> dict[str, Any]:
    """Validate a Gemini handle and covered ids; return the value to seal."""
    if not isinstance(handle, str) or not handle:
        raise InvalidInputError("the Gemini resumption handle must be a non-empty str")
    covered = list(covered_item_ids)
    if not all(isinstance(i, str) for i in covered):
        raise InvalidInputError("covered_item_ids must be strings")
    return {"handle": handle, "covered": covered}


def check_session_id(session_id: str) -> None:
    """Session ids are the non-empty strings the worker makes up per AgentSession."""
    if not isinstance(session_id, str) or not session_id:
        raise InvalidInputError("session_id must be a non-empty str")


def make_event(
    event_type: str, room: str, identity: str, at: float, **fields: Any
) -> dict[str, Any]:
    """An operator event; carries the identity's hash, never the identity."""
    event = {"type": event_type, "room": room, "participant": identity_hash(identity), "at": at}
    event.update(fields)
    json.dumps(event)  # refuse non-JSON fields here rather than in a subscriber
    return event
