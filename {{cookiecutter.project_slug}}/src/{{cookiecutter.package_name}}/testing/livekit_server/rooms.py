"""What the kit's LiveKit server keeps: rooms (participants, transcript), jobs, lines."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["AGENT", "STANDARD", "AgentLine", "KitJob", "KitRoom"]

AGENT = "agent"
STANDARD = "standard"


@dataclass
class KitJob:
    """One dispatched job, as the server tracks it."""

    id: str
    room: str
    agent_name: str
    metadata: str
    worker_id: str | None = None
    agent_identity: str | None = None
    status: str = "JS_PENDING"  # JS_RUNNING, JS_SUCCESS, JS_FAILED
    dispatched_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class AgentLine:
    """A final line of the room's transcript: an agent's or a participant's."""

    at: float  # time.monotonic()
    speaker: str
    role: str  # "agent" | "user"
    text: str


@dataclass
class KitRoom:
    """A live room: its participants (agents included) and its transcript so far."""

    name: str
    sid: str
    departure_timeout: float
    participants: dict[str, str] = field(default_factory=dict)  # identity -> kind
    lines: list[AgentLine] = field(default_factory=list)
    agent_tracks: list[str] = field(default_factory=list)
    agent_pids: dict[str, int] = field(default_factory=dict)  # its job process, per agent
    closed: bool = False
    # the server's own bookkeeping: its connection to each agent's bridged room, and the timer
    # that closes the room once nobody but agents is left
    bridges: dict[str, web.WebSocketResponse] = field(default_factory=dict, repr=False)
    close_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def agents(self) -> list[str]:
        return [who for who, kind in self.participants.items() if kind == AGENT]

    def people(self) -> list[str]:
        return [who for who, kind in self.participants.items() if kind != AGENT]

    def agent_lines(self) -> list[AgentLine]:
        return [line for line in self.lines if line.role == "agent"]
