"""What the SFU decides for a room that has none: ids, who is there, attribute merges.

Participants and publications are the SDK's own classes, built from the protobufs the FFI
would send (:mod:`._sdk` names them) with server ids made here.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Mapping, MutableMapping

from livekit import rtc

from . import _sdk
from .records import TrackRecord

_SID_ALPHABET = string.ascii_letters + string.digits


def new_sid(prefix: str) -> str:
    """A server id in LiveKit's format: ``PREFIX_`` and 12 base62 characters."""
    return prefix + "".join(secrets.choice(_SID_ALPHABET) for _ in range(12))


def participant_info(
    identity: str,
    *,
    name: str = "",
    metadata: str = "",
    attributes: dict[str, str] | None = None,
    kind: rtc.ParticipantKind.ValueType = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    client_protocol: int = 0,
) -> _sdk.OwnedParticipant:
    """The protobuf a participant joining now is built from, with a fresh ``PA_`` sid."""
    info = _sdk.ParticipantInfo(
        sid=new_sid("PA_"),
        identity=identity,
        name=name,
        metadata=metadata,
        kind=kind,
        state=_sdk.PARTICIPANT_STATE_ACTIVE,
        joined_at=int(time.time() * 1000),
        client_protocol=client_protocol,
    )
    info.attributes.update(attributes or {})
    return _sdk.OwnedParticipant(info=info)


def track_publication_info(
    *,
    name: str,
    kind: rtc.TrackKind.ValueType,
    source: rtc.TrackSource.ValueType,
    remote: bool,
    muted: bool = False,
) -> _sdk.OwnedTrackPublication:
    """The protobuf a track publication is built from, with a fresh ``TR_`` sid."""
    info = _sdk.TrackPublicationInfo(
        sid=new_sid("TR_"),
        name=name,
        kind=kind,
        source=source,
        mime_type="audio/opus" if kind == rtc.TrackKind.KIND_AUDIO else "video/vp8",
        muted=muted,
        remote=remote,
    )
    return _sdk.OwnedTrackPublication(info=info)


class SimulatedRemoteTrackPublication(rtc.RemoteTrackPublication):
    """A participant's publication; subscribing only flips the flag, as no media flows."""

    def set_subscribed(self, subscribed: bool) -> None:
        # the SDK sends this to the SFU through the FFI, which has no such publication
        _sdk.set_subscribed(self, subscribed)

    def set_video_quality(self, quality: int) -> None:
        raise ValueError("simulated publications carry no video layers")


def track_record(publication: rtc.TrackPublication, identity: str) -> TrackRecord:
    """A fresh record of a publication."""
    return TrackRecord(
        sid=publication.sid,
        name=publication.name,
        kind=rtc.TrackKind.Name(publication.kind).removeprefix("KIND_").lower(),
        source=rtc.TrackSource.Name(publication.source).removeprefix("SOURCE_").lower(),
        participant_identity=identity,
        published_at=time.time(),
    )


def require_connected(room: rtc.Room) -> None:
    """A ``RuntimeError`` if ``room`` has been disconnected: nobody can join or send any more."""
    if not room.isconnected():
        raise RuntimeError("the simulated room is disconnected")


def apply_attributes(current: MutableMapping[str, str], update: Mapping[str, str]) -> None:
    """Merge ``update`` into ``current``; an empty value deletes the key, as in LiveKit."""
    for key, value in update.items():
        if value:
            current[key] = value
        else:
            current.pop(key, None)


def require_participant(room: rtc.Room, identity: str) -> rtc.RemoteParticipant:
    """The remote participant ``identity``, or a ``ValueError`` saying it is not there."""
    participant = room.remote_participants.get(identity)
    if participant is None:
        raise ValueError(f"participant {identity!r} is not in the room")
    return participant
