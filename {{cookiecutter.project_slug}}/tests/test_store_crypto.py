"""SESSION_ENCRYPTION_KEYS: parsing with clear errors, AES-256-GCM sealing bound to its owner,
and a missing key told apart from corruption."""

from __future__ import annotations

import base64
import os

import pytest

from {{ cookiecutter.package_name }}.resilience.store import (
    CorruptRecordError,
    DecryptionError,
    KeyRing,
    KeyRingError,
    MissingKeyError,
    open_store,
)
from {{ cookiecutter.package_name }}.resilience.store._codec import TAG_ITEM, RecordCodec
from {{ cookiecutter.package_name }}.resilience.store._crypto import MAGIC, associated_data


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


AAD = associated_data("room", "alice", b"item")


def test_newest_key_writes_and_every_key_reads() -> None:
    old, new = f"old:{key()}", f"new:{key()}"
    sealed_old = KeyRing.parse(old).seal(b"hello", AAD)
    ring = KeyRing.parse(f"{new}, {old}")
    assert ring.write_key_id == "new"
    assert ring.open(sealed_old, AAD) == b"hello"
    assert b"new" in ring.seal(b"x", AAD)[:8]


def test_url_safe_and_unpadded_keys_are_accepted() -> None:
    raw = os.urandom(32)
    ring = KeyRing.parse("k:" + base64.urlsafe_b64encode(raw).decode().rstrip("="))
    assert ring.keys[0][1] == raw


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no 'keyid:base64key' entry"),
        (" , ", "no 'keyid:base64key' entry"),
        ("justakey", "no ':'"),
        ("k1:not base64!", "32 bytes"),
        ("k1:" + base64.b64encode(b"short").decode(), "32 bytes"),
        ("bad id:" + base64.b64encode(bytes(32)).decode(), "key id must be"),
        (":" + base64.b64encode(bytes(32)).decode(), "key id must be"),
        ("a:" + base64.b64encode(bytes(32)).decode() + ",a:" + base64.b64encode(bytes(32)).decode(),
         "twice"),
    ],
)  # fmt: skip
def test_malformed_key_ring_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message):
        KeyRing.parse(spec)


def test_open_store_refuses_a_malformed_key_ring() -> None:
    with pytest.raises(KeyRingError):
        open_store(encryption_keys="k1:tooshort")


def test_tampering_moving_and_missing_keys_are_told_apart() -> None:
    ring = KeyRing.parse(f"k1:{key()}")
    sealed = ring.seal(b"secret", AAD)
    flipped = bytearray(sealed)
    flipped[-3] ^= 0x40
    with pytest.raises(DecryptionError, match="altered"):
        ring.open(bytes(flipped), AAD)
    with pytest.raises(DecryptionError, match="moved"):
        ring.open(sealed, associated_data("room", "mallory", b"item"))
    with pytest.raises(DecryptionError, match="moved"):
        ring.open(sealed, associated_data("room", "alice", b"meta"))
    with pytest.raises(DecryptionError, match="truncated"):
        ring.open(sealed[:20], AAD)
    # a missing key is not corruption: its own error, naming the key and what to do
    with pytest.raises(MissingKeyError) as missing:
        KeyRing.parse(f"k2:{key()}").open(sealed, AAD)
    assert not isinstance(missing.value, DecryptionError)
    assert missing.value.key_id == "k1"
    assert "'k1'" in str(missing.value)
    assert "add that key to SESSION_ENCRYPTION_KEYS" in str(missing.value)


@pytest.mark.parametrize(
    "envelope",
    [MAGIC + bytes([9]) + b"k1", MAGIC + bytes([2]) + b"k\n" + bytes(40), MAGIC + bytes([0])],
    ids=["key id cut short", "key id no ring could hold", "empty key id"],
)
def test_a_malformed_envelope_is_corruption_not_a_missing_key(envelope: bytes) -> None:
    with pytest.raises(DecryptionError, match="malformed"):
        KeyRing.parse(f"k1:{key()}").open(envelope, AAD)
    with pytest.raises(CorruptRecordError, match="malformed"):
        RecordCodec(None).open("room", "alice", TAG_ITEM, envelope)


def test_unsealed_data_with_keys_is_tampering_and_without_keys_a_missing_key() -> None:
    keyed = RecordCodec(KeyRing.parse(f"k1:{key()}"))
    plain = b'{"id":"i1","text":"injected"}'
    with pytest.raises(CorruptRecordError, match="unsealed data in an encrypted store"):
        keyed.open("room", "alice", TAG_ITEM, plain)
    sealed = keyed.seal("room", "alice", TAG_ITEM, plain)
    with pytest.raises(MissingKeyError, match=r"'k1'.*SESSION_ENCRYPTION_KEYS is not set"):
        RecordCodec(None).open("room", "alice", TAG_ITEM, sealed)


def test_associated_data_is_unambiguous() -> None:
    assert associated_data("ab", "c", b"item") != associated_data("a", "bc", b"item")
