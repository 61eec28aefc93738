"""A job's room under the kit's LiveKit server (``testing.livekit_server``), in a job process.

``BridgedRoom`` is a :class:`~.simulated.SimulatedRoom` that is *not* connected at construction:
``connect(url, token)`` (what ``JobContext.connect`` calls) joins the server's ``/kit/rtc``
with the job's token, as ``rtc.Room.connect`` joins the SFU. From then on the server's room
drives it: participants connect and disconnect, their typed lines reach RoomIO as ``lk.chat``
streams, and a closed room disconnects it with ``ROOM_DELETED``. The agent's final transcript
lines and track publications are reported back, so the test sees what the room heard.

:func:`install_bridged_room` puts a bridged room in place of the ``rtc.Room`` livekit's job
process made, and forwards its ``disconnected`` event to the original room, on which the job
process ends the job: the job ends when the room goes, as on a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any
from urllib.parse import urlparse

import aiohttp
import jwt
from livekit import rtc
from livekit.agents import JobContext
from livekit.agents.types import ATTRIBUTE_TRANSCRIPTION_FINAL, TOPIC_TRANSCRIPTION

from . import _sdk
from .records import TextStreamRecord, TimelineEvent, TrackRecord
from .simulated import SimulatedRoom

__all__ = ["BridgedRoom", "install_bridged_room"]

_KINDS = {
    "agent": rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
    "standard": rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
}


class BridgedRoom(SimulatedRoom):
    """A simulated room joined through the kit server; see the module docstring."""

    def __init__(self, name: str, agent_identity: str, *, sid: str | None = None) -> None:
        super().__init__(name=name, agent_identity=agent_identity, sid=sid)
        _sdk.set_connection_state(self, rtc.ConnectionState.CONN_DISCONNECTED)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, url: str, token: str, options: rtc.RoomOptions | None = None) -> None:
        """Join the server's room with the job's token."""
        parsed = urlparse(url)
        scheme = "http" if parsed.scheme in ("ws", "http") else "https"
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(
            f"{scheme}://{parsed.netloc}/kit/rtc",
            params={"access_token": token, "pid": str(os.getpid())},
        )
        joined = await self._ws.receive_json()
        _sdk.set_departure_timeout(self, joined["room"]["departure_timeout"])
        _sdk.set_connection_state(self, rtc.ConnectionState.CONN_CONNECTED)
        for other in joined["participants"]:
            self.add_participant(other["identity"], kind=_KINDS[other["kind"]])
        self.add_observer(self._report)
        self._tasks = [
            asyncio.create_task(self._read(), name="bridged_room_read"),
            asyncio.create_task(self._write(), name="bridged_room_write"),
        ]

    async def disconnect(
        self, *, reason: rtc.DisconnectReason.ValueType = rtc.DisconnectReason.CLIENT_INITIATED
    ) -> None:
        """Leave: the server removes the agent at once (a crash leaves it listed a while)."""
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionError):
                await self._ws.send_str(json.dumps({"t": "leave"}))
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        await super().disconnect(reason=reason)

    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            kind = message["t"]
            if kind == "participant_connected":
                self.add_participant(message["identity"], kind=_KINDS[message["kind"]])
            elif kind == "participant_disconnected":
                if message["identity"] in self.remote_participants:
                    self.remove_participant(message["identity"])
            elif kind == "chat":
                await self.send_chat(message["from"], message["text"])
            elif kind == "rpc":
                self._tasks.append(asyncio.create_task(self._answer_rpc(message)))
            elif kind == "room_closed":
                await self.disconnect(reason=rtc.DisconnectReason.ROOM_DELETED)
                return
        # the server went away: as the SDK does when its signal connection is lost for good
        await self.disconnect(reason=rtc.DisconnectReason.SIGNAL_CLOSE)

    async def _answer_rpc(self, call: dict[str, Any]) -> None:
        """A participant's RPC to the agent, through the SDK's own incoming chain."""
        try:
            payload = await self.perform_rpc_as(call["from"], call["method"], call["payload"])
            self._outbox.put_nowait({"t": "rpc_result", "id": call["id"], "payload": payload})
        except rtc.RpcError as exc:
            error = {"code": exc.code, "message": exc.message}
            self._outbox.put_nowait({"t": "rpc_result", "id": call["id"], "error": error})

    async def _write(self) -> None:
        assert self._ws is not None
        while True:
            message = await self._outbox.get()
            await self._ws.send_str(json.dumps(message))

    def _report(self, event: TimelineEvent) -> None:
        record = event.record
        if (
            event.kind == "text_stream_closed"
            and isinstance(record, TextStreamRecord)
            and record.direction == "outgoing"
            and record.topic == TOPIC_TRANSCRIPTION
            and record.attributes.get(ATTRIBUTE_TRANSCRIPTION_FINAL) == "true"
        ):
            self._outbox.put_nowait({"t": "line", "text": record.text})
        elif (
            event.kind == "track_published"
            and isinstance(record, TrackRecord)
            and record.participant_identity == self.local_participant.identity
        ):
            self._outbox.put_nowait({"t": "track", "sid": record.sid})


def install_bridged_room(ctx: JobContext) -> BridgedRoom:
    """Give the job a bridged room in place of the ``rtc.Room`` its process made."""
    identity = jwt.decode(_sdk.job_token(ctx), options={"verify_signature": False})["sub"]
    room = BridgedRoom(ctx.job.room.name, identity, sid=ctx.job.room.sid or None)
    original = _sdk.replace_job_room(ctx, room)
    room.on("disconnected", lambda reason: original.emit("disconnected", reason))
    return room
