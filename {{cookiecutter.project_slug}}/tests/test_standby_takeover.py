"""Two workers in one room: the standby takes over when the primary dies, from the store."""

from __future__ import annotations

import asyncio
import contextlib

from livekit.agents.testing import fake_job_context

from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience.store import open_store
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.testing import (
    RedisServer,
    ScriptedLLM,
    ScriptedTTS,
    SimulatedRoom,
)
from {{ cookiecutter.package_name }}.worker import run_job

ROOM, USER = "shared-room", "ada"
TURN = "Please book a table for six on Friday."


def scripted(llm: ScriptedLLM):
    stack = ModelStack(name="scripted", llm=llm, tts=ScriptedTTS(), turn_detection="manual")
    return lambda: stack


def agent_lines(room: SimulatedRoom) -> list[str]:
    return [s.text for s in room.transcript() if s.role == "agent" and s.final]


async def test_the_standby_takes_over_a_killed_primary_and_continues() -> None:
    with RedisServer() as server:
        # a lease long enough that a first session start (heavy imports) cannot lapse it
        settings = load_settings(redis_url=server.url, room_lease_s=3.0)
        # the same room as each worker sees it; the participant is in both views
        room1 = SimulatedRoom(name=ROOM, agent_identity="agent-1")
        room2 = SimulatedRoom(name=ROOM, agent_identity="agent-2")
        room1.add_participant(USER)
        room2.add_participant(USER)
        llm1 = ScriptedLLM(["Hello! How can I help?", "Booked: six people, Friday."])
        llm2 = ScriptedLLM(["Welcome back!"])

        conversations = []
        standby: asyncio.Task | None = None
        try:
            with fake_job_context(room=room1, job_id="job-1", agent_identity="agent-1") as ctx1:
                first = await run_job(ctx1, settings=settings, models=scripted(llm1))
            assert first is not None
            conversations.append(first)
            await room1.wait_until(lambda r: len(agent_lines(r)) == 1)
            await room1.send_chat(USER, TURN)
            await room1.wait_until(lambda r: len(agent_lines(r)) == 2)
            await first.recorder.flush()

            with fake_job_context(room=room2, job_id="job-2", agent_identity="agent-2") as ctx2:
                standby = asyncio.create_task(
                    run_job(ctx2, settings=settings, models=scripted(llm2))
                )
            await asyncio.sleep(0.3)
            assert not standby.done()  # waiting: the first worker holds the room

            # the first worker dies: its heartbeat stops and nothing releases the lease
            await first.primacy.aclose(release=False)
            second = await asyncio.wait_for(standby, timeout=10)
            assert second is not None
            conversations.append(second)
            await room2.wait_until(lambda r: len(agent_lines(r)) == 1)

            # it continued the conversation: welcome back, with the earlier turns in context
            assert agent_lines(room2) == ["Welcome back!"]
            users_seen = [i.text for i in llm2.requests[0].items if i.role == "user"]
            assert TURN in users_seen

            # a turn the dead worker still had queued is merged once, never lost
            first.recorder.add(items=[{"id": "late", "type": "message", "role": "assistant"}])
            await first.recorder.flush()
            check = open_store(redis_url=server.url)
            try:
                record = await check.load(ROOM, USER)
            finally:
                await check.aclose()
            assert record is not None and record.item_ids.count("late") == 1
        finally:
            # a failed assertion must not leave sessions running (the loop would never close)
            if standby is not None and not standby.done():
                standby.cancel()
            for conversation in conversations:
                with contextlib.suppress(Exception):
                    await conversation.aclose("test over")
            await room1.disconnect()
            await room2.disconnect()
