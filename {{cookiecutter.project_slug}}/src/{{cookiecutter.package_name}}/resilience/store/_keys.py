"""Where records and leases live: the hashes that name them, and their keys in each backend.

The names hash what they stand for, so no room name or identity is ever part of a key. The
hashes here are unkeyed on purpose: they address stored data, which must stay reachable when
a deployment's secrets change. Logs and events name a participant by ``identity_hash``, the
keyed one (``log.identity_ref``), never by these.

Redis: a participant's keys share one hash tag ``{<prefix>:<participant hash>}`` (one Cluster
slot, so one script can touch them all); a room's lease has a tag of its own,
``{<prefix>:room:<room hash>}``. SQLite: a record's row key is the participant hash; leases
are rows keyed ``p:<participant hash>`` and ``r:<room hash>``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from ...log import identity_ref

__all__ = [
    "ParticipantKeys",
    "identity_hash",
    "keys_for_tag",
    "participant_hash",
    "participant_keys",
    "redis_room_lease",
    "room_hash",
    "sqlite_participant_lease",
    "sqlite_room_lease",
]

_TAG = re.compile(r"\{[A-Za-z0-9_.-]{1,64}:[0-9a-f]{32}\}")


@functools.lru_cache(maxsize=4096)  # every operation needs it several times
def participant_hash(room: str, identity: str) -> str:
    """128-bit key for (room, identity); length prefixes make every pair distinct."""
    data = b"lk-session"
    for part in (room.encode(), identity.encode()):
        data += len(part).to_bytes(8, "big") + part
    return hashlib.sha256(data).hexdigest()[:32]


def room_hash(room: str) -> str:
    """128-bit hash of a room name, noted with records and quarantined copies so a room's can
    be found (``purge --room``) without reading them."""
    raw = room.encode("utf-8", "surrogatepass")
    return hashlib.sha256(b"lk-room" + len(raw).to_bytes(8, "big") + raw).hexdigest()[:32]


def identity_hash(identity: str) -> str:
    """A participant in logs and events: ``log.identity_ref``, the one keyed identity hash."""
    return identity_ref(identity)


def _room_lease_hash(room: str) -> str:
    return hashlib.sha256(room.encode()).hexdigest()[:32]


# -- Redis -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParticipantKeys:
    """The Redis keys of one participant; all share one hash tag, hence one Cluster slot."""

    tag: str
    record: str
    items: str
    transcript: str
    ids: str
    lease: str

    @property
    def data(self) -> list[str]:
        """The keys participant scripts take, in the order the scripts expect."""
        return [self.record, self.items, self.transcript, self.ids, self.lease]

    def quarantine(self, stamp: str) -> list[str]:
        """Names the record's keys move to when it is quarantined, plus a reason key."""
        base = self.tag + ":q" + stamp
        return [base + ":rec", base + ":items", base + ":seg", base + ":ids", base + ":why"]


def participant_keys(prefix: str, room: str, identity: str) -> ParticipantKeys:
    """Keys for (room, identity): a hash of both inside ``{...}``, so no name can collide."""
    return _keys("{" + prefix + ":" + participant_hash(room, identity) + "}")


def keys_for_tag(tag: str) -> ParticipantKeys | None:
    """Keys for a hash tag found by SCAN; None unless it is exactly ``{prefix:<32 hex>}``."""
    if not _TAG.fullmatch(tag):
        return None
    return _keys(tag)


def _keys(tag: str) -> ParticipantKeys:
    return ParticipantKeys(tag, tag + ":r", tag + ":i", tag + ":t", tag + ":d", tag + ":l")


def redis_room_lease(prefix: str, room: str) -> str:
    """A room's lease hash: a Cluster slot of its own (the room name hashed, never stored)."""
    return "{" + prefix + ":room:" + _room_lease_hash(room) + "}:lease"


# -- SQLite ----------------------------------------------------------------------------------


def sqlite_participant_lease(pkey: str) -> str:
    """The ``leases`` row of the participant whose record key is ``pkey``."""
    return "p:" + pkey


def sqlite_room_lease(room: str) -> str:
    """A room's row in the ``leases`` table (the room name hashed, never stored)."""
    return "r:" + _room_lease_hash(room)
