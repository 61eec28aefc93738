"""The agent's local participant in a :class:`SimulatedRoom`.

``SimulatedLocalParticipant`` subclasses ``rtc.LocalParticipant`` and overrides only the calls
that send a request to the SFU through the FFI: track (un)publication, text/byte streams, data
packets, DTMF, legacy transcriptions, attribute/metadata/name updates, RPC method
(un)registration and outgoing RPC. Everything else is the SDK's own code: the RPC interceptor
chain (``perform_rpc`` and the incoming ``_run_incoming_chain``), ``track_publications``,
identity and attribute accessors.

It is built from the same ``ParticipantInfo`` protobuf the FFI sends (see :mod:`.sfu`); the
SDK internals it needs go through :mod:`._sdk`.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livekit import rtc
from livekit.rtc.participant import (
    PublishDataError,
    PublishDataTrackError,
    PublishDTMFError,
    PublishTrackError,
    PublishTranscriptionError,
    UnpublishTrackError,
)

from . import _sdk
from .records import AttributeChange, DataPacketRecord, RpcMethodRecord
from .sfu import apply_attributes, track_publication_info, track_record
from .streams import SimulatedByteStreamWriter, SimulatedTextStreamWriter

if TYPE_CHECKING:
    from .simulated import SimulatedRoom


class SimulatedLocalParticipant(_sdk.OfflineLocalParticipant):
    """The agent's participant in a :class:`SimulatedRoom`."""

    def __init__(self, room: SimulatedRoom, owned_info: _sdk.OwnedParticipant) -> None:
        super().__init__(room, owned_info)
        self._sim_room = room
        self._recorder = room.recorder

    def _check_connected(self, error: type[Exception]) -> None:
        if not self._sim_room.isconnected():
            raise error("room is disconnected")

    # -- tracks --------------------------------------------------------------------------

    async def publish_track(
        self, track: rtc.LocalTrack, options: rtc.TrackPublishOptions | None = None
    ) -> rtc.LocalTrackPublication:
        """Publish ``track``: a new ``TR_`` sid, recorded, then ``local_track_published``."""
        options = options if options is not None else rtc.TrackPublishOptions()
        self._check_connected(PublishTrackError)
        publications = _sdk.track_publications(self)
        if any(pub.track is track for pub in publications.values()):
            raise PublishTrackError("track already published")
        owned = track_publication_info(
            name=track.name, kind=track.kind, source=options.source, remote=False
        )
        publication = rtc.LocalTrackPublication(owned)
        _sdk.attach_track(publication, track)
        publications[publication.sid] = publication
        record = track_record(publication, self.identity)
        self._recorder.tracks.append(record)
        self._recorder.emit("track_published", record)
        # the SDK's room emits local_track_published from its event loop after publish_track
        # has stored the publication; subscription follows once a subscriber is present
        asyncio.get_running_loop().call_soon(self._sim_room._on_local_track_published, publication)
        return publication

    async def unpublish_track(self, track_sid: str) -> None:
        """Unpublish a track: recorded, then ``local_track_unpublished``."""
        self._check_connected(UnpublishTrackError)
        publication = _sdk.track_publications(self).pop(track_sid, None)
        if publication is None:
            raise UnpublishTrackError(f"track {track_sid} is not published")
        for record in self._recorder.tracks:
            if record.sid == track_sid:
                record.unpublished_at = time.time()
                self._recorder.emit("track_unpublished", record)
        track = publication.track
        if track is not None:
            _sdk.set_track_room(track, None)
        self._sim_room.emit("local_track_unpublished", publication)
        _sdk.detach_track(publication)

    # -- streams -------------------------------------------------------------------------

    def _writer_kwargs(self) -> dict[str, Any]:
        return {"recorder": self._recorder, "is_connected": self._sim_room.isconnected}

    async def stream_text(
        self,
        *,
        destination_identities: list[str] | None = None,
        topic: str = "",
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
        reply_to_id: str | None = None,
        total_size: int | None = None,
        sender_identity: str | None = None,
    ) -> rtc.TextStreamWriter:
        """Open a recorded text stream (see ``SimulatedRoom.text_streams``)."""
        writer = SimulatedTextStreamWriter(
            self,
            **self._writer_kwargs(),
            topic=topic,
            attributes=attributes,
            stream_id=stream_id,
            total_size=total_size,
            reply_to_id=reply_to_id,
            destination_identities=destination_identities,
            sender_identity=sender_identity,
        )
        await writer.open()
        return writer

    async def send_text(
        self,
        text: str,
        *,
        destination_identities: list[str] | None = None,
        topic: str = "",
        attributes: dict[str, str] | None = None,
        reply_to_id: str | None = None,
        compress: bool = True,
    ) -> rtc.TextStreamInfo:
        """Send a whole text stream in one call (recorded like ``stream_text``)."""
        writer = await self.stream_text(
            destination_identities=destination_identities,
            topic=topic,
            attributes=attributes,
            reply_to_id=reply_to_id,
        )
        await writer.write(text)
        await writer.aclose()
        return writer.info

    async def stream_bytes(
        self,
        name: str,
        *,
        total_size: int | None = None,
        mime_type: str = "application/octet-stream",
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
        destination_identities: list[str] | None = None,
        topic: str = "",
    ) -> rtc.ByteStreamWriter:
        """Open a recorded byte stream (see ``SimulatedRoom.byte_streams``)."""
        writer = SimulatedByteStreamWriter(
            self,
            **self._writer_kwargs(),
            name=name,
            topic=topic,
            attributes=attributes,
            stream_id=stream_id,
            total_size=total_size,
            mime_type=mime_type,
            destination_identities=destination_identities,
        )
        await writer.open()
        return writer

    async def send_bytes(
        self,
        data: bytes,
        *,
        topic: str = "",
        name: str | None = None,
        mime_type: str | None = None,
        destination_identities: list[str] | None = None,
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
        compress: bool = True,
    ) -> rtc.ByteStreamInfo:
        """Send a whole byte stream in one call (recorded like ``stream_bytes``)."""
        writer = await self.stream_bytes(
            name or "unknown",
            total_size=len(data),
            mime_type=mime_type or "application/octet-stream",
            attributes=attributes,
            stream_id=stream_id,
            destination_identities=destination_identities,
            topic=topic,
        )
        await writer.write(data)
        await writer.aclose()
        return writer.info

    async def send_file(
        self,
        file_path: str,
        *,
        topic: str = "",
        destination_identities: list[str] | None = None,
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
        compress: bool = True,
    ) -> rtc.ByteStreamInfo:
        """Send a file as a byte stream (recorded like ``stream_bytes``)."""
        data = await asyncio.to_thread(Path(file_path).read_bytes)
        return await self.send_bytes(
            data,
            topic=topic,
            name=os.path.basename(file_path),
            mime_type=mimetypes.guess_type(file_path)[0],
            destination_identities=destination_identities,
            attributes=attributes,
            stream_id=stream_id,
        )

    # -- packets -------------------------------------------------------------------------

    def _record_packet(self, kind: Any, topic: str, payload: Any, dest: list[str]) -> None:
        record = DataPacketRecord(
            kind=kind,
            sender_identity=self.identity,
            topic=topic,
            payload=payload,
            destination_identities=list(dest),
            at=time.time(),
        )
        self._recorder.data_packets.append(record)
        self._recorder.emit("data_published", record)

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: list[str] | None = None,
        topic: str = "",
    ) -> None:
        """Record a data packet."""
        self._check_connected(PublishDataError)
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        self._record_packet("data", topic, data, destination_identities or [])

    async def publish_dtmf(self, *, code: int, digit: str) -> None:
        """Record a SIP DTMF tone."""
        self._check_connected(PublishDTMFError)
        self._record_packet("dtmf", "", {"code": code, "digit": digit}, [])

    async def publish_transcription(self, transcription: rtc.Transcription) -> None:
        """Record a legacy transcription packet (sent only to old frontends)."""
        self._check_connected(PublishTranscriptionError)
        payload = {
            "participant_identity": transcription.participant_identity,
            "track_sid": transcription.track_sid,
            "segments": [(s.id, s.text, s.final) for s in transcription.segments],
        }
        self._record_packet("legacy_transcription", "", payload, [])

    async def publish_data_track(self, *, name: str) -> Any:
        """Data tracks need the SFU's data-track transport, which is not simulated."""
        raise PublishDataTrackError("data tracks are not simulated")

    # -- attributes ----------------------------------------------------------------------

    def _record_change(self, changed: dict[str, str], field: Any) -> None:
        record = AttributeChange(self.identity, dict(changed), time.time(), field)
        self._recorder.attribute_changes.append(record)
        self._recorder.emit("attributes_changed", record)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        """Merge ``attributes``; an empty value deletes a key. The server echoes
        ``participant_attributes_changed`` for what changed."""
        current = _sdk.participant_info(self).attributes
        changed = {k: v for k, v in attributes.items() if current.get(k, "") != v}
        apply_attributes(current, attributes)
        self._record_change(attributes, "attributes")
        if changed:
            self._sim_room.emit("participant_attributes_changed", changed, self)

    async def set_metadata(self, metadata: str) -> None:
        """Set metadata (the server echoes ``participant_metadata_changed``)."""
        info = _sdk.participant_info(self)
        old, info.metadata = info.metadata, metadata
        self._record_change({"metadata": metadata}, "metadata")
        self._sim_room.emit("participant_metadata_changed", self, old, metadata)

    async def set_name(self, name: str) -> None:
        """Set the display name (the server echoes ``participant_name_changed``)."""
        info = _sdk.participant_info(self)
        old, info.name = info.name, name
        self._record_change({"name": name}, "name")
        self._sim_room.emit("participant_name_changed", self, old, name)

    def set_track_subscription_permissions(
        self,
        *,
        allow_all_participants: bool,
        participant_permissions: list[Any] | None = None,
    ) -> None:
        """Accepted and ignored: every simulated participant may subscribe."""

    # -- RPC -----------------------------------------------------------------------------

    def register_rpc_method(self, method_name: str, handler: Any = None) -> Any:
        """Register an RPC handler (decorator or plain call), as the SDK does; recorded."""

        def register(handler_func: Any) -> Any:
            _sdk.rpc_handlers(self)[method_name] = handler_func
            record = RpcMethodRecord(method=method_name, registered_at=time.time())
            self._recorder.rpc_methods.append(record)
            self._recorder.emit("rpc_method_registered", record)
            return handler_func

        return register(handler) if handler is not None else register

    def unregister_rpc_method(self, method: str) -> None:
        """Unregister an RPC handler; recorded."""
        _sdk.rpc_handlers(self).pop(method, None)
        for record in self._recorder.rpc_methods:
            if record.method == method and record.unregistered_at is None:
                record.unregistered_at = time.time()
                self._recorder.emit("rpc_method_unregistered", record)

    async def deliver_rpc(self, call: rtc.RpcCallInfo) -> str:
        """The innermost step of the SDK's outgoing chain: to a scripted participant."""
        return await self._sim_room._deliver_agent_rpc(call)
