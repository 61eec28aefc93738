"""The SessionSupervisor restarts a conversation's session without the user losing anything.

Each test runs the real AgentSession and RoomIO on a SimulatedRoom inside a fake job, drives the
conversation as a frontend would (typing on ``lk.chat``, calling RPC) and asserts on what that
frontend and the model saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, RunContext, function_tool, llm
from livekit.agents.testing import fake_job_context

from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience import _livekit
from {{ cookiecutter.package_name }}.resilience.restart_policy import RestartPolicy
from {{ cookiecutter.package_name }}.resilience.rpc import ERROR_FORBIDDEN, METHOD_RESTART
from {{ cookiecutter.package_name }}.resilience.supervisor import (
    APOLOGY,
    ClosedEvent,
    RestartedEvent,
    SessionStartedEvent,
    SessionSupervisor,
    TranscriptSegmentEvent,
)
from {{ cookiecutter.package_name }}.testing import (
    LLMRequest,
    ScriptedLLM,
    ScriptedTTS,
    SimulatedRoom,
    ToolCall,
)

USER = "user-1"
AGENT = "agent"
GREETING = "Hello, how can I help?"
GREET = "Greet the user."
NO_BACKOFF = RestartPolicy(max_restarts=20, window=60, base_delay=0, max_delay=0)


class Helper(Agent):
    def __init__(self, chat_ctx: llm.ChatContext | None = None) -> None:
        super().__init__(instructions="You are a terse test assistant.", chat_ctx=chat_ctx)

    @function_tool
    async def lookup_weather(self, context: RunContext, city: str) -> str:
        """Look up the weather in a city."""
        return f"sunny in {city}"


def stack(model: llm.LLM, name: str = "scripted", **tts: Any) -> ModelStack:
    return ModelStack(name=name, llm=model, tts=ScriptedTTS(**tts), turn_detection="manual")


class Recorder:
    """Every event the supervisor emitted, by name."""

    def __init__(self, supervisor: SessionSupervisor) -> None:
        self.events: dict[str, list[Any]] = {}
        for name in (
            "session_started",
            "conversation_item_added",
            "transcript_segment",
            "restarted",
            "closed",
        ):
            supervisor.on(name, lambda ev, name=name: self.events.setdefault(name, []).append(ev))

    def __getitem__(self, name: str) -> list[Any]:
        return self.events.get(name, [])


@contextlib.asynccontextmanager
async def conversation(
    models: ModelStack | Any, *, greeting: str | None = GREET, **kwargs: Any
) -> AsyncIterator[tuple[SimulatedRoom, SessionSupervisor, Recorder]]:
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    room.add_participant("someone-else")
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        supervisor = SessionSupervisor(
            room,
            USER,
            models=models,
            agent_factory=lambda chat_ctx: Helper(chat_ctx),
            job_ctx=ctx,
            **{"policy": NO_BACKOFF, **kwargs},
        )
        events = Recorder(supervisor)
        await supervisor.start(greeting=greeting)
        try:
            yield room, supervisor, events
        finally:
            await supervisor.aclose()
            await room.disconnect()


def agent_finals(room: SimulatedRoom) -> int:
    return sum(1 for s in room.transcript() if s.role == "agent" and s.final)


async def say(room: SimulatedRoom, text: str) -> None:
    """The user types ``text``; returns once the agent's answer is final."""
    before = agent_finals(room)
    await room.send_chat(USER, text)
    await room.wait_until(lambda r: agent_finals(r) > before, timeout=10)


def speaking(room: SimulatedRoom) -> bool:
    """The agent is a few words into a line the frontend shows as not final yet."""
    return any(
        s.role == "agent" and not s.final and len(s.text.split()) >= 5 for s in room.transcript()
    )


def agent_streams(room: SimulatedRoom) -> list[Any]:
    return [
        s
        for s in room.text_streams
        if s.topic == "lk.transcription" and s.sender_identity == AGENT
    ]


def conversation_seen(request: LLMRequest) -> list[tuple[str, str]]:
    return [(role, text) for role, text in request.messages if role in ("user", "assistant")]


async def test_ten_restarts_keep_one_track_one_transcript_and_the_whole_context() -> None:
    turns = [(f"Question number {n}?", f"Answer number {n}.") for n in range(11)]
    long_reply = "This reply is long enough to be cut by a restart while it plays. " * 6
    replies = [GREETING, *[a for _, a in turns[:5]], long_reply, *[a for _, a in turns[5:]]]
    model = ScriptedLLM(replies)
    async with conversation(stack(model, ms_per_char=4)) as (room, supervisor, events):
        await room.wait_until(lambda r: agent_finals(r) == 1)
        sid = supervisor.track_sid
        for n, (question, _) in enumerate(turns[:5]):
            await say(room, question)
            assert await supervisor.restart(f"test-{n}") is not None
        # a restart while the agent speaks: the reply is cut, kept and finalised once
        await room.send_chat(USER, "Tell me something long.")
        await room.wait_until(speaking)
        await supervisor.restart("while-speaking")
        for n, (question, _) in enumerate(turns[5:], start=5):
            await say(room, question)
            if n < 9:
                await supervisor.restart(f"test-{n}")

        assert supervisor.restarts == 10
        last_request = model.requests[-1]

    agent_tracks = [t for t in room.published_tracks if t.participant_identity == AGENT]
    assert [t.sid for t in agent_tracks] == [sid]
    streams = agent_streams(room)
    assert {s.attributes["lk.transcribed_track_id"] for s in streams} == {sid}
    finals = Counter(
        s.attributes["lk.segment_id"]
        for s in streams
        if s.attributes["lk.transcription_final"] == "true"
    )
    assert set(finals) == {s.attributes["lk.segment_id"] for s in streams}
    assert set(finals.values()) == {1}
    transcript = room.transcript()
    agent_lines = [s.text for s in transcript if s.role == "agent"]
    assert agent_lines.count(GREETING) == 1  # no second greeting
    assert len(agent_lines) == 1 + len(turns) + 1  # greeting, answers, the cut reply
    cut = agent_lines[6]
    assert cut and long_reply.startswith(cut.rstrip()) and cut != long_reply

    # the model's last request holds the whole conversation, the cut reply included
    seen = conversation_seen(last_request)
    users = [text for role, text in seen if role == "user"]
    assert users == [q for q, _ in turns[:5]] + ["Tell me something long."] + [
        q for q, _ in turns[5:]
    ]
    assert seen[0] == ("assistant", GREETING)
    assert sum(1 for role, text in seen if role == "assistant" and text == cut.strip()) <= 1
    assert [e.restart for e in events["session_started"]] == [False] + [True] * 10
    assert len(events["restarted"]) == 10
    # the store hears every final line exactly once, in order
    logged = [e.segment for e in events["transcript_segment"]]
    assert [s.seq for s in logged] == list(range(1, len(logged) + 1))
    assert [s.text for s in logged if s.role == "agent"] == agent_lines
