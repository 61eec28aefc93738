"""`simulate --scenario crash`: the worker holding a call is killed; another one takes it.

Unlike the other scenarios this one runs real worker processes: two production workers
(``testing/livekit_server/kit_worker``: ``build_server``, ``run_job``, livekit's job process
pool and the room watcher, with the kit's bridged room and scripted models) against the
kit's LiveKit server, which, like livekit-server, never re-dispatches a dead worker's room.
The store is a SQLite file made for the run (or the run's Redis with ``--store redis``). The
participant talks, the worker holding the room is killed (kill -9), the survivor's room
watcher re-dispatches the room, and the participant must be welcomed back with what they
said. Prints the seconds the participant had no agent, beside the room lease time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..settings import Settings
from ..testing.livekit_server.kit_models import GREETING_REPLY
from ..testing.livekit_server.server import LocalLiveKitServer
from ..testing.livekit_server.worker_process import holder_of, start_workers
from .harness import Observations, Printer

ROOM, USER = "sim-crash", "user-1"
LINES = ["My order number is 1234.", "It arrived broken."]
AFTER = "Can you replace it?"
SUMMARY = "the worker holding the call is killed; another worker re-dispatches the room"


def worker_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """What the two workers run with: the run's store, the configured room lease."""
    env = {
        "ROOM_LEASE_S": str(settings.room_lease_s),
        "ROOM_MODE": "one-to-one",
        "GOOGLE_API_KEY": "unused-by-scripted-models",
    }
    if settings.redis_url:
        return {**env, "REDIS_URL": settings.redis_url, "REDIS_PREFIX": settings.redis_prefix}
    return {**env, "SESSION_DB_PATH": str(data_dir / "sessions.sqlite3")}


async def run_crash(settings: Settings, printer: Printer = print) -> Observations:
    """Run the scenario; its observations (``timings["seconds_without_agent"]``)."""
    observations = Observations(scenario="crash")
    with tempfile.TemporaryDirectory(prefix="simulate-crash-") as tmp:
        async with LocalLiveKitServer(dispatch_delay_s=0.5, dead_agent_linger_s=5.0) as server:
            printer("  .. starting two worker processes")
            env = worker_env(settings, Path(tmp))
            workers = await start_workers(server, 2, env=env, log_dir=Path(tmp))
            try:
                await _call(server, workers, settings, observations, printer)
            except AssertionError as exc:
                observations.violations.append(str(exc))
            finally:
                for worker in workers:
                    worker.stop()
    return observations


async def _call(
    server: LocalLiveKitServer,
    workers: list,
    settings: Settings,
    observations: Observations,
    printer: Printer,
) -> None:
    user = await server.join(ROOM, USER, departure_timeout=settings.session_retention_s)
    room = user.room
    shown = 0

    def show() -> None:
        nonlocal shown
        for line in room.lines[shown:]:
            printer(f"  {line.role:>5}: {line.text}")
        shown = len(room.lines)

    await server.wait_for_agent_line(room, GREETING_REPLY)
    for n, text in enumerate(LINES, 1):
        await user.say(text)
        await server.wait_for_agent_line(room, f"You said: {text} ({n} lines")
    show()
    victim = holder_of(room, workers)
    victim.kill()
    killed_at = time.monotonic()
    printer(f"  .. killed the worker holding the call (pid {victim.pid}, kill -9)")
    back = await server.wait_for_agent_line(room, "Welcome back!", within=60)
    gap = round(back.at - killed_at, 2)
    show()
    printer(f"  .. {gap} s without an agent (ROOM_LEASE_S={settings.room_lease_s})")
    await user.say(AFTER)
    await server.wait_for_agent_line(room, f"You said: {AFTER} ({len(LINES) + 1} lines")
    show()

    observations.timings.update(
        seconds_without_agent=gap, room_lease_s=settings.room_lease_s, jobs=len(server.jobs)
    )
    texts = [line.text for line in room.agent_lines()]
    if back.text != f"Welcome back! I remember {len(LINES)} things you said.":
        observations.violations.append(f"the new agent did not know the call: {back.text!r}")
    if texts.count(GREETING_REPLY) != 1:
        observations.violations.append("the participant was greeted as new after the crash")
    if len(server.jobs) != 2:
        observations.violations.append(f"{len(server.jobs)} jobs for the room, expected 2")
