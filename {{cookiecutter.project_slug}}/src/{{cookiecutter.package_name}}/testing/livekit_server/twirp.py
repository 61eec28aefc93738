"""The kit server's Twirp API, what ``livekit.api.LiveKitAPI`` calls: ``RoomService``
(``ListParticipants``, ``ListRooms``) and ``AgentDispatchService.CreateDispatch``.

Errors are Twirp's JSON (``{"code", "msg"}``), so the client raises the ``TwirpError`` a real
server would make it raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import models as models_pb
from livekit.protocol import room as room_pb

from .rooms import AGENT

if TYPE_CHECKING:
    from .server import LocalLiveKitServer

__all__ = ["handle_twirp"]


async def handle_twirp(server: LocalLiveKitServer, request: web.Request) -> web.Response:
    """Answer ``POST /twirp/livekit.{service}/{method}`` for ``server``."""
    try:
        server.verify(request.headers.get("Authorization", "").removeprefix("Bearer "))
    except web.HTTPUnauthorized:
        return _twirp_error(401, "unauthenticated", "invalid token")
    service, method = request.match_info["service"], request.match_info["method"]
    body = await request.read()
    if (service, method) == ("RoomService", "ListParticipants"):
        room = server.rooms.get(room_pb.ListParticipantsRequest.FromString(body).room)
        if room is None:
            return _twirp_error(404, "not_found", "requested room does not exist")
        kinds = {AGENT: models_pb.ParticipantInfo.AGENT}
        reply: Any = room_pb.ListParticipantsResponse(
            participants=[
                models_pb.ParticipantInfo(
                    identity=who, kind=kinds.get(kind, models_pb.ParticipantInfo.STANDARD)
                )
                for who, kind in room.participants.items()
            ]
        )
    elif (service, method) == ("RoomService", "ListRooms"):
        reply = room_pb.ListRoomsResponse(
            rooms=[
                models_pb.Room(sid=r.sid, name=r.name, num_participants=len(r.participants))
                for r in server.rooms.values()
            ]
        )
    elif (service, method) == ("AgentDispatchService", "CreateDispatch"):
        req = dispatch_pb.CreateAgentDispatchRequest.FromString(body)
        job = await server.dispatch(req.room, req.agent_name, req.metadata)
        reply = dispatch_pb.AgentDispatch(
            id=job.id.replace("AJ_", "AD_"),
            agent_name=req.agent_name,
            room=req.room,
            metadata=req.metadata,
        )
    else:
        return _twirp_error(404, "bad_route", f"no handler for {service}/{method}")
    return web.Response(body=reply.SerializeToString(), content_type="application/protobuf")


def _twirp_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "msg": message}, status=status)
