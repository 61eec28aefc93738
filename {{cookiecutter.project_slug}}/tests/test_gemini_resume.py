"""The Gemini resume handler against the local Live server, with the real plugin and session.

Each test drives a real ``AgentSession`` on :class:`ResumableRealtimeModel` (the plugin with
its connection loop replaced) and asserts what the server holds against the worker's chat
context: nothing missing, nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import pytest
from gemini_helpers import ask, connected
from google.genai import types
from livekit.agents import Agent, AgentSession, llm
from livekit.agents.voice.events import CloseEvent

from {{ cookiecutter.package_name }}.resilience.gemini import gemini_realtime_model
from {{ cookiecutter.package_name }}.resilience.gemini.connection_loop import (
    DropLoopError,
    SetupTimeoutError,
)
from {{ cookiecutter.package_name }}.resilience.gemini.resume import (
    ExhaustedEvent,
    GeminiResume,
    ReconnectPolicy,
)
from {{ cookiecutter.package_name }}.resilience.store import MemoryStore
from {{ cookiecutter.package_name }}.simulation.scenario_gemini import (
    server_conversation,
    worker_conversation,
)
from {{ cookiecutter.package_name }}.testing.gemini.faults import (
    Drop,
    GoAway,
    NoSetupComplete,
    RefuseHandle,
    ResumableFalse,
    SlowSetup,
)
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    LocalGeminiLiveServer,
    default_responder,
)

INSTRUCTIONS = "You are a test agent."
FAST = ReconnectPolicy(backoff_base=0.02, backoff_max=0.1, setup_timeout=1.0, go_away_margin=0.3)


@pytest.fixture
async def srv() -> AsyncIterator[LocalGeminiLiveServer]:
    async with LocalGeminiLiveServer(chunk_delay=0.005) as server:
        yield server


def model(srv: LocalGeminiLiveServer, resume: GeminiResume) -> llm.RealtimeModel:
    return gemini_realtime_model(
        resume,
        api_key="local-test-key",
        http_options=srv.http_options(),
        modalities=[types.Modality.TEXT],
    )


@contextlib.asynccontextmanager
async def talking(
    srv: LocalGeminiLiveServer, resume: GeminiResume | None = None, agent: Agent | None = None
) -> AsyncIterator[tuple[AgentSession, Agent, GeminiResume]]:
    resume = resume or GeminiResume(policy=FAST)
    agent = agent or Agent(instructions=INSTRUCTIONS)
    session: AgentSession = AgentSession(llm=model(srv, resume))
    await session.start(agent)
    try:
        yield session, agent, resume
    finally:
        await session.aclose()


def assert_in_sync(srv: LocalGeminiLiveServer, agent: Agent) -> None:
    assert server_conversation(srv.history()) == worker_conversation(agent.chat_ctx)


async def test_drop_resumes_by_handle_with_nothing_replayed(srv: LocalGeminiLiveServer) -> None:
    async with talking(srv) as (session, agent, resume):
        await ask(session, "first")
        await newest_handle_known(srv, resume)
        await srv.inject(Drop())
        await connected(srv, 2)
        assert await ask(session, "second") == "reply to: second"
        assert_in_sync(srv, agent)
    first, resumed = srv.connections
    assert resumed.handle == first.handles_issued[-1]
    assert resumed.replayed_turns == 1, "only the new user turn precedes its trigger"
    assert resume.metrics.reconnects == 1 and resume.metrics.resumed == 1
    assert resume.metrics.items_replayed == 0


async def newest_handle_known(srv: LocalGeminiLiveServer, resume: GeminiResume) -> None:
    """Wait until the client holds the newest handle the live connection issued."""
    # the client adopts the handle after the server's last event: poll, bounded
    for _ in range(1000):
        issued = srv.connections[-1].handles_issued
        if resume.current is not None and issued and resume.current.handle == issued[-1]:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the client never adopted the newest handle")


@pytest.mark.parametrize("how", ["refused", "expired"])
async def test_refused_handle_falls_back_to_a_fresh_session_with_full_replay(
    srv: LocalGeminiLiveServer, how: str
) -> None:
    async with talking(srv) as (session, agent, resume):
        await ask(session, "first")
        await ask(session, "second")
        await newest_handle_known(srv, resume)
        if how == "refused":
            srv.arm(RefuseHandle(code=1008))
        else:
            srv.forget_handles()
        await srv.inject(Drop())
        await connected(srv, 3)
        assert await ask(session, "third") == "reply to: third"
        assert_in_sync(srv, agent)
    refused, fresh = srv.connections[1:]
    assert refused.refused_with == 1008 and refused.setup_complete_after is None
    assert fresh.handle is None and fresh.replayed_turns >= 4, "the whole history went again"
    assert resume.metrics.handle_refusals == 1 and resume.metrics.replayed == 2


async def test_go_away_lets_the_reply_finish_then_reconnects_with_the_newest_handle() -> None:
    async with LocalGeminiLiveServer(chunk_delay=0.05) as srv:
        srv.arm(GoAway(time_left=20, at="reply", after_chunks=1))
        async with talking(srv) as (session, agent, resume):
            answer = await ask(session, "tell me a long story please")
            await connected(srv, 2)
            assert await ask(session, "and then?") == "reply to: and then?"
            assert_in_sync(srv, agent)
        first, second = srv.connections
    assert answer == "reply to: tell me a long story please", "the reply was not cut"
    assert first.replies[0].completed and first.closed_by == "client"
    assert second.handle == first.handles_issued[-1], "resumed with the newest handle"
    assert second.replayed_turns == 1 and resume.metrics.items_replayed == 0
    assert resume.metrics.go_aways == 1


async def test_go_away_reconnects_before_time_left_runs_out_without_an_idle_point(
    srv: LocalGeminiLiveServer,
) -> None:
    async with talking(srv) as (session, agent, resume):
        await ask(session, "first")
        await newest_handle_known(srv, resume)
        srv.arm(ResumableFalse(count=1000))  # no resumable update: no idle point comes
        await ask(session, "second")
        conn = await srv.inject(GoAway(time_left=1.0, close_code=1000))
        await connected(srv, 2)
        assert conn.closed_by == "client", "left before the server closed at time_left"
        assert await ask(session, "third") == "reply to: third"
        assert_in_sync(srv, agent)
    assert srv.connections[1].handle == srv.connections[0].handles_issued[-1]


async def test_resumable_false_keeps_the_last_good_handle_and_sends_what_it_lacks(
    srv: LocalGeminiLiveServer,
) -> None:
    async with talking(srv) as (session, agent, resume):
        await ask(session, "first")
        await newest_handle_known(srv, resume)
        good = resume.current
        srv.arm(ResumableFalse(count=1000))
        await ask(session, "second")
        await ask(session, "third")
        assert resume.current == good, "a not-resumable update leaves the handle alone"
        await srv.inject(Drop())
        await connected(srv, 2)
        await ask(session, "fourth")
        assert_in_sync(srv, agent)
    assert good is not None and srv.connections[1].handle == good.handle
    assert resume.metrics.items_replayed == 4, "second and third, each with its reply"


async def test_turns_sent_while_disconnected_arrive_in_order_and_are_answered(
    srv: LocalGeminiLiveServer,
) -> None:
    async with talking(srv) as (session, agent, _):
        await ask(session, "first")
        srv.arm(SlowSetup(delay=0.5))  # keeps the handler disconnected while the user talks
        await srv.inject(Drop())
        await srv.wait_for(lambda: len(srv.connections) == 2 and srv.connections[1].setup)
        assert await ask(session, "asked while away") == "reply to: asked while away"
        assert_in_sync(srv, agent)


async def test_a_drop_while_a_reply_is_awaited_still_gets_the_turn_answered() -> None:
    release = asyncio.Event()

    async def slow_first(history):  # answers the first trigger only after the drop
        if not release.is_set():
            await release.wait()
        return default_responder(history)

    async with (
        LocalGeminiLiveServer(responder=slow_first) as srv,
        talking(srv) as (session, agent, _),
    ):
        run = asyncio.ensure_future(ask(session, "hello"))
        await srv.wait_for(
            lambda: (
                bool(srv.connections)
                and any(
                    m.get("client_content", {}).get("turn_complete")
                    for m in srv.connections[0].received
                )
            )
        )
        await srv.inject(Drop())
        release.set()
        assert await run == "reply to: hello"
        assert_in_sync(srv, agent)


async def test_quick_repeated_drops_do_not_end_the_call(srv: LocalGeminiLiveServer) -> None:
    async with talking(srv) as (session, agent, resume):
        await ask(session, "first")
        srv.arm(*[Drop(at="setup")] * 5)  # every reconnect dies right after setupComplete
        await srv.inject(Drop())
        await connected(srv, 7)
        assert await ask(session, "still there?") == "reply to: still there?"
        assert_in_sync(srv, agent)
    assert resume.metrics.reconnects == 6 and resume.metrics.exhausted == 0


async def test_a_server_that_accepts_and_then_always_drops_spends_the_drop_budget(
    srv: LocalGeminiLiveServer,
) -> None:
    """Each connect gets its setupComplete and is dropped at once: no connect ever fails, so
    only the windowed drop budget ends the loop, handing over to the fallback hook."""
    events: list[ExhaustedEvent] = []
    gave_up = asyncio.Event()

    def fall_back(event: ExhaustedEvent) -> None:
        events.append(event)
        gave_up.set()

    policy = dataclasses.replace(FAST, max_drops=3)
    resume = GeminiResume(policy=policy, on_exhausted=fall_back)
    async with talking(srv, resume) as (session, _, _):
        await ask(session, "first")
        srv.arm(*[Drop(at="setup")] * 20)
        await srv.inject(Drop())
        await asyncio.wait_for(gave_up.wait(), 10)
    # the first connection, then one reconnect per drop the budget allowed; no retry after
    assert len(srv.connections) == 4
    assert isinstance(events[0].error, DropLoopError) and events[0].attempts == 4
    assert resume.metrics.exhausted == 1 and resume.metrics.reconnects == 3


async def test_a_missing_setup_complete_times_out_and_counts_as_a_failed_connect(
    srv: LocalGeminiLiveServer,
) -> None:
    async with talking(srv) as (session, agent, resume):
        await ask(session, "first")
        srv.arm(NoSetupComplete())
        await srv.inject(Drop())
        await connected(srv, 3)
        assert await ask(session, "second") == "reply to: second"
        assert_in_sync(srv, agent)
    stalled = srv.connections[1]
    assert stalled.setup_complete_after is None and stalled.closed_by == "client"
    assert resume.metrics.failed_attempts == 1


async def test_a_spent_budget_calls_the_restart_hook(srv: LocalGeminiLiveServer) -> None:
    events: list[ExhaustedEvent] = []
    policy = ReconnectPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.02, setup_timeout=0.3)
    resume = GeminiResume(policy=policy, on_exhausted=events.append)
    async with talking(srv, resume) as (session, _, _):
        await ask(session, "first")
        srv.arm(*[NoSetupComplete()] * 3)
        await srv.inject(Drop())
        await srv.wait_for(lambda: len(srv.connections) == 4 and not srv.connections[3].open)
        await asyncio.sleep(0.05)
    assert len(events) == 1 and events[0].attempts == 3
    assert isinstance(events[0].error, SetupTimeoutError)
    assert resume.metrics.exhausted == 1


async def test_a_spent_budget_without_a_hook_closes_the_session_with_an_error(
    srv: LocalGeminiLiveServer,
) -> None:
    policy = ReconnectPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.02, setup_timeout=0.3)
    async with talking(srv, GeminiResume(policy=policy)) as (session, _, _):
        closed: asyncio.Future[CloseEvent] = asyncio.get_running_loop().create_future()

        def on_close(ev: CloseEvent) -> None:
            if not closed.done():
                closed.set_result(ev)

        session.on("close", on_close)
        await ask(session, "first")
        srv.arm(*[NoSetupComplete()] * 2)
        await srv.inject(Drop())
        event = await asyncio.wait_for(closed, 10)
    assert event.reason.value == "error", "the supervisor restarts on an error close"


async def test_a_new_worker_resumes_from_the_stored_handle_and_sends_only_the_rest(
    srv: LocalGeminiLiveServer,
) -> None:
    store = MemoryStore()
    first = GeminiResume(store, "room-1", "user-1", policy=FAST)
    async with talking(srv, first) as (session, agent, _):
        await ask(session, "first")
        await ask(session, "second")
        await newest_handle_known(srv, first)
        await first.aclose()
        carried = agent.chat_ctx.copy()
    # the old worker persisted one more turn after its last handle, then crashed
    carried.add_message(role="user", content="said after the handle")
    record = await store.load("room-1", "user-1")
    assert record is not None and record.gemini is not None
    assert record.gemini.handle == srv.connections[0].handles_issued[-1]

    picked_up = GeminiResume(store, "room-1", "user-1", policy=FAST)
    await picked_up.load()
    agent = Agent(instructions=INSTRUCTIONS, chat_ctx=carried)
    async with talking(srv, picked_up, agent) as (session, agent, _):
        await connected(srv, 2)
        assert await ask(session, "third") == "reply to: third"
        assert_in_sync(srv, agent)
    resumed = srv.connections[1]
    assert resumed.handle == record.gemini.handle
    assert resumed.replayed_turns == 2, "the turn after the handle and the new one"
    assert picked_up.metrics.items_replayed == 1
