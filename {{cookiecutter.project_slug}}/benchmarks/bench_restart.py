"""Restart blackout benchmark on the offline kit (figures, not pass/fail).

    uv run python benchmarks/bench_restart.py [--repeat 7] [--sizes 10,100,1000] [--quick]

For conversations of 10/100/1000 messages, a restart is timed from the request to
(a) the new session listening and (b) the first words of the agent's reply to a line the user
types as soon as it listens. Three ways are measured in the same run, on the same room kit,
scripted model and scripted voice:

- supervisor: ``SessionSupervisor.restart()`` (fresh session, shared room output, carried
  context, primary handover);
- raw new session: ``old.aclose()``, then a new ``AgentSession`` started with
  ``Agent(chat_ctx=old agent's context)``; RoomIO publishes a new track;
- raw same object: ``session.aclose()`` then ``session.start()`` again on the same object.

Target: the supervisor within 1.2x of (raw new session + one session-store write); the store
write (a memory store ``append`` of one item and one segment) is timed here too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.agents import Agent, AgentSession, llm
from livekit.agents.testing import fake_job_context

from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience.backoff import (
    RestartPolicy,
)
from {{ cookiecutter.package_name }}.resilience.store import MemoryStore
from {{ cookiecutter.package_name }}.resilience.supervisor import (
    SessionSupervisor,
)
from {{ cookiecutter.package_name }}.testing import (
    ScriptedLLM,
    ScriptedTTS,
    SimulatedRoom,
)

USER = "user-1"
AGENT = "agent"
INSTRUCTIONS = "You are a concise voice assistant."

Restart = Callable[[], Awaitable[None]]


def seed(messages: int) -> llm.ChatContext:
    ctx = llm.ChatContext()
    for n in range(messages):
        role: llm.ChatRole = "user" if n % 2 == 0 else "assistant"
        ctx.add_message(role=role, content=f"message {n}: a sentence of ordinary spoken length.")
    return ctx


def new_session() -> AgentSession:
    # echoes the user; a tiny voice so playout does not dominate the figures
    return AgentSession(
        llm=ScriptedLLM(),
        tts=ScriptedTTS(ms_per_char=0.2),
        turn_handling={"turn_detection": "manual"},
    )


class Stopwatch:
    """Times restarts on one room: to listening, and to the first words of the next reply."""

    def __init__(self, room: SimulatedRoom) -> None:
        self.room = room
        self.listening: list[float] = []
        self.first_reply: list[float] = []
        self._first_words: asyncio.Future[float] | None = None
        room.add_observer(self._observe)

    def _observe(self, event: Any) -> None:
        record = event.record
        if (
            event.kind == "text_stream_opened"
            and record.topic == "lk.transcription"
            and record.sender_identity == AGENT
            and self._first_words is not None
            and not self._first_words.done()
        ):
            self._first_words.set_result(time.perf_counter())

    async def time_restart(self, restart: Restart, turn: int) -> None:
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        await restart()
        self.listening.append(time.perf_counter() - began)
        self._first_words = loop.create_future()
        finals = self._agent_finals()
        await self.room.send_chat(USER, f"turn {turn}")
        self.first_reply.append(await asyncio.wait_for(self._first_words, 10) - began)
        # let the reply finish so the next restart starts from a listening agent
        await self.room.wait_until(lambda r: self._agent_finals() > finals, timeout=10)

    def _agent_finals(self) -> int:
        return sum(1 for s in self.room.transcript() if s.role == "agent" and s.final)


async def bench_supervisor(messages: int, repeat: int) -> Stopwatch:
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    watch = Stopwatch(room)
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        session = new_session()
        assert session.llm is not None
        stack = ModelStack(name="bench", llm=session.llm, tts=session.tts, turn_detection="manual")
        supervisor = SessionSupervisor(
            room,
            USER,
            models=stack,
            agent_factory=lambda chat_ctx: Agent(instructions=INSTRUCTIONS, chat_ctx=chat_ctx),
            job_ctx=ctx,
            policy=RestartPolicy(max_restarts=repeat + 1, base_delay=0, max_delay=0),
        )
        await supervisor.start(chat_ctx=seed(messages))

        async def restart() -> None:
            await supervisor.restart("bench")

        for turn in range(repeat):
            await watch.time_restart(restart, turn)
        await supervisor.aclose()
        await room.disconnect()
    return watch


async def bench_raw(messages: int, repeat: int, *, same_object: bool) -> Stopwatch:
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    watch = Stopwatch(room)
    with fake_job_context(room=room, agent_identity=AGENT):
        current = new_session()
        await current.start(
            agent=Agent(instructions=INSTRUCTIONS, chat_ctx=seed(messages)), room=room
        )

        async def restart() -> None:
            nonlocal current
            context = current.current_agent.chat_ctx.copy()
            await current.aclose()
            if not same_object:
                model, voice = current.llm, current.tts
                assert model is not None and voice is not None
                current = AgentSession(
                    llm=model, tts=voice, turn_handling={"turn_detection": "manual"}
                )
            agent = Agent(instructions=INSTRUCTIONS, chat_ctx=context)
            await current.start(agent=agent, room=room)

        for turn in range(repeat):
            await watch.time_restart(restart, turn)
        await current.aclose()
        await room.disconnect()
    return watch


async def store_write(repeat: int) -> float:
    """Median seconds of one append (one item, one segment) to the in-memory store."""
    store = MemoryStore()
    await store.join("bench-room", USER, "s1")
    samples = []
    for n in range(repeat * 10):
        item = {"id": f"item_{n}", "type": "message", "role": "user", "content": [f"turn {n}"]}
        segment = {"id": f"SG_{n}", "role": "user", "speaker": USER, "text": f"turn {n}"}
        began = time.perf_counter()
        await store.append("bench-room", USER, items=[item], transcript=[segment])
        samples.append(time.perf_counter() - began)
    await store.aclose()
    return statistics.median(samples)


def ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def main(sizes: list[int], repeat: int) -> None:
    logging.disable(logging.WARNING)  # livekit's per-session info lines would drown the table
    write = await store_write(repeat)
    print(f"store write (memory, 1 item + 1 segment): {write * 1000:.3f} ms (median)")
    print(f"median of {repeat} restarts; ms from the restart request")
    print(
        f"{'messages':>8} | {'to listening: sup / new / same':>32} | {'ratio':>5} | "
        f"{'to first reply: sup / new / same':>34} | {'ratio':>5}"
    )
    for messages in sizes:
        sup = await bench_supervisor(messages, repeat)
        new = await bench_raw(messages, repeat, same_object=False)
        same = await bench_raw(messages, repeat, same_object=True)
        listen = [ms(w.listening) for w in (sup, new, same)]
        reply = [ms(w.first_reply) for w in (sup, new, same)]
        # target: within 1.2x of the raw new-session restart plus one store write
        listen_ratio = listen[0] / (listen[1] + write * 1000)
        reply_ratio = reply[0] / (reply[1] + write * 1000)
        print(
            f"{messages:>8} | {listen[0]:>9.1f} / {listen[1]:>8.1f} / {listen[2]:>8.1f} | "
            f"{listen_ratio:>5.2f} | {reply[0]:>10.1f} / {reply[1]:>8.1f} / {reply[2]:>8.1f} | "
            f"{reply_ratio:>5.2f}"
        )
    print("ratio = supervisor / (raw new session + store write); target <= 1.2")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="restarts timed per case")
    parser.add_argument("--sizes", default="10,100,1000", help="conversation lengths (messages)")
    parser.add_argument("--quick", action="store_true", help="2 restarts timed per case")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 2
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.repeat))
