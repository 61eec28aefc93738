"""Moving a conversation between deployments or stores: one record as a versioned JSON
document, and back into a store's stored form. Pure: no I/O (the admins read and write).

`sessions export` writes ``export_document(...)``; `sessions import` turns a file into the
target's stored form with ``import_document(...)`` and hands it to the target admin's ``put``,
one atomic write. The document::

    {"format": "livekit-agent-session", "version": 1, "exported_at": <epoch s>,
     "sealed": false, "room": "...", "identity": "...",
     "record": {"schema_version": 1, "joined_at": ..., "last_seen": ..., "left_at": ...,
                "reconnect_count": 2, "items_trimmed": 0, "transcript_trimmed": 0,
                "language": "en" | null, "metadata": {...}, "items": [...], "transcript": [...]}}

Sealing: a store that seals its records (SESSION_ENCRYPTION_KEYS) exports them sealed, as
stored: ``"sealed": true``, the key ids the blobs name (``key_ids``), no readable room or
identity (``participant``, the record's key hash, and ``who``, its sealed owner) and every
profile value and entry as the base64 of its sealed blob. ``decrypt=True`` (``--decrypt``)
writes them readable instead. An import always re-seals under the target's current key (or
stores plaintext in a store that does not seal): it opens a sealed file with the target's
keys, so they must hold every key id the file names (``MissingKeyError`` names the one
missing). Sealed blobs are bound to their room and identity (_crypto.py), which is also why a
renamed import (``--room`` / ``--identity``) must open them.

Never exported: the Gemini resumption handle (bound to the old deployment's model sessions)
and the active session id (the worker holding it is not the target's). An imported record is
a conversation whose participant has left, so their next join there is a welcome back.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import orjson

from ._codec import (
    F_ITEM_BYTES,
    F_ITEMS_TRIMMED,
    F_LANG,
    F_META,
    F_SEGMENT_BYTES,
    F_SEGMENTS_TRIMMED,
    F_WHO,
    TAG_ITEM,
    TAG_SEGMENT,
    RecordCodec,
    encode_entry,
)
from ._crypto import KeyRing, sealed_key_id
from ._keys import participant_hash
from ._validate import validate_names
from .admin import StoredRecord
from .base import (
    SCHEMA_VERSION,
    CorruptRecordError,
    InvalidInputError,
    MissingKeyError,
    SessionRecord,
    StorageLimits,
)
from .retention import record_engagement

__all__ = [
    "FORMAT",
    "VERSION",
    "ImportKeyError",
    "Imported",
    "export_document",
    "import_document",
]

FORMAT = "livekit-agent-session"
VERSION = 1  # of the document; a newer one is refused (what it adds could be lost)


class ImportKeyError(MissingKeyError):
    """A sealed export names a key id (``key_id``) the target's key ring lacks."""

    def __init__(self, key_id: str, *, ring_configured: bool) -> None:
        super().__init__(key_id, ring_configured=ring_configured)
        lacking = "lacks it" if ring_configured else "is not set"
        self.args = (
            f"the file is sealed under key id {key_id!r} and this store's "
            f"SESSION_ENCRYPTION_KEYS {lacking}: add that key (a second, decrypt-only entry is "
            "enough) or export with --decrypt (nothing was written)",
        )


def export_document(
    record: SessionRecord, stored: StoredRecord, *, sealed: bool, exported_at: float
) -> dict[str, Any]:
    """The document for a record read from a store (``sealed``: keep its sealed blobs)."""
    numbers = {
        "schema_version": record.schema_version,
        "joined_at": record.joined_at,
        "last_seen": record.last_seen,
        "left_at": record.left_at,
        "reconnect_count": record.reconnect_count,
        "items_trimmed": record.items_trimmed,
        "transcript_trimmed": record.transcript_trimmed,
    }
    head: dict[str, Any] = {"format": FORMAT, "version": VERSION, "exported_at": exported_at}
    body: dict[str, Any]
    if not sealed:
        body = {
            "language": record.language,
            "metadata": record.metadata,
            "items": list(record.items),
            "transcript": list(record.transcript),
        }
        names = {"room": record.room, "identity": record.identity}
        return head | {"sealed": False} | names | {"record": numbers | body}
    fields = stored.fields
    if F_WHO not in fields:
        raise CorruptRecordError("who: missing")
    blobs = [fields[F_WHO], *(b for _, b in stored.items), *(b for _, b in stored.transcript)]
    blobs += [fields[name] for name in (F_LANG, F_META) if name in fields]
    body = {
        "language": _b64(fields.get(F_LANG)),
        "metadata": _b64(fields.get(F_META)),
        "items": [_b64(blob) for _, blob in stored.items],
        "transcript": [_b64(blob) for _, blob in stored.transcript],
    }
    return head | {
        "sealed": True,
        "key_ids": sorted({sealed_key_id(blob) for blob in blobs}),
        "participant": participant_hash(record.room, record.identity),
        "who": _b64(fields[F_WHO]),
        "record": numbers | body,
    }


@dataclasses.dataclass(frozen=True)
class Imported:
    """A document in the target's stored form, and the record's engagement score (how long
    the target keeps it after the leave follows from it: SESSION_RETENTION_TIERS)."""

    stored: StoredRecord
    engagement: int


def import_document(
    raw: bytes,
    *,
    keyring: KeyRing | None,
    limits: StorageLimits,
    room: str | None = None,
    identity: str | None = None,
) -> Imported:
    """The target's stored form of a document (``raw``: the file's bytes), renamed to
    ``room`` / ``identity`` when given, sealed under ``keyring``'s current key.

    Refused with one line saying why: InvalidInputError (not this format or version, a
    malformed record, bad names, over ``limits``), ImportKeyError (a key id the file names
    that ``keyring`` lacks) or CorruptRecordError (a sealed value altered or moved).
    """
    try:
        record = _record(_document(raw), keyring)
    except CorruptRecordError as exc:  # authentic blobs only open where they were sealed
        raise CorruptRecordError(f"the file's sealed data does not open: {exc}") from None
    if identity is not None and record.identity.startswith("\x00"):
        raise InvalidInputError("the file holds a room's meeting transcript: it has no identity")
    record = dataclasses.replace(
        record,
        room=record.room if room is None else room,
        identity=record.identity if identity is None else identity,
    )
    for name, value in (("room", record.room), ("identity", record.identity)):
        if not value:
            raise InvalidInputError(f"the {name} must not be empty")
    validate_names(record.room, record.identity)
    stored = _stored_form(record, RecordCodec(keyring), limits)
    return Imported(stored, record_engagement(record))


def _document(raw: bytes) -> dict[str, Any]:
    """The parsed document, after checking it is this format in a version read here."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"not a session export: not JSON ({exc})") from None
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != FORMAT:
        raise InvalidInputError(f"not a session export (format {found!r}, expected {FORMAT!r})")
    version = doc.get("version")
    if type(version) is not int or version < 1:
        raise InvalidInputError(f"not a session export: unknown format version {version!r}")
    if version > VERSION:
        raise InvalidInputError(
            f"the file is format version {version}, newer than this agent reads ({VERSION}); "
            "import it with an agent as new as the one that exported it"
        )
    if not isinstance(doc.get("record"), dict):
        raise InvalidInputError("malformed session export: no record")
    return doc


def _record(doc: dict[str, Any], keyring: KeyRing | None) -> SessionRecord:
    """The record a checked document holds, opened with ``keyring`` when it is sealed."""
    body = doc["record"]
    version = _number(body, "schema_version", int)
    if not 1 <= version <= SCHEMA_VERSION:
        raise InvalidInputError(
            f"the record is schema version {version}; this agent reads 1..{SCHEMA_VERSION}"
        )
    if doc.get("sealed") is True:
        room, identity, profile = _open_sealed(doc, keyring)
    else:
        room, identity, profile = _open_plain(doc)
    language, metadata, items, transcript = profile
    if language is not None and not isinstance(language, str):
        raise InvalidInputError("malformed session export: language is not a string")
    if not isinstance(metadata, dict):
        raise InvalidInputError("malformed session export: metadata is not an object")
    last_seen = _number(body, "last_seen", float)
    left_at = body.get("left_at")
    return SessionRecord(
        room=room,
        identity=identity,
        schema_version=SCHEMA_VERSION,
        joined_at=_number(body, "joined_at", float),
        last_seen=last_seen,
        reconnect_count=_number(body, "reconnect_count", int),
        active_session=None,  # the session that held it was the old deployment's
        left_at=last_seen if left_at is None else _number(body, "left_at", float),
        language=language,
        metadata=metadata,
        items=_entries(items, "items"),
        transcript=_entries(transcript, "transcript"),
        items_trimmed=_number(body, "items_trimmed", int),
        transcript_trimmed=_number(body, "transcript_trimmed", int),
    )


def _open_plain(doc: dict[str, Any]) -> tuple[str, str, tuple[Any, Any, Any, Any]]:
    """Room, identity and (language, metadata, items, transcript) of a readable document."""
    room, identity, body = doc.get("room"), doc.get("identity"), doc["record"]
    if not isinstance(room, str) or not isinstance(identity, str):
        raise InvalidInputError("malformed session export: room/identity missing")
    names = ("language", "metadata", "items", "transcript")
    language, metadata, items, transcript = (body.get(name) for name in names)
    return room, identity, (language, metadata, items, transcript)


def _open_sealed(
    doc: dict[str, Any], keyring: KeyRing | None
) -> tuple[str, str, tuple[Any, Any, Any, Any]]:
    """Room, identity and (language, metadata, items, transcript) of a sealed document."""
    key_ids = doc.get("key_ids")
    if not isinstance(key_ids, list) or not all(isinstance(k, str) for k in key_ids):
        raise InvalidInputError("malformed session export: key_ids is not a list of names")
    held = {key_id for key_id, _ in keyring.keys} if keyring is not None else set()
    for key_id in key_ids:
        if key_id not in held:
            raise ImportKeyError(key_id, ring_configured=keyring is not None)
    codec, body = RecordCodec(keyring), doc["record"]
    participant = doc.get("participant")
    if not isinstance(participant, str):
        raise InvalidInputError("malformed session export: participant missing")
    room, identity = codec.open_who(participant, _unb64(doc.get("who"), "who"))

    def opened(tag: bytes, value: Any, what: str) -> Any:
        return codec.open(room, identity, tag, _unb64(value, what), orjson.loads)

    language = body.get("language")
    if language is not None:
        language = opened(F_LANG.encode(), language, "language")
    metadata = body.get("metadata")
    metadata = {} if metadata is None else opened(F_META.encode(), metadata, "metadata")
    lists = []
    for name, tag in (("items", TAG_ITEM), ("transcript", TAG_SEGMENT)):
        blobs = body.get(name)
        if not isinstance(blobs, list):
            raise InvalidInputError(f"malformed session export: {name} is not a list")
        lists.append([opened(tag, blob, f"{name}[{n}]") for n, blob in enumerate(blobs)])
    return room, identity, (language, metadata, lists[0], lists[1])


def _stored_form(record: SessionRecord, codec: RecordCodec, limits: StorageLimits) -> StoredRecord:
    """The record as the target stores it, refused when it breaks ``limits``."""
    fields, items, segments = codec.encode(record)
    lists = []
    for name, entries, blobs, max_env in (
        ("items", record.items, items, "SESSION_MAX_ENTRIES"),
        ("transcript", record.transcript, segments, "SESSION_MAX_ENTRIES"),
    ):
        if len(entries) > limits.max_entries:
            raise _over(f"{len(entries)} {name}", f"{max_env}={limits.max_entries}")
        for n, entry in enumerate(entries):
            size = len(encode_entry(entry, f"{name}[{n}]"))
            if size > limits.max_entry_bytes:
                limit = f"SESSION_MAX_ENTRY_BYTES={limits.max_entry_bytes}"
                raise _over(f"{name}[{n}] is {size} bytes", limit)
        if (size := sum(map(len, blobs))) > limits.max_list_bytes:
            limit = f"SESSION_MAX_HISTORY_BYTES={limits.max_list_bytes}"
            raise _over(f"{name} take {size} bytes", limit)
        lists.append([(entry["id"], blob) for entry, blob in zip(entries, blobs, strict=True)])
    fields |= {
        F_ITEM_BYTES: str(sum(map(len, items))).encode(),
        F_SEGMENT_BYTES: str(sum(map(len, segments))).encode(),
        F_ITEMS_TRIMMED: str(record.items_trimmed).encode(),
        F_SEGMENTS_TRIMMED: str(record.transcript_trimmed).encode(),
    }
    return StoredRecord(record.room, record.identity, fields, lists[0], lists[1])


def _entries(value: Any, name: str) -> tuple[dict[str, Any], ...]:
    """Items or segments: objects with distinct string ids."""
    if not isinstance(value, list):
        raise InvalidInputError(f"malformed session export: {name} is not a list")
    seen: set[str] = set()
    for n, entry in enumerate(value):
        entry_id = entry.get("id") if isinstance(entry, Mapping) else None
        if not isinstance(entry_id, str) or not entry_id:
            raise InvalidInputError(f"malformed session export: {name}[{n}] has no string id")
        if entry_id in seen:
            raise InvalidInputError(
                f"malformed session export: {name}[{n}] repeats id {entry_id!r}"
            )
        seen.add(entry_id)
    return tuple(value)


def _number(body: Mapping[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    """A count (int >= 0) or a time (finite epoch seconds >= 0) of the record."""
    value: Any = body.get(name)
    ok = type(value) is int if kind is int else type(value) in (int, float)
    if not ok or value < 0 or not math.isfinite(value):
        raise InvalidInputError(f"malformed session export: {name} is {value!r}")
    return kind(value)


def _over(what: str, limit: str) -> InvalidInputError:
    return InvalidInputError(
        f"the record breaks this store's limits: {what}, over {limit} (nothing was written)"
    )


def _b64(blob: bytes | None) -> str | None:
    return base64.b64encode(blob).decode() if blob is not None else None


def _unb64(value: Any, what: str) -> bytes:
    try:
        if isinstance(value, str):
            return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    raise InvalidInputError(f"malformed session export: {what} is not base64")
