"""The one module of the offline kit that touches livekit internals (checked against livekit
1.1.21 and livekit-agents 1.8.9).

The simulated room runs the SDK's own classes (``rtc.Room``, ``rtc.LocalParticipant``,
``rtc.RemoteParticipant``, publications, stream writers and readers) with no FFI room behind
them. That needs what the SDK has no public API for, each named where it is used below:

- the FFI's protobufs (``livekit.rtc._proto``): rooms, participants and publications are built
  from the messages the FFI would send, and a reader gets its chunks as the FFI's events;
- the room's state: its info, local participant, connection state, remote participants,
  stream handlers and open readers, RPC invocation tasks, and its disconnect clean-up;
- participants' and publications' state: a participant's info and publications, the local
  participant's RPC handlers and incoming RPC chain, a publication's track and first
  subscription, a track's room;
- the FFI seams the kit's subclasses override (:data:`FFI_SEAMS`): the writers'
  ``_send_header`` / ``_send_close`` (and the writer state they read), the readers'
  ``_unsubscribe`` (and the reader state they set) and the local participant's
  ``_perform_rpc_ffi``;
- livekit-agents' ``JobContext``: the job's token and room (the kit server's bridged room
  takes the place of the one the job process made) and ``shutdown`` (recorded by
  ``SimulatedJob``).

Every accessor checks what it relies on and raises :class:`KitInternalsChanged` naming the
missing piece (a ``SimulatedRoom`` checks the seams when it is made); ``tests/test_kit_sdk.py``
exercises each one against the installed packages, so an upgrade that changes them fails
there first, by name.

Not here: the interface livekit-agents gives plugin authors, which the scripted models and
STT implement like every plugin does (``LLMStream._run`` / ``_event_ch``,
``RecognizeStream._input_ch``, ``ChunkedStream._run``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import JobContext
from livekit.rtc._proto import ffi_pb2 as proto_ffi
from livekit.rtc._proto import participant_pb2 as proto_participant
from livekit.rtc._proto import room_pb2 as proto_room
from livekit.rtc._proto import track_pb2 as proto_track

CHECKED_RTC_VERSION = "1.1.21"  # the ``livekit`` distribution (livekit.rtc)
CHECKED_AGENTS_VERSION = "1.8.9"

# the methods the kit's subclasses override to cut the FFI out; if the SDK renamed one, the
# override would be dead code and the SDK would call the FFI with a handle that does not exist
FFI_SEAMS: tuple[tuple[type, str], ...] = (
    (rtc.TextStreamWriter, "_send_header"),
    (rtc.TextStreamWriter, "_send_close"),
    (rtc.ByteStreamWriter, "_send_header"),
    (rtc.ByteStreamWriter, "_send_close"),
    (rtc.TextStreamReader, "_unsubscribe"),
    (rtc.ByteStreamReader, "_unsubscribe"),
    (rtc.LocalParticipant, "_perform_rpc_ffi"),
)

# pseudo writer handles: never handed to the FFI, only used as bookkeeping keys by the SDK
_writer_ids = itertools.count(1 << 40)


class KitInternalsChanged(RuntimeError):
    """A livekit internal the offline kit relies on is gone or changed shape."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"livekit internals changed: {what} (the offline kit was checked against livekit "
            f"{CHECKED_RTC_VERSION} and livekit-agents {CHECKED_AGENTS_VERSION}); see "
            "testing/room/_sdk.py and run tests/test_kit_sdk.py"
        )


def _require(obj: object, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise KitInternalsChanged(what) from None


def _replace(obj: object, name: str, value: object, what: str) -> None:
    _require(obj, name, what)  # only ever replace a field the SDK has
    setattr(obj, name, value)


def check_seams() -> None:
    """Raise :class:`KitInternalsChanged` if any of :data:`FFI_SEAMS` is gone."""
    for cls, name in FFI_SEAMS:
        _require(cls, name, f"{cls.__name__}.{name} (an FFI call the kit replaces)")


# -- the FFI's protobufs (livekit.rtc._proto) ---------------------------------------------

# what the SDK builds rooms, participants and publications from; the kit builds them with an
# invalid (0) handle, which ``FfiHandle`` never drops, so the SDK's classes are used unchanged
RoomInfo = proto_room.RoomInfo
OwnedParticipant = proto_participant.OwnedParticipant
ParticipantInfo = proto_participant.ParticipantInfo
PARTICIPANT_STATE_ACTIVE = proto_participant.PARTICIPANT_STATE_ACTIVE
OwnedTrackPublication = proto_track.OwnedTrackPublication
TrackPublicationInfo = proto_track.TrackPublicationInfo


# -- the room -----------------------------------------------------------------------------


def set_room_info(room: rtc.Room, info: RoomInfo) -> None:
    """Give the room its info (``Room._info``) and resolve ``await room.sid``
    (``Room._resolve_first_sid``), as the SDK does on connect."""
    _replace(room, "_info", info, "Room._info")
    _require(room, "_resolve_first_sid", "Room._resolve_first_sid()")(info.sid)


def set_departure_timeout(room: rtc.Room, seconds: float) -> None:
    """What the server reports as the room's departure timeout (``Room._info``)."""
    _require(room, "_info", "Room._info").departure_timeout = int(seconds)


def set_local_participant(room: rtc.Room, participant: rtc.LocalParticipant) -> None:
    """The agent's participant (``Room._local_participant``), set by the SDK on connect."""
    _replace(room, "_local_participant", participant, "Room._local_participant")


def set_connection_state(room: rtc.Room, state: int) -> None:
    """``room.connection_state`` (``Room._connection_state``), which the SDK's event loop
    updates from the FFI."""
    _replace(room, "_connection_state", state, "Room._connection_state")


def add_remote_participant(room: rtc.Room, owned: OwnedParticipant) -> rtc.RemoteParticipant:
    """A participant joins the room's ``remote_participants``
    (``Room._create_remote_participant``, which the SDK's event loop calls)."""
    create = _require(room, "_create_remote_participant", "Room._create_remote_participant()")
    return create(owned)


def remove_remote_participant(room: rtc.Room, identity: str) -> None:
    """A participant leaves the room's ``remote_participants`` (``Room._remote_participants``)."""
    del _require(room, "_remote_participants", "Room._remote_participants")[identity]


async def clean_up_on_disconnect(room: rtc.Room) -> None:
    """The SDK's own clean-up when a room disconnects: pending incoming RPCs cancelled
    (``Room._drain_rpc_invocation_tasks``), open readers woken with an error
    (``Room._error_stream_readers``), open writers dropped
    (``Room._dispose_open_stream_writers``)."""
    await _require(room, "_drain_rpc_invocation_tasks", "Room._drain_rpc_invocation_tasks()")()
    _require(room, "_error_stream_readers", "Room._error_stream_readers()")()
    _require(room, "_dispose_open_stream_writers", "Room._dispose_open_stream_writers()")()


def track_rpc_invocation(room: rtc.Room, task: asyncio.Task[Any]) -> None:
    """Keep an incoming RPC in ``Room._rpc_invocation_tasks``, so ``disconnect()`` cancels it
    as the SDK does for its own."""
    tasks = _require(room, "_rpc_invocation_tasks", "Room._rpc_invocation_tasks")
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def deliver_stream(
    room: rtc.Room,
    info: rtc.TextStreamInfo | rtc.ByteStreamInfo,
    content: str | bytes,
    sender_identity: str,
    *,
    key: int,
) -> bool:
    """Hand a complete incoming stream to the handler registered for its topic, as the SDK's
    event loop does (``Room._text_stream_handlers`` / ``_byte_stream_handlers``), keeping
    its reader in ``Room._text_stream_readers`` / ``_byte_stream_readers`` under ``key``
    until it is closed. False when no handler is registered for the topic."""
    kind = "text" if isinstance(info, rtc.TextStreamInfo) else "byte"
    handlers = _require(room, f"_{kind}_stream_handlers", f"Room._{kind}_stream_handlers")
    readers = _require(room, f"_{kind}_stream_readers", f"Room._{kind}_stream_readers")
    handler = handlers.get(info.topic)
    if handler is None:
        return False
    reader_cls = SimulatedTextStreamReader if kind == "text" else SimulatedByteStreamReader
    reader = reader_cls(info, on_close=lambda: readers.pop(key, None))
    readers[key] = reader
    reader.deliver_chunk(content)
    reader.deliver_end()
    handler(reader, sender_identity)
    return True


# -- participants -------------------------------------------------------------------------


def participant_info(participant: rtc.Participant) -> ParticipantInfo:
    """The protobuf the SDK reads a participant's properties from (``Participant._info``):
    the kit writes attributes, metadata, name and disconnect reason into it."""
    return _require(participant, "_info", "Participant._info")


def track_publications(participant: rtc.Participant) -> MutableMapping[str, Any]:
    """A participant's publications by SID (``Participant._track_publications``), which the
    SDK's event loop fills."""
    return _require(participant, "_track_publications", "Participant._track_publications")


def rpc_handlers(participant: rtc.LocalParticipant) -> MutableMapping[str, Any]:
    """The RPC methods registered on the local participant (``LocalParticipant._rpc_handlers``)."""
    return _require(participant, "_rpc_handlers", "LocalParticipant._rpc_handlers")


async def run_incoming_rpc(
    participant: rtc.LocalParticipant, invocation: rtc.RpcInvocationData
) -> str | None:
    """The SDK's chain for an RPC to the agent (``LocalParticipant._run_incoming_chain``:
    interceptors, response deadline, the registered handler), minus answering via the FFI."""
    run = _require(participant, "_run_incoming_chain", "LocalParticipant._run_incoming_chain()")
    return await run(invocation)


def rpc_error(code: rtc.RpcError.ErrorCode) -> rtc.RpcError:
    """The SDK's error for a built-in RPC failure code, with its message
    (``RpcError._built_in``)."""
    return _require(rtc.RpcError, "_built_in", "RpcError._built_in()")(code)


class OfflineLocalParticipant(rtc.LocalParticipant):
    """``rtc.LocalParticipant`` with no FFI handle behind it.

    It is built on the room's event queue (``Room._room_queue``, as the SDK builds it), and the
    innermost step of its outgoing RPC chain (``_perform_rpc_ffi``) calls :meth:`deliver_rpc`
    instead of the FFI; the interceptors before it are the SDK's.
    """

    def __init__(self, room: rtc.Room, owned_info: OwnedParticipant) -> None:
        super().__init__(_require(room, "_room_queue", "Room._room_queue"), owned_info)

    async def _perform_rpc_ffi(self, call: rtc.RpcCallInfo) -> str:
        return await self.deliver_rpc(call)

    async def deliver_rpc(self, call: rtc.RpcCallInfo) -> str:
        """Deliver the agent's RPC to its destination; the response payload."""
        raise NotImplementedError


# -- tracks and publications --------------------------------------------------------------


def attach_track(publication: rtc.TrackPublication, track: rtc.Track) -> None:
    """Give a publication its track (``TrackPublication._track``) and the track the
    publication's SID (``Track._info``), as the FFI's publish callback does."""
    _replace(publication, "_track", track, "TrackPublication._track")
    _require(track, "_info", "Track._info").sid = publication.sid


def detach_track(publication: rtc.TrackPublication) -> None:
    """Forget a publication's track once unpublished (``TrackPublication._track``)."""
    _replace(publication, "_track", None, "TrackPublication._track")


def set_track_room(track: rtc.Track, room: rtc.Room | None) -> None:
    """Tell a track which room it is published in (``Track._set_room``); None once unpublished."""
    _require(track, "_set_room", "Track._set_room()")(room)


def first_subscription(publication: rtc.LocalTrackPublication) -> asyncio.Future[None]:
    """The future ``wait_for_subscription()`` waits on
    (``LocalTrackPublication._first_subscription``), resolved when someone subscribes."""
    return _require(publication, "_first_subscription", "LocalTrackPublication._first_subscription")


def set_subscribed(publication: rtc.RemoteTrackPublication, subscribed: bool) -> None:
    """The ``subscribed`` flag of a participant's publication
    (``RemoteTrackPublication._subscribed``), which the SFU would confirm."""
    _replace(publication, "_subscribed", subscribed, "RemoteTrackPublication._subscribed")


# -- stream writers -----------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOpening:
    """What a writer asks to open, read from the SDK writer's options."""

    stream_id: str  # "" when the caller gave none
    topic: str
    attributes: dict[str, str]
    destination_identities: list[str]
    sender_identity: str
    total_size: int | None
    name: str = ""  # byte streams only
    mime_type: str = "text/plain"


class _OfflineWriter:
    """The FFI calls of the SDK's writers, replaced (see :class:`OfflineTextStreamWriter`)."""

    def opening(self) -> StreamOpening:
        """This writer's options (``_options``, ``_total_size``, ``_sender_identity``)."""
        options = _require(self, "_options", "StreamWriter._options")
        is_bytes = isinstance(self, rtc.ByteStreamWriter)
        return StreamOpening(
            stream_id=options.id,
            topic=options.topic,
            attributes=dict(options.attributes),
            destination_identities=list(options.destination_identities),
            sender_identity=_require(self, "_sender_identity", "StreamWriter._sender_identity"),
            total_size=_require(self, "_total_size", "StreamWriter._total_size"),
            name=options.name if is_bytes else "",
            mime_type=options.mime_type if is_bytes else "text/plain",
        )

    def open_stream(self, opening: StreamOpening) -> Any:
        """Open the stream; its ``rtc.TextStreamInfo`` / ``rtc.ByteStreamInfo``."""
        raise NotImplementedError

    def write_chunk(self, chunk: Any) -> None:
        """Send one chunk of an open stream."""
        raise NotImplementedError

    def close_stream(self, reason: str, attributes: dict[str, str]) -> None:
        """Send the end of the stream (its trailer attributes)."""
        raise NotImplementedError

    async def open(self) -> None:
        """Open the stream, as the SDK's ``stream_text`` / ``stream_bytes`` do after building
        the writer (``_send_header``)."""
        await self._send_header()

    async def _send_header(self) -> None:
        info = self.open_stream(self.opening())
        _replace(self, "_info", info, "StreamWriter._info")
        # no native writer exists: the handle is a bookkeeping key only, never dropped
        _replace(self, "_writer_handle", next(_writer_ids), "StreamWriter._writer_handle")

    async def _write(self, chunk: Any) -> None:
        # the SDK's write() checks, then the chunk goes to write_chunk instead of the FFI
        async with _require(self, "_write_lock", "StreamWriter._write_lock"):
            if _require(self, "_closed", "StreamWriter._closed"):
                raise RuntimeError("Cannot write after stream is closed")
            if _require(self, "_writer_handle", "StreamWriter._writer_handle") is None:
                raise RuntimeError("Stream is not open")
            self.write_chunk(chunk)

    async def _send_close(self, *, reason: str, attributes: dict[str, str] | None) -> None:
        self.close_stream(reason, dict(attributes or {}))


class OfflineTextStreamWriter(_OfflineWriter, rtc.TextStreamWriter):
    """``rtc.TextStreamWriter`` whose FFI calls (``_send_header``, ``write``,
    ``_send_close``) go to :meth:`open_stream`, :meth:`write_chunk` and :meth:`close_stream`;
    the SDK's ``aclose()`` (double close raises, open-writer bookkeeping) still runs."""

    async def write(self, text: str) -> None:
        await self._write(text)


class OfflineByteStreamWriter(_OfflineWriter, rtc.ByteStreamWriter):
    """``rtc.ByteStreamWriter`` with the same seams as :class:`OfflineTextStreamWriter`."""

    async def write(self, data: bytes) -> None:
        await self._write(data)


# -- stream readers -----------------------------------------------------------------------


class _LocalReader:
    """The SDK reader's state, fed from a local queue instead of an FFI subscription.

    The SDK reader's ``__init__`` is not called (it would ask the FFI for a reader handle):
    this one sets the same fields, and ``tests/test_kit_sdk.py`` checks they are the same.
    ``_EVENT`` names the FFI event field the reader reads.
    """

    _EVENT: str

    def __init__(self, info: Any, *, on_close: Callable[[], None] | None = None) -> None:
        self._info = info
        self._reader_handle = 0
        self._on_close = on_close
        self._closed = False
        self._error: rtc.StreamError | None = None
        self._queue: asyncio.Queue[proto_ffi.FfiEvent] = asyncio.Queue()

    def _unsubscribe(self) -> None:
        # nothing to unsubscribe from: the queue is local
        pass

    def deliver_chunk(self, content: str | bytes) -> None:
        """Queue a chunk as the FFI would deliver it."""
        event = proto_ffi.FfiEvent()
        reader_event = getattr(event, self._EVENT)
        reader_event.reader_handle = self._reader_handle
        reader_event.chunk_received.content = content
        self._queue.put_nowait(event)

    def deliver_end(self, attributes: dict[str, str] | None = None, error: str = "") -> None:
        """Queue the end of the stream (trailer attributes, or an error)."""
        event = proto_ffi.FfiEvent()
        reader_event = getattr(event, self._EVENT)
        eos = reader_event.eos
        eos.SetInParent()
        reader_event.reader_handle = self._reader_handle
        if attributes:
            eos.attributes.update(attributes)
        if error:
            eos.error.description = error
        self._queue.put_nowait(event)


class SimulatedTextStreamReader(_LocalReader, rtc.TextStreamReader):
    """An incoming text stream handed to a handler registered with
    ``room.register_text_stream_handler`` (RoomIO's ``lk.chat`` handler, for one)."""

    _EVENT = "text_stream_reader_event"


class SimulatedByteStreamReader(_LocalReader, rtc.ByteStreamReader):
    """An incoming byte stream handed to a handler registered with
    ``room.register_byte_stream_handler`` (the session host's messages, for one)."""

    _EVENT = "byte_stream_reader_event"


# -- livekit-agents' job context ----------------------------------------------------------


def job_token(ctx: JobContext) -> str:
    """The token the job was given to join its room (``JobContext._info.token``)."""
    return _require(_require(ctx, "_info", "JobContext._info"), "token", "RunningJobInfo.token")


def replace_job_room(ctx: JobContext, room: rtc.Room) -> rtc.Room:
    """Make ``room`` the job's room (``JobContext._room``); the room it replaced."""
    original = _require(ctx, "_room", "JobContext._room")
    _replace(ctx, "_room", room, "JobContext._room")
    return original


def intercept_shutdown(ctx: JobContext, on_shutdown: Callable[..., None]) -> None:
    """Call ``on_shutdown(reason)`` instead of ``ctx.shutdown(reason)``: a fake job context
    ignores the call a real worker would end the job on (an instance attribute shadows it)."""
    _require(ctx, "shutdown", "JobContext.shutdown()")
    ctx.shutdown = on_shutdown  # type: ignore[method-assign]  # shadows it, on purpose
