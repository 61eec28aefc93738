"""A dead worker's room gets a new job, and the participant is welcomed back with context.

These run real worker processes (the production worker: livekit's AgentServer and job
process pool, ``build_server`` and ``run_job``, the room watcher) against the kit's LiveKit
server, which, like livekit-server, never re-dispatches a dead worker's room by itself.
The scripted model says how many of the participant's lines it was given, so a line like
"Welcome back! I remember 2 things you said." proves the context came through the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
from kit_helpers import GREETING_REPLY, agent_texts, kit_server, stop_workers
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.testing import RedisServer
from {{ cookiecutter.package_name }}.testing.livekit_server.worker_process import (
    holder_of,
    start_workers,
)

# short, to keep the tests quick, but longer than a job start's longest event-loop block
# (about 1.1 s importing google.genai on a loaded machine): a lease that lapses there is a
# crash to the watchers, and the room is taken over
LEASE_S = 2.0
ROOM = "support-42"


def worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "SESSION_DB_PATH": str(tmp_path / "sessions.sqlite3"),
        "ROOM_LEASE_S": str(LEASE_S),
        "GOOGLE_API_KEY": "unused-by-the-scripted-models",
        **extra,
    }


async def talk(server, room_name: str = ROOM):
    """ada joins, is greeted, says two things; her participant handle."""
    ada = await server.join(room_name, "ada", departure_timeout=60)
    await server.wait_for_agent_line(ada.room, GREETING_REPLY)
    await ada.say("My order number is 1234.")
    await server.wait_for_agent_line(ada.room, "You said: My order number is 1234. (1 lines")
    await ada.say("It arrived broken.")
    await server.wait_for_agent_line(ada.room, "You said: It arrived broken. (2 lines")
    return ada


def jobs_for(server, room_name: str) -> list:
    return [job for job in server.jobs.values() if job.room == room_name]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_the_survivor_redispatches_a_killed_workers_room(tmp_path: Path, store: str) -> None:
    with RedisServer() if store == "redis" else contextlib.nullcontext() as redis:
        extra = {"REDIS_URL": redis.url} if redis is not None else {}
        async with kit_server() as server:
            env = worker_env(tmp_path, **extra)
            workers = await start_workers(server, 2, env=env, log_dir=tmp_path)
            try:
                ada = await talk(server)
                victim = holder_of(ada.room, workers)
                victim.kill()

                # how fast is measured by benchmarks/bench_crash.py, never asserted here (a
                # shared machine is noisy); 60 s only bounds a test that would hang otherwise
                await server.wait_for_agent_line(ada.room, "Welcome back!", within=60)
                assert agent_texts(ada.room)[-1] == "Welcome back! I remember 2 things you said."
                await ada.say("Can you replace it?")
                await server.wait_for_agent_line(ada.room, "You said: Can you replace it? (3 lines")

                jobs = jobs_for(server, ROOM)
                assert [job.status for job in jobs] == ["JS_FAILED", "JS_RUNNING"]
                assert jobs[1].worker_id != jobs[0].worker_id  # only the survivor is left
                assert agent_texts(ada.room).count(GREETING_REPLY) == 1  # never greeted anew
            finally:
                stop_workers(*workers)


async def test_a_restarted_worker_redispatches_the_room_its_predecessor_orphaned(
    tmp_path: Path,
) -> None:
    async with kit_server() as server:
        (first,) = await start_workers(server, 1, env=worker_env(tmp_path), log_dir=tmp_path)
        try:
            ada = await talk(server)
            first.kill()
            await server.wait_for(lambda: jobs_for(server, ROOM)[0].status == "JS_FAILED")
            (second,) = await start_workers(server, 1, env=worker_env(tmp_path), log_dir=tmp_path)
            try:
                await server.wait_for_agent_line(ada.room, "Welcome back! I remember 2 things")
                assert len(jobs_for(server, ROOM)) == 2
            finally:
                stop_workers(second)
        finally:
            stop_workers(first)


async def test_a_killed_job_process_alone_is_redispatched_too(tmp_path: Path) -> None:
    async with kit_server() as server:
        workers = await start_workers(server, 1, env=worker_env(tmp_path), log_dir=tmp_path)
        try:
            ada = await talk(server)
            os.kill(list(ada.room.agent_pids.values())[-1], signal.SIGKILL)
            await server.wait_for_agent_line(ada.room, "Welcome back! I remember 2 things")
            assert len(jobs_for(server, ROOM)) == 2
        finally:
            stop_workers(*workers)


async def test_a_room_nobody_is_left_in_is_not_redispatched(tmp_path: Path) -> None:
    async with kit_server() as server:
        workers = await start_workers(server, 2, env=worker_env(tmp_path), log_dir=tmp_path)
        try:
            ada = await talk(server)
            room = ada.room
            await ada.leave()
            holder_of(room, workers).kill()
            # the lapse is claimed and dropped: the dead agent is the only one left listed
            await server.wait_for(lambda: not room.agents(), 30)
            await asyncio.sleep(LEASE_S * 2)  # time for a (wrong) dispatch to show
            assert len(jobs_for(server, ROOM)) == 1
        finally:
            stop_workers(*workers)


def test_simulate_crash_prints_the_seconds_without_an_agent(tmp_path: Path) -> None:
    out = tmp_path / "crash.json"
    result = CliRunner().invoke(app, ["simulate", "--scenario", "crash", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "s without an agent (ROOM_LEASE_S=3.0)" in result.stdout
    assert "agent: Welcome back! I remember 2 things you said." in result.stdout
    timings = json.loads(out.read_text())["timings"]
    assert timings["jobs"] == 2 and timings["seconds_without_agent"] > 0
