"""Faults the local Gemini Live server injects, and the records it keeps of each connection.

A fault is a small frozen value. ``server.arm(fault)`` queues it until the point where it
applies (the next setup, the next reply, the next resumption update);
``server.inject(fault)`` applies a drop or a goAway to the live connection now (or after a
delay). Every applied fault is written to ``server.fault_log``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .protocol import Setup

__all__ = [
    "ConnectionRecord",
    "Drop",
    "Fault",
    "FaultRecord",
    "FaultSite",
    "GoAway",
    "NoSetupComplete",
    "RefuseHandle",
    "RefuseSetup",
    "ReplyRecord",
    "ResumableFalse",
    "SlowSetup",
]


@dataclass(frozen=True)
class Drop:
    """Close the connection: abruptly (TCP close, no close frame) when ``close_code`` is None.

    Armed, it fires right after the next setupComplete (``at="setup"``), or in the next
    reply once ``after_chunks`` chunks are out (``at="reply"``).
    """

    close_code: int | None = None
    reason: str = ""
    at: Literal["setup", "reply"] = "setup"
    after_chunks: int = 1


@dataclass(frozen=True)
class GoAway:
    """Send goAway with ``time_left``, keep serving, then close after ``time_left`` seconds.

    ``close_code`` None closes abruptly. Armed, it fires like :class:`Drop`.
    """

    time_left: float = 1.0
    close_code: int | None = 1000
    reason: str = "going away"
    at: Literal["setup", "reply"] = "setup"
    after_chunks: int = 1


@dataclass(frozen=True)
class RefuseHandle:
    """Close the next setup that carries a handle with ``code`` before any setupComplete."""

    code: int = 1008
    reason: str = "session resumption handle is not valid"


@dataclass(frozen=True)
class RefuseSetup:
    """Close the next setup, with or without a handle, with ``code`` and ``reason`` before
    any setupComplete: how Gemini refuses a key, a model or a quota it will never accept."""

    code: int = 1007
    reason: str = "API key not valid. Please pass a valid API key."


@dataclass(frozen=True)
class ResumableFalse:
    """The next ``count`` resumption updates say ``resumable: false`` and carry no handle."""

    count: int = 1


@dataclass(frozen=True)
class SlowSetup:
    """Wait ``delay`` seconds before sending the next setupComplete."""

    delay: float


@dataclass(frozen=True)
class NoSetupComplete:
    """Never answer the next setup; the connection stays open until the client leaves."""


Fault = Drop | GoAway | RefuseHandle | RefuseSetup | ResumableFalse | SlowSetup | NoSetupComplete
FaultSite = Literal["setup", "reply", "update", "now"]
"""Where a fault was applied: at setup, during a reply, at a resumption update, or at once."""


@dataclass(frozen=True)
class FaultRecord:
    """A fault the server applied: to which connection, where, and when (monotonic s)."""

    connection: int
    fault: Fault
    where: FaultSite
    at: float


@dataclass
class ReplyRecord:
    """One scripted reply as it went out on a connection."""

    text: str
    chunks_sent: int = 0
    chunks_total: int = 0
    completed: bool = False
    """False when the reply was interrupted or its connection closed first."""


@dataclass
class ConnectionRecord:
    """Everything one websocket connection did, for tests to assert on."""

    index: int
    """Position in ``server.connections``."""
    api_version: str
    api_key_sent: bool
    """Whether an ``x-goog-api-key`` header arrived (its value is never kept)."""
    opened_at: float
    setup: Setup | None = None
    handle: str | None = None
    """The resumption handle presented in setup, or None for a fresh session."""
    conversation: int | None = None
    """Id of the server-side conversation this connection fed (a resume starts a new one)."""
    refused_with: int | None = None
    """Close code when the setup was refused (unknown or refused handle)."""
    setup_complete_after: float | None = None
    """Seconds from the connection opening to setupComplete; None when never sent."""
    replayed_turns: int = 0
    """Turns sent in clientContent (turnComplete false) before the first reply trigger on
    this connection: the history a client replays or catches up after connecting. A turn the
    user adds before that first trigger counts too."""
    received: list[dict[str, Any]] = field(default_factory=list)
    """Client messages after setup (snake_case keys, audio reduced to a byte count)."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Server messages, setupComplete included (audio reduced to a byte count)."""
    handles_issued: list[str] = field(default_factory=list)
    replies: list[ReplyRecord] = field(default_factory=list)
    go_away_sent_at: float | None = None
    closed_at: float | None = None
    closed_by: Literal["client", "server"] | None = None
    close_code: int | None = None
    """The code of the close frame the server received (1006 when none came)."""

    @property
    def open(self) -> bool:
        """Whether the websocket is still open."""
        return self.closed_at is None
