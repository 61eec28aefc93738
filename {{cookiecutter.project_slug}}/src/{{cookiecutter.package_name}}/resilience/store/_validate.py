"""What the stores accept: checks of names, entries, metadata and handles, before any write.

Bad input is refused with ``InvalidInputError`` (one line saying what and where) before
anything is stored; an entry over the size limit is trimmed instead (see ``StorageLimits``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from ._codec import F_LANG, F_META, RecordCodec, encode_entry, encode_json
from .base import TRIMMED_MARK, InvalidInputError

__all__ = [
    "Entry",
    "check_session_id",
    "gemini_input",
    "profile_updates",
    "validate_entries",
    "validate_metadata",
    "validate_names",
]

Entry = tuple[str, bytes, dict[str, Any]]  # (id, JSON bytes, a private copy)


def validate_entries(
    entries: Iterable[Mapping[str, Any]], what: str, max_bytes: int = 64 * 1024
) -> list[Entry]:
    """Check items/segments and return (id, json bytes, copy) for each, in order.

    An entry over ``max_bytes`` is trimmed (see StorageLimits).
    """
    out: list[Entry] = []
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
        text: str = holder[key]
        keep = max(0, length - excess - len(TRIMMED_MARK))
        holder[key] = text[:keep] + TRIMMED_MARK
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


def check_session_id(session_id: str, transcript_tail: int | None = None) -> None:
    """Session ids are the non-empty strings the worker makes up per AgentSession; a join's
    ``transcript_tail`` is None or a positive int."""
    if not isinstance(session_id, str) or not session_id:
        raise InvalidInputError("session_id must be a non-empty str")
    if transcript_tail is not None and (
        not isinstance(transcript_tail, int) or isinstance(transcript_tail, bool)
        or transcript_tail < 1
    ):  # fmt: skip
        raise InvalidInputError("transcript_tail must be None or an int of at least 1")
