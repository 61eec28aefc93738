"""The kit's LiveKit server behaves as livekit-server 1.9.9 was measured to (DESIGN.md), and
the worker copes: rooms close after their departure timeout, dead workers' jobs are not
dispatched again, explicit dispatch reaches a live room, each job is its own process, and
two workers share a host."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from kit_helpers import GREETING_REPLY, agent_texts, kit_server
from livekit import api

from {{ cookiecutter.package_name }}.testing.livekit_server.worker_process import (
    holder_of,
    start_workers,
)

PROJECT = Path(__file__).resolve().parents[1]
MEMORY_ENV = {"SESSION_DB_PATH": ":memory:", "GOOGLE_API_KEY": "unused"}


def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {"SESSION_DB_PATH": str(tmp_path / "s.sqlite3"), "GOOGLE_API_KEY": "unused"}


async def test_an_empty_room_closes_after_its_departure_timeout_and_the_next_room_continues(
    tmp_path: Path,
) -> None:
    async with kit_server() as server:
        (worker,) = await start_workers(server, 1, env=sqlite_env(tmp_path), log_dir=tmp_path)
        try:
            ada = await server.join("desk", "ada", departure_timeout=1.0)
            first_room = ada.room
            await server.wait_for_agent_line(first_room, GREETING_REPLY)
            await ada.say("Remember the blue one.")
            await server.wait_for_agent_line(first_room, "You said: Remember the blue one.")
            await ada.leave()
            # closed 1 s later: its agent is disconnected and the job ends, as on the server
            await server.wait_for(lambda: first_room.closed, 10)
            (job,) = server.jobs.values()
            await server.wait_for(lambda: job.status == "JS_SUCCESS", 15)

            # back after the room closed: a new room and job, and the store remembers her
            again = await server.join("desk", "ada", departure_timeout=1.0)
            assert again.room is not first_room and again.room.sid != first_room.sid
            await server.wait_for_agent_line(again.room, "Welcome back! I remember 1 things")
            assert GREETING_REPLY not in agent_texts(again.room)
        finally:
            worker.stop()


async def test_a_killed_workers_job_fails_lingers_and_is_never_dispatched_again(
    tmp_path: Path,
) -> None:
    # the in-memory store has no watch list: nothing re-dispatches, as without this project
    async with kit_server(dead_agent_linger_s=1.5) as server:
        workers = await start_workers(server, 2, env=MEMORY_ENV, log_dir=tmp_path)
        try:
            ada = await server.join("desk", "ada")
            await server.wait_for_agent_line(ada.room, GREETING_REPLY)
            holder_of(ada.room, workers).kill()  # the other worker lives on
            (job,) = server.jobs.values()
            await server.wait_for(lambda: job.status == "JS_FAILED", 10)
            assert ada.room.agents() == [job.agent_identity]  # the dead agent still listed
            await server.wait_for(lambda: not ada.room.agents(), 10)
            await asyncio.sleep(1.0)
            assert len(server.jobs) == 1 and not ada.room.closed
        finally:
            for worker in workers:
                worker.stop()


async def test_create_dispatch_puts_a_job_into_a_live_room_in_its_own_process(
    tmp_path: Path,
) -> None:
    async with kit_server() as server:
        (worker,) = await start_workers(server, 1, env=MEMORY_ENV, log_dir=tmp_path)
        try:
            # tokens naming an agent nobody runs: no automatic dispatch for these rooms
            rooms = [
                (await server.join(name, "ada", agent_name="nobody")).room
                for name in ("room-a", "room-b")
            ]
            async with api.LiveKitAPI(server.url, server.api_key, server.api_secret) as lk:
                for room in rooms:
                    await lk.agent_dispatch.create_dispatch(
                        api.CreateAgentDispatchRequest(room=room.name, agent_name="")
                    )
                listed = await lk.room.list_participants(api.ListParticipantsRequest(room="room-a"))
            for room in rooms:
                await server.wait_for_agent_line(room, GREETING_REPLY)
            pids = [next(iter(room.agent_pids.values())) for room in rooms]
            # each job is its own process, and not the worker's
            assert len(set(pids)) == 2 and worker.pid not in pids
            assert all(worker.owns(pid) for pid in pids)
            assert next(p.identity for p in listed.participants) == "ada"
        finally:
            worker.stop()


async def test_two_agent_py_start_on_one_host(tmp_path: Path) -> None:
    """`agent.py start` twice, as an operator would: both bind an HTTP port and register."""
    async with kit_server() as server:
        env = {
            **os.environ,
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
            # whichever stack the project was generated with: `start` checks its key's presence
            "GOOGLE_API_KEY": "a-key-the-worker-never-uses-without-a-job",
            "OPENAI_API_KEY": "a-key-the-worker-never-uses-without-a-job",
            "SESSION_DB_PATH": str(tmp_path / "s.sqlite3"),
            "WORKER_PORT": "0",
        }
        logs = [tmp_path / f"start-{n}.log" for n in range(2)]
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(PROJECT / "agent.py"),
                "start",
                cwd=PROJECT,
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            for log in logs
        ]
        try:
            await server.wait_for(lambda: len(server.workers) == 2, 90)
            assert all(p.returncode is None for p in processes)
        finally:
            for process in processes:
                process.kill()
                await process.wait()
        assert not any("address already in use" in log.read_text() for log in logs)
