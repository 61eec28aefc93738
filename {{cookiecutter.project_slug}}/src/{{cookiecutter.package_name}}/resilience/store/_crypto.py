"""Encryption at rest for session records: AES-256-GCM with a key ring.

``SESSION_ENCRYPTION_KEYS`` holds comma-separated ``keyid:base64key`` entries, each key 32 random
bytes in standard or URL-safe base64 (make one with
``python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"``).
The FIRST entry is the newest: it encrypts every new write; every entry can decrypt. With many
workers a key is rotated in three phases (the generated README says how): add the new key as a
second, decrypt-only entry everywhere; once every worker has it, put it first; drop the old one
once the records it sealed have expired. A blob under a key id the ring lacks raises
``MissingKeyError``: that is a configuration matter, not corruption, and the record is left alone.

Each sealed blob carries its key id, so records written under different keys stay readable, and
is bound to its room, participant identity and field by the associated data: a blob copied to
another participant or field fails to open instead of leaking into the wrong conversation.

Blob layout: ``0x00 'E' 0x01 | len(keyid) | keyid | nonce(12) | ciphertext+tag``. A plaintext
JSON blob never starts with 0x00, which is how readers tell the two apart.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .base import DecryptionError, KeyRingError, MissingKeyError

__all__ = ["MAGIC", "KeyRing", "associated_data", "sealed_key_id"]

MAGIC = b"\x00E\x01"
_NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def associated_data(room: str, identity: str, field: bytes) -> bytes:
    """Bind a blob to its participant and field; length prefixes keep it unambiguous."""
    parts = [room.encode(), identity.encode(), field]
    return b"lk-session/v1" + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


@dataclass(frozen=True)
class KeyRing:
    """Named AES-256-GCM keys; ``keys[0]`` writes, all of them read."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Parse ``keyid:base64key[,...]``; raise KeyRingError saying what is wrong."""
        entries = [e.strip() for e in spec.split(",") if e.strip()]
        if not entries:
            raise KeyRingError(
                "SESSION_ENCRYPTION_KEYS is set but holds no 'keyid:base64key' entry"
            )
        keys: list[tuple[str, bytes]] = []
        for position, entry in enumerate(entries, start=1):
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                raise KeyRingError(
                    f"SESSION_ENCRYPTION_KEYS entry {position} has no ':'; "
                    "write it as keyid:base64key"
                )
            if not _KEY_ID.fullmatch(key_id):
                raise KeyRingError(
                    f"SESSION_ENCRYPTION_KEYS entry {position}: key id must be 1-64 characters "
                    "of letters, digits, '_', '.', '-'"
                )
            if any(existing == key_id for existing, _ in keys):
                raise KeyRingError(f"SESSION_ENCRYPTION_KEYS lists key id {key_id!r} twice")
            key = _decode_key(encoded)
            if key is None or len(key) != 32:
                raise KeyRingError(
                    f"SESSION_ENCRYPTION_KEYS key {key_id!r} must be 32 bytes in base64 "
                    "(44 characters); generate one with os.urandom(32)"
                )
            keys.append((key_id, key))
        return cls(tuple(keys))

    @property
    def write_key_id(self) -> str:
        """The id of the key new writes use."""
        return self.keys[0][0]

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt with the newest key; the result names that key."""
        key_id, key = self.keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plaintext, aad)
        kid = key_id.encode()
        return MAGIC + bytes([len(kid)]) + kid + nonce + sealed

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a sealed blob.

        Raises MissingKeyError when the blob names a key id this ring lacks, and
        DecryptionError (proven corruption) when its envelope is malformed or it fails
        authentication under a key the ring holds.
        """
        key_id = sealed_key_id(blob)
        key = dict(self.keys).get(key_id)
        if key is None:
            raise MissingKeyError(key_id)
        body = blob[len(MAGIC) + 1 + len(key_id) :]
        if len(body) < _NONCE_BYTES + 16:
            raise DecryptionError("sealed blob is truncated")
        try:
            return AESGCM(key).decrypt(body[:_NONCE_BYTES], body[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError(
                f"authentication failed under key id {key_id!r}: the blob was altered, "
                "or moved from another participant or field"
            ) from None


def sealed_key_id(blob: bytes) -> str:
    """The key id a sealed blob names; DecryptionError when its envelope is malformed."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 1:
        raise DecryptionError("not a sealed blob (unknown envelope)")
    start = len(MAGIC) + 1
    raw = blob[start : start + blob[len(MAGIC)]]
    key_id = raw.decode("ascii", errors="replace")
    # a key id that could never be configured is a broken envelope, not a missing key
    if len(raw) != blob[len(MAGIC)] or not _KEY_ID.fullmatch(key_id):
        raise DecryptionError("sealed blob names no valid key id (malformed envelope)")
    return key_id


def _decode_key(encoded: str) -> bytes | None:
    # accept standard and URL-safe alphabets, with or without padding
    text = encoded.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
