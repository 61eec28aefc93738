"""The SessionSupervisor restarts a conversation's session without the user losing anything.

Each test runs the real AgentSession and RoomIO on a SimulatedRoom inside a fake job, drives the
conversation as a frontend would (typing on ``lk.chat``, calling RPC) and asserts on what that
frontend and the model saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, RunContext, function_tool, llm
from livekit.agents.testing import fake_job_context

from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience import _livekit
from {{ cookiecutter.package_name }}.resilience.apology import APOLOGY
from {{ cookiecutter.package_name }}.resilience.backoff import (
    RestartBudget,
    RestartPolicy,
)
from {{ cookiecutter.package_name }}.resilience.events import (
    ClosedEvent,
    conversation_items,
)
from {{ cookiecutter.package_name }}.resilience.rpc import (
    ERROR_FORBIDDEN,
    METHOD_RESTART,
)
from {{ cookiecutter.package_name }}.resilience.supervisor import (
    RESTART_NOTE,
    SessionSupervisor,
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
        s for s in room.text_streams if s.topic == "lk.transcription" and s.sender_identity == AGENT
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


async def test_spent_restart_budget_apologises_then_closes_cleanly() -> None:
    policy = RestartPolicy(max_restarts=2, window=600, base_delay=0, max_delay=0)
    model = ScriptedLLM([GREETING, "First answer."])
    async with conversation(stack(model), policy=policy) as (room, supervisor, events):
        await room.wait_until(lambda r: agent_finals(r) == 1)
        await say(room, "First question?")
        assert await supervisor.restart("one") is not None
        assert await supervisor.restart("two") is not None
        assert await supervisor.restart("three") is None  # budget spent

        assert supervisor.closed and supervisor.session is None
        assert [(e.reason, e.error) for e in events["closed"]] == [
            ("restart_budget_exhausted", None)
        ]
        with pytest.raises(RuntimeError, match="closed"):
            await supervisor.restart("four")

    agent_lines = [s.text for s in room.transcript() if s.role == "agent"]
    assert agent_lines == [GREETING, "First answer.", APOLOGY]
    assert all(s.final for s in room.transcript())
    assert [e.reason for e in events["session_started"]] == ["start", "one", "two"]
    assert len(model.requests) == 2  # the apology is spoken, not generated


async def test_rpc_restart_is_for_the_conversations_participant_only() -> None:
    model = ScriptedLLM([GREETING, "Answer after the restart."])
    async with conversation(stack(model)) as (room, supervisor, events):
        await room.wait_until(lambda r: agent_finals(r) == 1)
        first = supervisor.session

        with pytest.raises(rtc.RpcError) as refused:
            await room.perform_rpc_as("someone-else", METHOD_RESTART, "")
        assert refused.value.code == ERROR_FORBIDDEN
        assert supervisor.session is first and supervisor.restarts == 0

        with pytest.raises(rtc.RpcError) as invalid:
            await room.perform_rpc_as(USER, METHOD_RESTART, '{"reason": "no spaces allowed"}')
        assert invalid.value.code == 4000

        reply = await room.perform_rpc_as(USER, METHOD_RESTART, '{"reason": "mic-switch"}')
        assert json.loads(reply) == {"ok": True, "restarts": 1}
        assert supervisor.session is not first
        assert [e.reason for e in events["restarted"]] == ["rpc:mic-switch"]
        await say(room, "Still there?")

    assert model.requests[-1].last_user_text == "Still there?"


async def test_model_switch_restart_continues_on_the_new_model() -> None:
    first = ScriptedLLM([GREETING, "Answer from the first model."])
    second = ScriptedLLM(["Answer from the second model."])
    async with conversation(stack(first, name="first")) as (room, supervisor, events):
        await room.wait_until(lambda r: agent_finals(r) == 1)
        await say(room, "Question one?")
        await supervisor.restart("model-switch", models=stack(second, name="second"))
        await say(room, "Question two?")
        # the switch sticks: a later restart stays on the second model
        await supervisor.restart("again")

    assert len(first.requests) == 2 and len(second.requests) == 1
    assert conversation_seen(second.requests[0]) == [
        ("assistant", GREETING),
        ("user", "Question one?"),
        ("assistant", "Answer from the first model."),
        ("user", "Question two?"),
    ]
    assert [(e.models, e.restart) for e in events["session_started"]] == [
        ("first", False),
        ("second", True),
        ("second", True),
    ]


async def test_unrecoverable_model_error_restarts_and_answers_the_pending_turn() -> None:
    broken = ScriptedLLM([GREETING])  # the next request fails: ScriptExhaustedError
    spare = ScriptedLLM(["Sorry for the wait: it is noon."])
    stacks = iter([stack(broken, name="broken"), stack(spare, name="spare")])
    async with conversation(lambda: next(stacks)) as (room, supervisor, events):
        await room.wait_until(lambda r: agent_finals(r) == 1)
        await say(room, "What time is it?")  # answered by the restarted session

        assert [e.reason for e in events["restarted"]] == ["model_error"]
        assert supervisor.restarts == 1

    assert [s.text for s in room.transcript() if s.role == "agent"] == [
        GREETING,
        "Sorry for the wait: it is noon.",
    ]
    assert spare.requests[0].last_user_text == "What time is it?"


async def test_watchdog_restarts_an_agent_stuck_thinking() -> None:
    never = asyncio.Event()

    async def hang_on_questions(request: LLMRequest) -> str:
        if request.last_user_text:
            await never.wait()  # a model that never answers
        return GREETING

    stuck = ScriptedLLM(responder=hang_on_questions)
    healthy = ScriptedLLM(["Here is your answer."])
    stacks = iter([stack(stuck), stack(healthy)])
    async with conversation(lambda: next(stacks), stuck_timeout=0.3) as (room, _supervisor, events):
        await room.wait_until(lambda r: agent_finals(r) == 1)
        await say(room, "Are you there?")

        assert [e.reason for e in events["restarted"]] == ["watchdog"]
    assert [s.text for s in room.transcript() if s.role == "agent"][-1] == "Here is your answer."


async def test_tool_calls_and_userdata_carry_over_and_the_primary_is_handed_over() -> None:
    model = ScriptedLLM(
        [
            GREETING,
            ToolCall("lookup_weather", {"city": "Oslo"}, then="It is sunny in Oslo."),
            "Still sunny.",
        ]
    )
    userdata = {"plan": "gold"}
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        supervisor = SessionSupervisor(
            room,
            USER,
            models=stack(model),
            agent_factory=Helper,
            job_ctx=ctx,
            userdata=userdata,
            policy=NO_BACKOFF,
            note_restarts=True,
        )
        first = await supervisor.start(greeting=GREET)
        assert _livekit.primary_session(ctx) is first
        await room.wait_until(lambda r: agent_finals(r) == 1)
        await say(room, "Weather in Oslo?")
        second = await supervisor.restart("test")
        assert second is not None and second.userdata is userdata
        assert _livekit.primary_session(ctx) is second  # recording and reports follow
        await say(room, "And now?")
        await supervisor.aclose()
        await room.disconnect()

    items = [(i.type, i.text) for i in model.requests[-1].items]
    assert ("function_call", 'lookup_weather({"city": "Oslo"})') in items
    assert ("function_call_output", "sunny in Oslo") in items
    assert ("message", RESTART_NOTE) in items  # note_restarts=True
    assert [t for t, _ in items].count("function_call") == 1


async def test_participant_leaving_closes_the_conversation_without_restarting() -> None:
    async with conversation(stack(ScriptedLLM([GREETING]))) as (room, supervisor, events):
        await room.wait_until(lambda r: agent_finals(r) == 1)
        closed = asyncio.get_running_loop().create_future()
        supervisor.on("closed", lambda ev: closed.set_result(ev))
        room.remove_participant(USER)
        event: ClosedEvent = await asyncio.wait_for(closed, 10)

        assert event.reason == "participant_disconnected"
        assert supervisor.closed and events["restarted"] == []
        assert not [m for m in room.rpc_methods if m.unregistered_at is None]


def test_conversation_items_keep_answered_tool_calls_and_cut_replies() -> None:
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content="instructions")
    ctx.add_message(role="user", content="Weather?")
    ctx.insert(llm.FunctionCall(call_id="c1", name="lookup_weather", arguments="{}"))
    ctx.insert(
        llm.FunctionCallOutput(call_id="c1", name="lookup_weather", output="sun", is_error=False)
    )
    ctx.insert(llm.FunctionCall(call_id="c2", name="lookup_weather", arguments="{}"))  # cut
    ctx.add_message(role="assistant", content="It is su", interrupted=True)
    ctx.add_message(role="assistant", content="")

    kept = conversation_items(ctx.items)

    assert [(i.type, getattr(i, "call_id", None)) for i in kept] == [
        ("message", None),
        ("function_call", "c1"),
        ("function_call_output", "c1"),
        ("message", None),
    ]
    last = kept[-1]
    assert isinstance(last, llm.ChatMessage)
    assert last.interrupted and last.text_content == "It is su"


async def test_supervisor_refuses_bad_configuration() -> None:
    room = SimulatedRoom()
    with pytest.raises(ValueError, match="stuck_timeout"):
        SessionSupervisor(
            room, USER, models=stack(ScriptedLLM()), agent_factory=Helper, stuck_timeout=0
        )
    with pytest.raises(TypeError, match="ModelStack"):
        # a wrong type on purpose: the supervisor checks it at run time
        SessionSupervisor(room, USER, models="gemini", agent_factory=Helper)  # type: ignore[arg-type]
    supervisor = SessionSupervisor(room, USER, models=stack(ScriptedLLM()), agent_factory=Helper)
    with pytest.raises(RuntimeError, match="start"):
        await supervisor.restart("too early")
    await room.disconnect()


def test_restart_budget_backs_off_with_jitter_and_refills_after_the_window() -> None:
    now = [0.0]
    policy = RestartPolicy(max_restarts=4, window=60, base_delay=1, max_delay=3, jitter=0.5)
    budget = RestartBudget(policy, clock=lambda: now[0], rng=random.Random(7))
    delays = [budget.acquire() for _ in range(4)]
    assert delays[0] == 0  # the first restart does not wait
    for delay, nominal in zip(delays[1:], [1, 2, 3], strict=True):
        assert delay is not None and nominal * 0.5 <= delay <= nominal
    assert budget.acquire() is None and budget.used == 4  # spent
    now[0] = 61
    assert budget.used == 0 and budget.acquire() == 0  # the window slid past them
    for bad in (
        {"max_restarts": -1},
        {"window": 0},
        {"base_delay": 2, "max_delay": 1},
        {"jitter": 1.5},
    ):
        with pytest.raises(ValueError):
            RestartPolicy(**bad)


async def test_restart_scenario_passes_through_the_job_wiring() -> None:
    """The ``simulate restart`` scenario, through run_job's real supervisor wiring."""
    from {{ cookiecutter.package_name }}.settings import load_settings
    from {{ cookiecutter.package_name }}.simulation import (
        SCENARIOS,
        run_scenario,
    )
    from {{ cookiecutter.package_name }}.simulation.scenario_restart import (
        RESTART_TURNS,
    )

    restart = SCENARIOS["restart"]
    obs = await run_scenario(
        "restart",
        restart.run,
        settings=load_settings(),
        llm=restart.scripted_llm(),
        printer=lambda line: None,
    )
    assert obs.violations == []
    assert obs.timings["restarts"] == 2
    assert len([t for t in obs.tracks if t["participant_identity"] == "agent"]) == 1
    assert [s["text"] for s in obs.segments if s["role"] == "user"] == RESTART_TURNS
    assert [s["role"] for s in obs.segments] == ["agent"] + ["user", "agent"] * 3
