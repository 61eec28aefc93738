"""The livekit internals the offline kit relies on, pinned.

``testing/room/_sdk.py`` is the one module of the kit that touches livekit internals. These
tests exercise each of its functions and seams against the installed livekit and
livekit-agents. After an upgrade, a failure here names what changed; fix ``_sdk.py`` before
anything else (the rest of the kit's tests fail too, less clearly).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pytest
from livekit import rtc
from livekit.agents.testing import fake_job_context

from {{ cookiecutter.package_name }}.testing import SimulatedJob, SimulatedRoom
from {{ cookiecutter.package_name }}.testing.room import _sdk
from {{ cookiecutter.package_name }}.testing.room.sfu import (
    SimulatedRemoteTrackPublication,
    participant_info,
    track_publication_info,
)

USER = "user-1"
Code = rtc.RpcError.ErrorCode


def test_checked_versions_are_installed() -> None:
    assert version("livekit") == _sdk.CHECKED_RTC_VERSION, (
        "livekit (rtc) was upgraded: run this file, fix testing/room/_sdk.py, then bump "
        "CHECKED_RTC_VERSION"
    )
    assert version("livekit-agents") == _sdk.CHECKED_AGENTS_VERSION, (
        "livekit-agents was upgraded: run this file, fix testing/room/_sdk.py, then bump "
        "CHECKED_AGENTS_VERSION"
    )


@pytest.mark.parametrize(
    ("cls", "name"), _sdk.FFI_SEAMS, ids=[f"{c.__name__}.{n}" for c, n in _sdk.FFI_SEAMS]
)
def test_each_ffi_seam_the_kit_overrides_is_still_the_sdks(cls: type, name: str) -> None:
    assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} is gone from livekit"


def test_a_missing_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(_sdk.KitInternalsChanged, match=r"Room\._info .*livekit 1\.1\.21"):
        _sdk.set_departure_timeout(object(), 1)  # type: ignore[arg-type]  # not a Room, on purpose
    monkeypatch.setattr(_sdk, "FFI_SEAMS", ((rtc.TextStreamWriter, "_send_gone"),))
    with pytest.raises(_sdk.KitInternalsChanged, match=r"TextStreamWriter\._send_gone"):
        _sdk.check_seams()


def assigned_fields(init: Callable[..., Any]) -> set[str]:
    """The ``self.<name>`` a method assigns, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


@pytest.mark.parametrize(
    ("reader_cls", "info"),
    [
        (_sdk.SimulatedTextStreamReader, rtc.TextStreamInfo("s", "text/plain", "t", 0, 0, {}, [])),
        (_sdk.SimulatedByteStreamReader, rtc.ByteStreamInfo("s", "x/y", "t", 0, 0, {}, "n")),
    ],
    ids=["text", "byte"],
)
async def test_readers_set_the_fields_the_sdk_reader_sets(reader_cls: type, info: object) -> None:
    """The kit's readers skip the SDK reader's ``__init__`` (it asks the FFI for a handle) and
    set its fields themselves: the same fields, or the SDK's own methods break on them."""
    sdk_reader: type[Any] = next(
        c for c in reader_cls.__mro__ if c.__module__.startswith("livekit.rtc")
    )
    reader = reader_cls(info)
    assert set(vars(reader)) == assigned_fields(sdk_reader.__init__)


async def test_room_info_sid_local_participant_and_connection_state() -> None:
    bare = rtc.Room()
    sid = asyncio.ensure_future(bare.sid)  # waits for the first SID, as before a connect
    _sdk.set_room_info(bare, _sdk.RoomInfo(sid="RM_first", name="bare", departure_timeout=5))
    assert (await asyncio.wait_for(sid, 1), bare.name, bare.departure_timeout) == (
        "RM_first",
        "bare",
        5,
    )
    _sdk.set_departure_timeout(bare, 30)
    assert bare.departure_timeout == 30

    room = SimulatedRoom("named", agent_identity="agent", metadata="m", sid="RM_fixed")
    assert (await room.sid, room.name, room.metadata) == ("RM_fixed", "named", "m")
    assert room.local_participant.identity == "agent"
    assert room.local_participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    assert room.connection_state == rtc.ConnectionState.CONN_CONNECTED
    _sdk.set_connection_state(room, rtc.ConnectionState.CONN_RECONNECTING)
    assert room.connection_state == rtc.ConnectionState.CONN_RECONNECTING
    _sdk.set_local_participant(bare, room.local_participant)
    assert bare.local_participant is room.local_participant
    await room.disconnect(reason=rtc.DisconnectReason.ROOM_DELETED)
    assert room.connection_state == rtc.ConnectionState.CONN_DISCONNECTED
    assert room.local_participant.disconnect_reason == rtc.DisconnectReason.ROOM_DELETED


async def test_remote_participants_their_info_and_publications() -> None:
    room = SimulatedRoom()
    participant = _sdk.add_remote_participant(room, participant_info(USER, attributes={"a": "1"}))
    assert room.remote_participants[USER] is participant
    info = _sdk.participant_info(participant)
    info.attributes["b"] = "2"
    info.disconnect_reason = rtc.DisconnectReason.CLIENT_INITIATED
    assert participant.attributes == {"a": "1", "b": "2"}
    assert participant.disconnect_reason == rtc.DisconnectReason.CLIENT_INITIATED

    owned = track_publication_info(
        name="mic", kind=rtc.TrackKind.KIND_AUDIO, source=rtc.TrackSource.SOURCE_MICROPHONE,
        remote=True,
    )  # fmt: skip
    publication = SimulatedRemoteTrackPublication(owned)
    _sdk.track_publications(participant)[publication.sid] = publication
    assert participant.track_publications == {publication.sid: publication}
    publication.set_subscribed(True)
    assert publication.subscribed

    _sdk.remove_remote_participant(room, USER)
    assert USER not in room.remote_participants
    await room.disconnect()


async def test_a_published_track_its_room_and_first_subscription() -> None:
    room = SimulatedRoom()
    room.add_participant(USER)  # subscribes to what the agent publishes
    source = rtc.AudioSource(24000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("voice", source)
    publication = await room.local_participant.publish_track(track)
    assert publication.track is track and track.sid == publication.sid  # attach_track
    await asyncio.wait_for(publication.wait_for_subscription(), 1)  # first_subscription
    assert _sdk.first_subscription(publication).done()

    _sdk.set_track_room(track, room)
    await room.local_participant.unpublish_track(publication.sid)  # set_track_room(None)
    assert publication.track is None  # detach_track
    _sdk.attach_track(publication, track)
    assert publication.track is track
    _sdk.detach_track(publication)
    await source.aclose()
    await room.disconnect()


async def test_rpc_handlers_incoming_chain_errors_and_outgoing_seam() -> None:
    room = SimulatedRoom()
    room.add_participant(USER)
    local = room.local_participant
    local.register_rpc_method("echo", lambda data: data.payload)
    assert "echo" in _sdk.rpc_handlers(local)
    invocation = rtc.RpcInvocationData("r1", USER, "hi", 5.0, "echo")
    assert await _sdk.run_incoming_rpc(local, invocation) == "hi"

    error = _sdk.rpc_error(Code.UNSUPPORTED_METHOD)
    assert (error.code, error.message) == (
        Code.UNSUPPORTED_METHOD,
        rtc.RpcError.ErrorMessage[Code.UNSUPPORTED_METHOD],
    )

    # the agent's perform_rpc goes through the SDK's chain to the _perform_rpc_ffi seam
    room.set_participant_rpc_handler(USER, "where", lambda data: f"here:{data.payload}")
    assert await local.perform_rpc(destination_identity=USER, method="where", payload="x") == (
        "here:x"
    )
    await room.disconnect()


async def test_disconnect_cancels_a_tracked_incoming_rpc() -> None:
    """``track_rpc_invocation`` + ``clean_up_on_disconnect``: the SDK's own drain."""
    room = SimulatedRoom()
    room.add_participant(USER)
    started = asyncio.Event()

    async def slow(data: rtc.RpcInvocationData) -> str:
        started.set()
        await asyncio.sleep(30)
        return ""

    room.local_participant.register_rpc_method("slow", slow)
    call = asyncio.ensure_future(room.perform_rpc_as(USER, "slow"))
    await asyncio.wait_for(started.wait(), 1)
    await asyncio.wait_for(room.disconnect(), 1)
    with pytest.raises(rtc.RpcError) as ended:
        await call
    assert ended.value.code == Code.RECIPIENT_DISCONNECTED


async def test_writer_seams_record_what_the_agent_writes() -> None:
    room = SimulatedRoom()
    room.add_participant(USER)
    local = room.local_participant
    writer = await local.stream_text(
        topic="notes", attributes={"a": "1"}, stream_id="ST_1", total_size=5,
        destination_identities=[USER],
    )  # fmt: skip
    assert (writer.info.stream_id, writer.info.size, writer.info.topic) == ("ST_1", 5, "notes")
    await writer.write("hello")
    await writer.aclose(reason="done", attributes={"b": "2"})
    with pytest.raises(RuntimeError, match="after stream is closed"):
        await writer.write("late")
    text = room.text_streams[-1]
    assert (text.stream_id, text.sender_identity, text.destination_identities) == (
        "ST_1",
        "agent",
        [USER],
    )
    assert (text.text, text.attributes, text.close_reason) == (
        "hello",
        {"a": "1", "b": "2"},
        "done",
    )

    data = await local.stream_bytes("f.bin", mime_type="application/x-kit", total_size=3)
    await data.write(b"abc")
    await data.aclose()
    sent = room.byte_streams[-1]
    assert (sent.name, sent.mime_type, sent.data, sent.closed) == (
        "f.bin",
        "application/x-kit",
        b"abc",
        True,
    )
    await room.disconnect()


async def test_incoming_streams_reach_the_handler_through_the_sdk_readers() -> None:
    room = SimulatedRoom()
    room.add_participant(USER)
    got: list[tuple[str, object, dict[str, str] | None]] = []
    reads: list[asyncio.Task[None]] = []

    async def read_text(reader: rtc.TextStreamReader, who: str) -> None:
        got.append((who, await reader.read_all(), reader.info.attributes))

    async def read_bytes(reader: rtc.ByteStreamReader, who: str) -> None:
        got.append((who, b"".join([chunk async for chunk in reader]), reader.info.attributes))

    room.register_text_stream_handler(
        "notes", lambda reader, who: reads.append(asyncio.ensure_future(read_text(reader, who)))
    )
    room.register_byte_stream_handler(
        "files", lambda reader, who: reads.append(asyncio.ensure_future(read_bytes(reader, who)))
    )
    await room.send_text_as(USER, "hi", topic="notes", attributes={"k": "v"})
    await room.send_bytes_as(USER, b"\x00\x01", topic="files")
    await asyncio.wait_for(asyncio.gather(*reads), 1)
    assert got == [(USER, "hi", {"k": "v"}), (USER, b"\x00\x01", {})]

    unheard = rtc.TextStreamInfo("s", "text/plain", "nobody-listens", 0, 2, {}, [])
    assert not _sdk.deliver_stream(room, unheard, "hi", USER, key=1)
    await room.disconnect()


async def test_job_token_room_and_shutdown() -> None:
    room = SimulatedRoom()
    with fake_job_context(room=room, agent_identity="agent") as ctx:
        assert _sdk.job_token(ctx) == ""  # a fake job has no token; a dispatched one does
        other = SimulatedRoom("other")
        assert _sdk.replace_job_room(ctx, other) is room
        assert ctx.room is other
        reasons: list[str] = []
        _sdk.intercept_shutdown(ctx, reasons.append)
        ctx.shutdown("bye")
        assert reasons == ["bye"]
        await other.disconnect()

    with SimulatedJob(room) as job:
        job.ctx.shutdown("participant left")
    assert job.shutdown_reasons == ["participant left"]
    await room.disconnect()
