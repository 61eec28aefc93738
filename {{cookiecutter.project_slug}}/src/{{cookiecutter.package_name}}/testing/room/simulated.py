"""A LiveKit room with no server: ``SimulatedRoom`` runs the real RoomIO and AgentSession.

``SimulatedRoom`` subclasses ``rtc.Room`` and keeps the SDK's own event emitter, stream-handler
registry, RPC invocation bookkeeping and disconnect clean-up. It overrides only what needs the
SFU, and says why:

- ``isconnected`` / ``connect`` / ``disconnect``: the SDK derives "connected" from a native
  room handle that only a server connection creates; the simulated room is connected from
  construction and ``disconnect`` runs the SDK's clean-up minus the FFI request.
- ``local_participant``: a :class:`SimulatedLocalParticipant`, whose FFI-bound calls (track
  publication, streams, data packets, attributes, RPC registration) are recorded instead.
- ``remote_participants``: scripted with :meth:`add_participant` / :meth:`remove_participant`,
  built from the same protobuf and emitting the same events as the SDK's event loop.
- text/byte streams *to* the agent: :meth:`send_chat` / :meth:`send_text_as` /
  :meth:`send_bytes_as` hand a reader to the handler RoomIO registered, as the SDK does.
- RPC *to* the agent: :meth:`perform_rpc_as` runs the SDK's incoming chain (interceptors,
  deadline, error mapping); RPC *from* the agent reaches :meth:`set_participant_rpc_handler`.
- ``get_rtc_stats`` (empty) and ``simulate_scenario`` (refused): they query the transport.

Real ``rtc.AudioSource`` / ``LocalAudioTrack`` objects are kept: the FFI runs them offline, so
the agent's audio plays out in real time exactly as in production. Not simulated: media flowing
*to* the agent (a participant's microphone is a publication with no subscribable track, so no
``track_subscribed`` and no STT input; :mod:`.speech` adds real audio), reconnection,
end-to-end encryption and data tracks. Every SDK internal this needs goes through :mod:`._sdk`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from livekit import rtc

from . import _sdk
from .frontend import FrontendLine, build_transcript, received_by
from .inbound import InboundStreamsMixin
from .local_participant import SimulatedLocalParticipant
from .records import (
    AttributeChange,
    ByteStreamRecord,
    DataPacketRecord,
    Observer,
    ParticipantRecord,
    RoomRecorder,
    RpcCallRecord,
    RpcMethodRecord,
    TextStreamRecord,
    TimelineEvent,
    TrackRecord,
)
from .rpc import RemoteRpcHandler, RpcMixin
from .sfu import (
    SimulatedRemoteTrackPublication,
    apply_attributes,
    new_sid,
    participant_info,
    require_connected,
    require_participant,
    track_publication_info,
    track_record,
)

# what a current frontend advertises: it reads transcripts from lk.transcription streams, so
# the agent sends no legacy transcription packets (livekit.agents.types)
CLIENT_PROTOCOL_TRANSCRIPTION_STREAMS = 3


class SimulatedRoom(InboundStreamsMixin, RpcMixin, rtc.Room):
    """An ``rtc.Room`` connected from construction, with scripted participants.

    Every publication, stream, attribute change and RPC is recorded (``published_tracks``,
    ``text_streams``, ``byte_streams``, ``attribute_changes``, ``rpc_methods``, ``rpc_calls``,
    ``data_packets``) and appended to one ordered ``timeline``; observers added with
    :meth:`add_observer` see each event as it happens.
    """

    def __init__(
        self,
        name: str = "sim-room",
        agent_identity: str = "agent",
        *,
        metadata: str = "",
        departure_timeout: float = 20.0,
        sid: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not name or not agent_identity:
            raise ValueError("a simulated room needs a name and an agent identity")
        super().__init__(loop=loop)
        _sdk.check_seams()
        self.recorder = RoomRecorder()
        info = _sdk.RoomInfo(
            sid=sid or new_sid("RM_"),
            name=name,
            metadata=metadata,
            creation_time=int(time.time() * 1000),
            # what the server reports: its default, 20 s, unless the room was configured
            departure_timeout=int(departure_timeout),
        )
        _sdk.set_room_info(self, info)
        agent = participant_info(agent_identity, kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
        _sdk.set_local_participant(self, SimulatedLocalParticipant(self, agent))
        _sdk.set_connection_state(self, rtc.ConnectionState.CONN_CONNECTED)
        self._subscribers: set[str] = set()
        self._participant_rpc: dict[tuple[str, str], RemoteRpcHandler] = {}

    # -- connection ----------------------------------------------------------------------

    def isconnected(self) -> bool:
        """True until :meth:`disconnect`; no native handle is involved."""
        return self.connection_state != rtc.ConnectionState.CONN_DISCONNECTED

    async def connect(self, url: str, token: str, options: rtc.RoomOptions | None = None) -> None:
        """Refused: a simulated room is connected from construction and has no server."""
        raise RuntimeError("SimulatedRoom is connected at construction; it has no server")

    async def disconnect(
        self, *, reason: rtc.DisconnectReason.ValueType = rtc.DisconnectReason.CLIENT_INITIATED
    ) -> None:
        """Leave the room: the SDK's clean-up (pending RPCs, open readers), then the events."""
        if not self.isconnected():
            return
        await _sdk.clean_up_on_disconnect(self)
        _sdk.participant_info(self.local_participant).disconnect_reason = reason
        _sdk.set_connection_state(self, rtc.ConnectionState.CONN_DISCONNECTED)
        self.recorder.emit("room_disconnected", rtc.DisconnectReason.Name(reason))
        self.emit("connection_state_changed", self.connection_state)
        self.emit("disconnected", reason)

    async def get_rtc_stats(self) -> rtc.RtcStats:
        """No transport, so no statistics."""
        return rtc.RtcStats(publisher_stats=[], subscriber_stats=[])

    async def simulate_scenario(self, scenario: int) -> None:
        """Refused: reconnection scenarios need the SFU."""
        raise RuntimeError("simulate_scenario needs a LiveKit server")

    # -- records -------------------------------------------------------------------------

    @property
    def published_tracks(self) -> list[TrackRecord]:
        """Every track published in the room, the agent's and the participants'."""
        return self.recorder.tracks

    @property
    def text_streams(self) -> list[TextStreamRecord]:
        """Every text stream, outgoing (the agent's) and incoming (participants')."""
        return self.recorder.text_streams

    @property
    def byte_streams(self) -> list[ByteStreamRecord]:
        """Every byte stream, outgoing and incoming."""
        return self.recorder.byte_streams

    @property
    def attribute_changes(self) -> list[AttributeChange]:
        """Attribute, metadata and name changes, the agent's and the participants'."""
        return self.recorder.attribute_changes

    @property
    def rpc_methods(self) -> list[RpcMethodRecord]:
        """RPC methods the agent registered (with unregistration time, if any)."""
        return self.recorder.rpc_methods

    @property
    def rpc_calls(self) -> list[RpcCallRecord]:
        """RPC invocations in both directions, with their outcome."""
        return self.recorder.rpc_calls

    @property
    def data_packets(self) -> list[DataPacketRecord]:
        """Data packets, DTMF tones and legacy transcription packets the agent sent."""
        return self.recorder.data_packets

    @property
    def timeline(self) -> list[TimelineEvent]:
        """Every event above, in the order it happened."""
        return self.recorder.timeline

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` with each new :class:`TimelineEvent`."""
        self.recorder.add_observer(observer)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer``."""
        self.recorder.remove_observer(observer)

    def transcript(self) -> list[FrontendLine]:
        """The conversation as a frontend shows it (see :mod:`.frontend`)."""
        return build_transcript(self.recorder.text_streams, self.local_participant.identity)

    def transcript_seen_by(self, identity: str) -> list[FrontendLine]:
        """The conversation as ``identity``'s frontend shows it: what it sent, and what the
        agent sent to everyone or to it while it was in the room."""
        visits = [
            (r.joined_at, r.left_at) for r in self.recorder.participants if r.identity == identity
        ]
        streams = received_by(self.recorder.text_streams, identity, visits)
        return build_transcript(streams, self.local_participant.identity)

    async def wait_until(
        self,
        predicate: Callable[[SimulatedRoom], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - a default deadline keeps a stuck test from hanging
        *,
        poll: float = 0.05,
    ) -> None:
        """Wait until ``predicate(room)`` holds.

        It is checked on every timeline event, and every ``poll`` seconds for conditions that
        depend on more than the room (session state, logs). Raises ``TimeoutError`` naming the
        last room event, so a stuck test says where it was; a predicate that raises fails it.
        """
        if predicate(self):
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def check(_event: object = None) -> None:
            if done.done():
                return
            try:
                if predicate(self):
                    done.set_result(None)
            except Exception as e:
                # a broken predicate fails the wait, rather than being logged as an observer
                done.set_exception(e)

        deadline = loop.time() + timeout
        self.add_observer(check)
        try:
            while not done.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    last = self.timeline[-1].kind if self.timeline else "nothing"
                    raise TimeoutError(
                        f"condition not met within {timeout}s; last room event: {last}"
                    )
                await asyncio.wait([done], timeout=min(poll, remaining))
                check()
            done.result()
        finally:
            self.remove_observer(check)

    # -- participants --------------------------------------------------------------------

    def add_participant(
        self,
        identity: str,
        *,
        name: str = "",
        metadata: str = "",
        attributes: dict[str, str] | None = None,
        kind: rtc.ParticipantKind.ValueType = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
        subscribe: bool = True,
        publish_microphone: bool = False,
    ) -> rtc.RemoteParticipant:
        """A participant joins: ``participant_connected`` is emitted, as by the SDK.

        ``subscribe`` makes it subscribe to the agent's tracks (a frontend with auto-subscribe),
        which is what lets the agent's audio output start. ``publish_microphone`` also
        publishes a microphone track (a publication only: no audio reaches the agent).
        """
        if not identity:
            raise ValueError("a participant needs an identity")
        require_connected(self)
        if identity in self.remote_participants or identity == self.local_participant.identity:
            raise ValueError(f"participant {identity!r} is already in the room")
        owned = participant_info(
            identity,
            name=name,
            metadata=metadata,
            attributes=attributes,
            kind=kind,
            client_protocol=CLIENT_PROTOCOL_TRANSCRIPTION_STREAMS,
        )
        participant = _sdk.add_remote_participant(self, owned)
        record = ParticipantRecord(
            identity=identity,
            kind=rtc.ParticipantKind.Name(kind).removeprefix("PARTICIPANT_KIND_").lower(),
            joined_at=time.time(),
        )
        self.recorder.participants.append(record)
        self.recorder.emit("participant_connected", record)
        self.emit("participant_connected", participant)
        # the SFU then reports the participant ready for data; livekit-agents'
        # wait_for_participant listens for this event, not for participant_connected
        self.emit("participant_active", participant)
        if subscribe:
            self._subscribers.add(identity)
            for publication in self.local_participant.track_publications.values():
                self._mark_subscribed(publication)
        if publish_microphone:
            self.publish_participant_track(identity)
        return participant

    def remove_participant(
        self,
        identity: str,
        reason: rtc.DisconnectReason.ValueType = rtc.DisconnectReason.CLIENT_INITIATED,
    ) -> None:
        """A participant leaves: its tracks are unpublished, then ``participant_disconnected``."""
        participant = require_participant(self, identity)
        for sid in list(participant.track_publications):
            self.unpublish_participant_track(identity, sid)
        _sdk.remove_remote_participant(self, identity)
        self._subscribers.discard(identity)
        _sdk.participant_info(participant).disconnect_reason = reason
        for record in self.recorder.participants:
            if record.identity == identity and record.left_at is None:
                record.left_at = time.time()
                record.disconnect_reason = rtc.DisconnectReason.Name(reason)
                self.recorder.emit("participant_disconnected", record)
        self.emit("participant_disconnected", participant)

    def publish_participant_track(
        self,
        identity: str,
        *,
        name: str = "microphone",
        source: rtc.TrackSource.ValueType = rtc.TrackSource.SOURCE_MICROPHONE,
    ) -> rtc.RemoteTrackPublication:
        """The participant publishes an audio track: ``track_published`` (no media flows)."""
        participant = require_participant(self, identity)
        owned = track_publication_info(
            name=name, kind=rtc.TrackKind.KIND_AUDIO, source=source, remote=True
        )
        publication = SimulatedRemoteTrackPublication(owned)
        _sdk.track_publications(participant)[publication.sid] = publication
        record = track_record(publication, identity)
        self.recorder.tracks.append(record)
        self.recorder.emit("track_published", record)
        self.emit("track_published", publication, participant)
        return publication

    def unpublish_participant_track(self, identity: str, sid: str) -> None:
        """The participant unpublishes a track: ``track_unpublished``."""
        participant = require_participant(self, identity)
        publication = _sdk.track_publications(participant).pop(sid, None)
        if publication is None:
            raise ValueError(f"participant {identity!r} has no track {sid!r}")
        for record in self.recorder.tracks:
            if record.sid == sid:
                record.unpublished_at = time.time()
                self.recorder.emit("track_unpublished", record)
        self.emit("track_unpublished", publication, participant)

    def set_participant_attributes(self, identity: str, attributes: dict[str, str]) -> None:
        """The participant updates its attributes: ``participant_attributes_changed``."""
        participant = require_participant(self, identity)
        apply_attributes(_sdk.participant_info(participant).attributes, attributes)
        record = AttributeChange(identity, dict(attributes), time.time())
        self.recorder.attribute_changes.append(record)
        self.recorder.emit("attributes_changed", record)
        self.emit("participant_attributes_changed", dict(attributes), participant)

    # -- agent tracks --------------------------------------------------------------------

    def _on_local_track_published(self, publication: rtc.LocalTrackPublication) -> None:
        if publication.sid not in self.local_participant.track_publications:
            return  # unpublished before the event was dispatched
        track = publication.track
        if track is not None:
            _sdk.set_track_room(track, self)
        self.emit("local_track_published", publication, track)
        if self._subscribers:
            self._mark_subscribed(publication)

    def _mark_subscribed(self, publication: rtc.LocalTrackPublication) -> None:
        # a subscriber resolves wait_for_subscription(), which gates RoomIO's audio output
        subscribed = _sdk.first_subscription(publication)
        if subscribed.done():
            return
        subscribed.set_result(None)
        for record in self.recorder.tracks:
            if record.sid == publication.sid:
                record.subscribed_at = time.time()
                self.recorder.emit("track_subscribed", record)
        self.emit("local_track_subscribed", publication.track)
