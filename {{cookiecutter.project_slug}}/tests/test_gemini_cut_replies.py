"""A reply cut by a lost connection is finished after the reconnect: asked for once, the
cut part kept as interrupted, the rest as the next message of the same reply.

Real AgentSession, the plugin with the handler's connection loop, the local Live server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from gemini_helpers import connected
from google.genai import types
from livekit.agents import Agent, AgentSession, RunResult, function_tool, llm
from livekit.agents.voice.events import ConversationItemAddedEvent

from {{ cookiecutter.package_name }}.resilience.gemini import (
    _plugin,
    gemini_realtime_model,
)
from {{ cookiecutter.package_name }}.resilience.gemini.resume import (
    CONTINUE_PROMPT,
    GeminiResume,
    ReconnectPolicy,
)
from {{ cookiecutter.package_name }}.simulation.scenario_gemini import (
    server_conversation,
    worker_conversation,
)
from {{ cookiecutter.package_name }}.testing.gemini.faults import (
    Drop,
    GoAway,
    RefuseHandle,
)
from {{ cookiecutter.package_name }}.testing.gemini.protocol import (
    FunctionCall,
    HistoryItem,
    Reply,
)
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    LocalGeminiLiveServer,
)

FAST = ReconnectPolicy(backoff_base=0.02, backoff_max=0.1, setup_timeout=1.0, go_away_margin=0.3)
LONG = "one two three four five six seven eight"


@pytest.fixture
async def srv() -> AsyncIterator[LocalGeminiLiveServer]:
    async with LocalGeminiLiveServer(chunks=4, chunk_delay=0.01) as server:
        yield server


async def start(
    srv: LocalGeminiLiveServer, *, modality: str = "TEXT", agent: Agent | None = None
) -> tuple[AgentSession, Agent, GeminiResume]:
    resume = GeminiResume(policy=FAST)
    model = gemini_realtime_model(
        resume,
        api_key="local-test-key",
        http_options=srv.http_options(),
        modalities=[types.Modality(modality)],
    )
    session: AgentSession = AgentSession(llm=model)
    resume.watch(session)
    agent = agent or Agent(instructions="You are a test agent.")
    await session.start(agent)
    return session, agent, resume


def replies(result: RunResult) -> list[llm.ChatMessage]:
    return [
        e.item for e in result.events if e.type == "message" and isinstance(e.item, llm.ChatMessage)
    ]


async def in_sync(srv: LocalGeminiLiveServer, agent: Agent) -> None:
    await srv.wait_for(
        lambda: server_conversation(srv.history()) == worker_conversation(agent.chat_ctx),
        give_up_after=5,
        what="the server to hold the worker's conversation",
    )


@pytest.mark.parametrize("modality", ["TEXT", "AUDIO"])
@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Drop(at="reply", after_chunks=2), id="drop"),
        pytest.param(Drop(at="reply", after_chunks=1, close_code=1011), id="close-1011"),
    ],
)
async def test_a_reply_cut_by_a_drop_is_finished_after_the_reconnect(
    srv: LocalGeminiLiveServer, fault: Drop, modality: str
) -> None:
    # AUDIO: the cut reply's audio stream ends with its transcript; the rest has its own
    session, agent, resume = await start(srv, modality=modality)
    try:
        srv.arm(fault)
        result: RunResult = await session.run(user_input=LONG)
        said = replies(result)
        # session.run returns once the whole reply is out: the cut part, then the rest
        assert "".join(m.text_content or "" for m in said) == f"reply to: {LONG}"
        assert len(said) == 2, [m.text_content for m in said]
        assert said[0].interrupted and not said[1].interrupted
        assert resume.metrics.replies_cut == 1 and resume.metrics.replies_continued == 1
        await in_sync(srv, agent)
        # the model was asked once, after the cut part it holds as its own turn
        asks = [i for i in srv.history() if i.text == CONTINUE_PROMPT]
        assert len(asks) == 1
        # the next turn is answered as usual
        nxt = replies(await session.run(user_input="next"))
        assert [m.text_content for m in nxt] == ["reply to: next"]
        await in_sync(srv, agent)
    finally:
        await session.aclose()


async def test_a_reply_cut_when_the_handle_is_then_refused_is_finished_after_a_full_replay(
    srv: LocalGeminiLiveServer,
) -> None:
    session, agent, resume = await start(srv)
    try:
        await session.run(user_input="first")
        srv.arm(Drop(at="reply", after_chunks=2), RefuseHandle(code=1008))
        said = replies(await session.run(user_input=LONG))
        assert "".join(m.text_content or "" for m in said) == f"reply to: {LONG}"
        assert resume.metrics.handle_refusals == 1 and resume.metrics.replies_continued == 1
        await in_sync(srv, agent)
    finally:
        await session.aclose()


async def test_a_rest_cut_in_turn_is_asked_for_again(srv: LocalGeminiLiveServer) -> None:
    session, agent, resume = await start(srv)
    try:
        srv.arm(Drop(at="reply", after_chunks=1), Drop(at="reply", after_chunks=1))
        said = replies(await session.run(user_input=LONG))
        assert "".join(m.text_content or "" for m in said) == f"reply to: {LONG}"
        assert resume.metrics.replies_cut == 2 and resume.metrics.replies_continued == 2
        assert [m.interrupted for m in said] == [True, True, False]
        await in_sync(srv, agent)
    finally:
        await session.aclose()


async def test_re_asks_for_one_reply_stop_at_the_cap(
    srv: LocalGeminiLiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_plugin, "MAX_REASKS", 1)
    session, agent, resume = await start(srv)
    try:
        srv.arm(Drop(at="reply", after_chunks=1), Drop(at="reply", after_chunks=1))
        said = replies(await session.run(user_input=LONG))
        # the rest, cut in turn, is not asked for again; both parts are marked interrupted
        assert resume.metrics.replies_cut == 2 and resume.metrics.replies_continued == 1
        assert len([i for i in srv.history() if i.text == CONTINUE_PROMPT]) == 1
        assert len(said) == 2 and all(m.interrupted for m in said)
        # nothing hangs: the next turn is answered
        nxt = replies(await session.run(user_input="next"))
        assert [m.text_content for m in nxt] == ["reply to: next"]
        await in_sync(srv, agent)
    finally:
        await session.aclose()


async def test_go_away_deadline_mid_reply_is_finished_on_the_next_connection() -> None:
    # a reply slower than goAway's time_left: the handler must leave mid-reply
    async with LocalGeminiLiveServer(chunks=6, chunk_delay=0.25) as srv:
        session, agent, _resume = await start(srv)
        try:
            srv.arm(GoAway(time_left=0.8, at="reply", after_chunks=1))
            said = replies(await session.run(user_input=LONG))
            assert "".join(m.text_content or "" for m in said) == f"reply to: {LONG}"
            await connected(srv, 2)
            await in_sync(srv, agent)
        finally:
            await session.aclose()


async def test_the_recorder_sees_the_cut_part_as_interrupted(srv: LocalGeminiLiveServer) -> None:
    session, _agent, _resume = await start(srv)
    stored: list[tuple[str, bool]] = []

    # registered after watch(), as the job registers the store's recorder
    @session.on("conversation_item_added")
    def _record(ev: ConversationItemAddedEvent) -> None:
        if isinstance(ev.item, llm.ChatMessage) and ev.item.role == "assistant":
            stored.append((ev.item.text_content or "", ev.item.interrupted))

    try:
        srv.arm(Drop(at="reply", after_chunks=2))
        await session.run(user_input=LONG)
        await asyncio.sleep(0)
        assert [flag for _, flag in stored] == [True, False]
    finally:
        await session.aclose()


@pytest.mark.parametrize("fault", ["drop", "update_tools"])
async def test_a_tool_call_in_flight_during_a_reconnect_reaches_the_model_once(
    fault: str,
) -> None:
    """A drop, or a tools update (which reconnects; upstream loses the tool result then,
    livekit/agents#7153), while a tool runs: the result reaches the model once, after."""

    def responder(history: Sequence[HistoryItem]) -> str | Reply:
        if history[-1].role == "tool":
            return f"it is sunny, {history[-1].text}"
        return Reply(function_calls=(FunctionCall("get_weather", {"city": "Paris"}, id="c1"),))

    calls: list[str] = []
    running_tool, reconnected = asyncio.Event(), asyncio.Event()

    @function_tool
    async def get_time() -> str:
        """The time of day."""
        return "noon"

    class Weather(Agent):
        @function_tool
        async def get_weather(self, city: str) -> str:
            """The weather in a city."""
            calls.append(city)
            running_tool.set()
            await reconnected.wait()  # the connection is replaced while the tool runs
            return "sun"

    async with LocalGeminiLiveServer(responder=responder, chunk_delay=0.005) as srv:
        agent = Weather(instructions="A test agent.")
        session, _agent, resume = await start(srv, agent=agent)
        try:
            running: RunResult = session.run(user_input="weather in Paris?")
            await asyncio.wait_for(running_tool.wait(), 10)
            if fault == "drop":
                await srv.inject(Drop())
            else:
                await agent.update_tools([*agent.tools, get_time])
            await connected(srv, 2)
            reconnected.set()
            said = replies(await asyncio.wait_for(running, 10))
            assert "".join(m.text_content or "" for m in said).startswith("it is sunny")
        finally:
            reconnected.set()
            await session.aclose()
    assert calls == ["Paris"], "the tool ran once"
    responses = [i for i in srv.history() if i.source == "tool_response"]
    assert len(responses) == 1, [(i.role, i.source) for i in srv.history()]
    assert resume.metrics.reconnects == 1
