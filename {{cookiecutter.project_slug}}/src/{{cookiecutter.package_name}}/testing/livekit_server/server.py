"""A local stand-in for the LiveKit server's control plane: agent dispatch and room lifecycle.

Real worker processes (livekit's own ``AgentServer``, its job process pool and IPC) register
with it over the worker protocol (``/agent``: protobuf over a WebSocket), exactly as with
livekit-server; ``livekit.api.LiveKitAPI`` talks to its Twirp API (``RoomService`` and
``AgentDispatchService``; see :mod:`.twirp`). No media flows: a job's room is a
``testing.room.bridged.BridgedRoom`` that joins through ``/kit/rtc`` with the job's token, and
the participants are scripted by the test (:meth:`LocalLiveKitServer.join` returns a
:class:`KitParticipant` that types and leaves).

It reproduces what was measured on livekit-server 1.9.9 (DESIGN.md, "Facts about the real
LiveKit server"); the timings are arguments so tests can shorten them:

- automatic dispatch ``dispatch_delay_s`` (about 3 s) after the first participant creates a
  room, to a worker registered without an agent name; a participant's token may instead name
  the agent to dispatch (``join(agent_name=...)``, as ``token`` does);
- ``CreateDispatch`` puts a new job into a room on a worker the server picks (round robin over
  the live ones, possibly one that already has an agent there); ``restart_policy`` is ignored;
- a worker whose connection drops has its jobs failed (``JS_FAILED``) and never re-dispatched;
  an agent whose connection drops without leaving stays listed ``dead_agent_linger_s`` (about
  22 s) before it is removed;
- a room closes ``departure_timeout`` seconds (20 unless the token set it) after its last
  participant other than agents left; its agents are disconnected (``ROOM_DELETED``), which ends
  their jobs. The next join with that name creates a new room.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from functools import partial
from typing import Any

from aiohttp import WSMsgType, web
from livekit import api, rtc
from livekit.protocol import agent as agent_pb
from livekit.protocol import models as models_pb

from ..room.sfu import new_sid
from .rooms import AGENT, STANDARD, AgentLine, KitJob, KitRoom
from .twirp import handle_twirp

__all__ = ["AgentLine", "KitJob", "KitParticipant", "KitRoom", "LocalLiveKitServer"]

logger = logging.getLogger(__name__)


class KitParticipant:
    """A scripted participant connected to the server (a frontend, from the server's view)."""

    def __init__(self, server: LocalLiveKitServer, room: KitRoom, identity: str) -> None:
        self.server, self.room, self.identity = server, room, identity

    async def say(self, text: str) -> None:
        """Type a line (an ``lk.chat`` text stream to every agent in the room)."""
        if self.room.closed or self.identity not in self.room.participants:
            raise RuntimeError(f"{self.identity!r} is not in room {self.room.name!r}")
        self.room.lines.append(AgentLine(time.monotonic(), self.identity, "user", text))
        await self.server._broadcast(self.room, {"t": "chat", "from": self.identity, "text": text})

    async def rpc(self, method: str, payload: str = "", within: float = 15.0) -> str:
        """Call an RPC method on the room's latest agent; its response, or ``rtc.RpcError``
        with the code and message the agent answered."""
        agents = [who for who in self.room.agents() if who in self.room.bridges]
        if not agents:
            raise RuntimeError(f"no agent is connected in room {self.room.name!r}")
        call_id = str(next(self.server._turn))
        answer = asyncio.get_running_loop().create_future()
        self.server._rpc_answers[call_id] = answer
        message = {"t": "rpc", "id": call_id, "from": self.identity, "method": method,
                   "payload": payload}  # fmt: skip
        await _send(self.room.bridges[agents[-1]], message)
        try:
            result = await asyncio.wait_for(answer, within)
        finally:
            self.server._rpc_answers.pop(call_id, None)
        if "error" in result:
            raise rtc.RpcError(result["error"]["code"], result["error"]["message"])
        return result["payload"]

    async def leave(self) -> None:
        """Disconnect (a closed tab): the room's departure timer starts if nobody else is left."""
        await self.server._remove_participant(self.room, self.identity)


class LocalLiveKitServer:
    """The LiveKit server, minus media; see the module docstring. ``async with`` starts it."""

    def __init__(
        self,
        *,
        api_key: str = "devkey",
        api_secret: str = "kit-secret-long-enough-for-hs256-keys",
        dispatch_delay_s: float = 3.0,
        dead_agent_linger_s: float = 22.0,
        departure_timeout_s: float = 20.0,
    ) -> None:
        self.api_key, self.api_secret = api_key, api_secret
        self.dispatch_delay_s = dispatch_delay_s
        self.dead_agent_linger_s = dead_agent_linger_s
        self.departure_timeout_s = departure_timeout_s
        self.rooms: dict[str, KitRoom] = {}
        self.jobs: dict[str, KitJob] = {}
        self.workers: dict[str, str] = {}  # worker id -> agent name, while connected
        self._worker_ws: dict[str, web.WebSocketResponse] = {}
        self._answers: dict[str, asyncio.Future[agent_pb.AvailabilityResponse]] = {}
        self._rpc_answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._turn = itertools.count()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """What LIVEKIT_URL is set to."""
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LocalLiveKitServer:
        app = web.Application()
        app.router.add_get("/agent", self._agent_ws)
        app.router.add_get("/kit/rtc", self._rtc_ws)
        app.router.add_post("/twirp/livekit.{service}/{method}", partial(handle_twirp, self))
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for room in list(self.rooms.values()):
            await self._close_room(room)
        for ws in list(self._worker_ws.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what a test does and sees ---------------------------------------------------------

    async def join(
        self,
        room: str,
        identity: str,
        *,
        departure_timeout: float | None = None,
        agent_name: str | None = None,
    ) -> KitParticipant:
        """A participant connects; the first one creates the room and gets an agent dispatched
        (``agent_name``: the one their token names; None: automatic dispatch).
        ``departure_timeout``: the room configuration in their token (None: the default)."""
        live = self.rooms.get(room)
        if live is None:
            timeout = self.departure_timeout_s if departure_timeout is None else departure_timeout
            live = self.rooms[room] = KitRoom(room, new_sid("RM_"), timeout)
            self._spawn(self._dispatch_later(live, agent_name or ""))
        if identity in live.participants:
            raise ValueError(f"{identity!r} is already in room {room!r}")
        await self._add_participant(live, identity, STANDARD)
        return KitParticipant(self, live, identity)

    async def wait_for(self, predicate: Any, within: float = 20.0) -> None:
        """Wait until ``predicate()`` holds (checked whenever the server's state changes);
        TimeoutError after ``within`` seconds."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), within)

    async def wait_for_agent_line(
        self, room: KitRoom, starting: str, within: float = 30.0
    ) -> AgentLine:
        """The first agent line of ``room`` that starts with ``starting`` (waiting for it);
        AssertionError naming what was heard after ``within`` seconds."""

        def found() -> AgentLine | None:
            return next((x for x in room.agent_lines() if x.text.startswith(starting)), None)

        try:
            await self.wait_for(lambda: found() is not None, within)
        except TimeoutError:
            heard = [line.text for line in room.agent_lines()]
            raise AssertionError(
                f"no agent line starting {starting!r} within {within} s; heard {heard}"
            ) from None
        line = found()
        assert line is not None
        return line

    # -- rooms and participants ------------------------------------------------------------

    async def _add_participant(self, room: KitRoom, identity: str, kind: str) -> None:
        room.participants[identity] = kind
        if kind != AGENT and room.close_timer is not None:
            room.close_timer.cancel()
            room.close_timer = None
        await self._broadcast(
            room, {"t": "participant_connected", "identity": identity, "kind": kind}, identity
        )
        await self._notify()

    async def _remove_participant(self, room: KitRoom, identity: str) -> None:
        if room.participants.pop(identity, None) is None:
            return
        room.bridges.pop(identity, None)
        await self._broadcast(room, {"t": "participant_disconnected", "identity": identity})
        if not room.people() and not room.closed and room.close_timer is None:
            loop = asyncio.get_running_loop()
            room.close_timer = loop.call_later(
                room.departure_timeout, lambda: self._spawn(self._close_room(room))
            )
        await self._notify()

    async def _close_room(self, room: KitRoom) -> None:
        if room.closed:
            return
        room.closed = True
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        for ws in list(room.bridges.values()):
            await _send(ws, {"t": "room_closed"})
        await self._notify()

    async def _broadcast(self, room: KitRoom, message: dict[str, Any], skip: str = "") -> None:
        for identity, ws in list(room.bridges.items()):
            if identity != skip:
                await _send(ws, message)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- dispatch ------------------------------------------------------------------------

    async def _dispatch_later(self, room: KitRoom, agent_name: str) -> None:
        await asyncio.sleep(self.dispatch_delay_s)
        if not room.closed:
            await self.dispatch(room.name, agent_name)

    async def dispatch(self, room_name: str, agent_name: str, metadata: str = "") -> KitJob:
        """Put a job into a room (what ``CreateDispatch`` does); it waits for a worker."""
        room = self.rooms.get(room_name)
        if room is None:
            room = self.rooms[room_name] = KitRoom(room_name, new_sid("RM_"), 300.0)
        job = KitJob(new_sid("AJ_"), room_name, agent_name, metadata)
        self.jobs[job.id] = job
        self._spawn(self._assign(room, job))
        return job

    async def _assign(self, room: KitRoom, job: KitJob) -> None:
        while not room.closed:
            candidates = [w for w, name in self.workers.items() if name == job.agent_name]
            if candidates:
                worker_id = candidates[next(self._turn) % len(candidates)]
                if await self._offer(worker_id, room, job):
                    return
            await asyncio.sleep(0.5)  # no worker for it yet: the dispatch stays pending

    async def _offer(self, worker_id: str, room: KitRoom, job: KitJob) -> bool:
        ws = self._worker_ws.get(worker_id)
        if ws is None:
            return False
        proto = agent_pb.Job(
            id=job.id,
            dispatch_id=job.id.replace("AJ_", "AD_"),
            type=agent_pb.JobType.JT_ROOM,
            room=models_pb.Room(sid=room.sid, name=room.name),
            metadata=job.metadata,
            agent_name=job.agent_name,
        )
        answer = self._answers[job.id] = asyncio.get_running_loop().create_future()
        await ws.send_bytes(
            agent_pb.ServerMessage(
                availability=agent_pb.AvailabilityRequest(job=proto)
            ).SerializeToString()
        )
        try:
            response = await asyncio.wait_for(answer, 10)
        except (TimeoutError, ConnectionError):
            return False
        finally:
            self._answers.pop(job.id, None)
        if not response.available:
            return False
        identity = response.participant_identity or f"agent-{job.id}"
        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_kind("agent")
            .with_grants(api.VideoGrants(room_join=True, room=room.name, agent=True))
            .to_jwt()
        )
        job.worker_id, job.agent_identity, job.status = worker_id, identity, "JS_RUNNING"
        assignment = agent_pb.JobAssignment(job=proto, url=self.url, token=token)
        await ws.send_bytes(agent_pb.ServerMessage(assignment=assignment).SerializeToString())
        await self._notify()
        return True

    # -- the worker protocol -------------------------------------------------------------

    async def _agent_ws(self, request: web.Request) -> web.WebSocketResponse:
        self.verify(request.headers.get("Authorization", "").removeprefix("Bearer "))
        ws = web.WebSocketResponse(heartbeat=10)
        await ws.prepare(request)
        worker_id: str | None = None
        try:
            async for frame in ws:
                if frame.type != WSMsgType.BINARY:
                    continue
                message = agent_pb.WorkerMessage.FromString(frame.data)
                which = message.WhichOneof("message")
                if which == "register":
                    worker_id = new_sid("AW_")
                    info = models_pb.ServerInfo(version="kit", protocol=16)
                    reply = agent_pb.RegisterWorkerResponse(worker_id=worker_id, server_info=info)
                    await ws.send_bytes(agent_pb.ServerMessage(register=reply).SerializeToString())
                    self.workers[worker_id] = message.register.agent_name
                    self._worker_ws[worker_id] = ws
                    await self._notify()
                elif which == "availability":
                    answer = self._answers.get(message.availability.job_id)
                    if answer is not None and not answer.done():
                        answer.set_result(message.availability)
                elif which == "update_job":
                    job = self.jobs.get(message.update_job.job_id)
                    if job is not None:
                        job.status = agent_pb.JobStatus.Name(message.update_job.status)
                        await self._notify()
        finally:
            if worker_id is not None:
                await self._worker_gone(worker_id)
        return ws

    async def _worker_gone(self, worker_id: str) -> None:
        """Its jobs fail and are not dispatched again (what livekit-server 1.9.9 does)."""
        self.workers.pop(worker_id, None)
        self._worker_ws.pop(worker_id, None)
        for job in self.jobs.values():
            if job.worker_id == worker_id and job.status in ("JS_PENDING", "JS_RUNNING"):
                job.status = "JS_FAILED"
        await self._notify()

    # -- the rooms' side: bridged rooms in job processes ---------------------------------

    async def _rtc_ws(self, request: web.Request) -> web.WebSocketResponse:
        claims = self.verify(request.query.get("access_token", ""))
        room = self.rooms.get(claims.video.room if claims.video else "")
        if room is None:
            raise web.HTTPNotFound(text="requested room does not exist")
        identity = claims.identity
        ws = web.WebSocketResponse(heartbeat=10)
        await ws.prepare(request)
        others = [{"identity": who, "kind": kind} for who, kind in room.participants.items()]
        info = {"sid": room.sid, "name": room.name, "departure_timeout": room.departure_timeout}
        await _send(ws, {"t": "joined", "room": info, "participants": others})
        room.bridges[identity] = ws
        room.agent_pids[identity] = int(request.query.get("pid", "0"))
        await self._add_participant(room, identity, AGENT)
        left = False
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                if message["t"] == "leave":
                    left = True
                elif message["t"] == "line":
                    line = AgentLine(time.monotonic(), identity, "agent", message["text"])
                    room.lines.append(line)
                    await self._notify()
                elif message["t"] == "rpc_result":
                    answer = self._rpc_answers.get(message["id"])
                    if answer is not None and not answer.done():
                        answer.set_result(message)
                elif message["t"] == "track":
                    room.agent_tracks.append(message["sid"])
                    await self._notify()
        finally:
            if left or room.closed:
                await self._remove_participant(room, identity)
            else:  # the connection dropped: the server keeps it listed until it times out
                room.bridges.pop(identity, None)
                await asyncio.sleep(self.dead_agent_linger_s)
                await self._remove_participant(room, identity)
        return ws

    # -- tokens --------------------------------------------------------------------------

    def verify(self, token: str) -> api.access_token.Claims:
        """The claims of ``token`` if this server's key signed it; HTTP 401 otherwise."""
        try:
            return api.TokenVerifier(self.api_key, self.api_secret).verify(token)
        except Exception:
            raise web.HTTPUnauthorized(text="invalid token") from None


async def _send(ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.send_str(json.dumps(message))
