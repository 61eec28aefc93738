"""Helpers for tests that run real worker processes against the kit's LiveKit server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from {{ cookiecutter.package_name }}.testing import LocalLiveKitServer
from {{ cookiecutter.package_name }}.testing.livekit_server.kit_models import (
    GREETING_REPLY,
)
from {{ cookiecutter.package_name }}.testing.livekit_server.rooms import KitRoom
from {{ cookiecutter.package_name }}.testing.livekit_server.worker_process import (
    KitWorkerProcess,
)

__all__ = ["GREETING_REPLY", "agent_texts", "kit_server", "stop_workers"]


@asynccontextmanager
async def kit_server(
    *, dispatch_delay_s: float = 0.3, dead_agent_linger_s: float = 2.0
) -> AsyncIterator[LocalLiveKitServer]:
    """A kit server with short timings (dispatch 0.3 s, dead agents linger 2 s)."""
    async with LocalLiveKitServer(
        dispatch_delay_s=dispatch_delay_s, dead_agent_linger_s=dead_agent_linger_s
    ) as server:
        yield server


def agent_texts(room: KitRoom) -> list[str]:
    return [line.text for line in room.agent_lines()]


def stop_workers(*workers: KitWorkerProcess) -> None:
    """Stop each worker; print the end of its log, which pytest shows when the test failed."""
    for worker in workers:
        worker.stop()
        print(f"--- the end of a worker's log ({worker.log_path}) ---\n{worker.log_tail()}")
