"""Conversation summaries: past its budget a conversation's older turns are folded into a
summary off the reply path; the model sees the summary and the recent turns, people the whole
transcript; a restore and a Gemini replay send the compact form.

Real AgentSessions throughout: the job wiring through the simulation harness (the summariser
is a scripted model of its own, as a stack built per call gives it), Gemini against the local
Live server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
from gemini_helpers import ask, connected
from google.genai import types
from livekit.agents import Agent, AgentSession, APIConnectionError, llm
from livekit.plugins import google

from {{ cookiecutter.package_name }}.backends import Backends, open_backends
from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience.gemini import gemini_realtime_model
from {{ cookiecutter.package_name }}.resilience.gemini.resume import (
    GeminiResume,
    ReconnectPolicy,
)
from {{ cookiecutter.package_name }}.resilience.returning import (
    chat_ctx_from_record,
    item_to_dict,
)
from {{ cookiecutter.package_name }}.resilience.store import MemoryStore, StorageLimits
from {{ cookiecutter.package_name }}.settings import SettingsError, load_settings
from {{ cookiecutter.package_name }}.simulation import Simulation, run_scenario
from {{ cookiecutter.package_name }}.simulation.harness import Observations
from {{ cookiecutter.package_name }}.simulation.invariants import (
    one_agent_audio_track,
    segments_finalised_once,
    turns_as_expected,
)
from {{ cookiecutter.package_name }}.summary import (
    SUMMARY_INSTRUCTIONS,
    ConversationSummarizer,
    SummaryBudget,
    is_summary,
    summary_message,
    summary_model,
)
from {{ cookiecutter.package_name }}.testing import ScriptedLLM, ScriptedTTS
from {{ cookiecutter.package_name }}.testing.gemini.faults import Drop, RefuseHandle
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    LocalGeminiLiveServer,
)
from {{ cookiecutter.package_name }}.testing.models import LLMRequest
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

USER = "user-1"
ROOM = "sim-room"
SUMMARY = "The user plans a trip to Lisbon in May and prefers trains to planes."
BUDGET = {"summary_max_turns": 10, "summary_keep_turns": 4, "summary_max_tokens": 0}
FAST = ReconnectPolicy(backoff_base=0.02, backoff_max=0.1, setup_timeout=1.0)


def is_summary_request(request: LLMRequest) -> bool:
    return bool(request.items) and request.items[0].text == SUMMARY_INSTRUCTIONS


class Models:
    """Scripted stacks, a new one per call as ``build_models`` gives them, sharing one script:
    conversation turns answered at once; summary requests held until ``release`` (or failed
    as a provider that cannot be reached fails)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.release = asyncio.Event()
        self.turns: list[LLMRequest] = []
        self.summaries: list[LLMRequest] = []

    async def respond(self, request: LLMRequest) -> str:
        if is_summary_request(request):
            self.summaries.append(request)
            if self.fail:
                raise APIConnectionError("summary model unreachable")
            await self.release.wait()
            return SUMMARY
        self.turns.append(request)
        return f"answer {len(self.turns)}"

    def __call__(self) -> ModelStack:
        model = ScriptedLLM(responder=self.respond)
        return ModelStack(name="scripted", llm=model, tts=ScriptedTTS(), turn_detection="manual")


def turns_only(obs: Observations, sim: Simulation) -> list[str]:
    """The one-participant invariants but "the model saw every turn": it saw a summary."""
    return [
        *one_agent_audio_track(obs),
        *segments_finalised_once(obs),
        *turns_as_expected(obs, sim.expected_roles),
    ]


async def until(condition: Callable[[], Any], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def texts(request: LLMRequest, role: str) -> list[str]:
    return [text for r, text in request.messages if r == role]


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    shared = open_backends(load_settings(session_db_path=":memory:", **BUDGET))
    yield shared
    await shared.aclose()


async def test_a_long_conversation_is_summarised_without_holding_a_reply(
    backends: Backends,
) -> None:
    models = Models()
    seen: dict[str, Any] = {}

    async def long_talk(sim: Simulation) -> None:
        await sim.join(USER)
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        for n in range(5):  # 11 messages with the greeting: past the budget of 10
            await sim.say(USER, f"line {n}")
        await until(lambda: models.summaries, "the summary request")  # held by the model
        started = time.monotonic()
        await sim.say(USER, "line 5")
        seen["reply_s"], seen["held"] = time.monotonic() - started, not models.release.is_set()
        models.release.set()
        conversation, supervisor = sim.conversation, sim.supervisor
        assert conversation is not None and supervisor is not None
        await until(lambda: conversation.summarizer.summary is not None, "the summary")
        await sim.say(USER, "line 6")
        await supervisor.restart("test")  # a new session starts compact too
        await sim.say(USER, "line 7")

    obs = await run_scenario(
        "long-talk", long_talk, settings=backends.settings, llm=ScriptedLLM(),
        backends=backends, models=models, printer=lambda _: None, checks=turns_only,
    )  # fmt: skip
    assert obs.violations == []
    assert seen["held"] and seen["reply_s"] < 5, "the reply waited for the summariser"
    (asked,) = models.summaries
    folded = asked.items[1].text  # the greeting to line 2's answer; the last 4 turns kept
    assert "line 0" in folded and "line 2" in folded and "line 3" not in folded
    for request in models.turns[-2:]:  # after the summary, and after the restart
        conversation = [(r, t) for r, t in request.messages if r != "system"]
        assert SUMMARY in conversation[0][1], "the summary comes first"
        assert not {"line 0", "line 1", "line 2"} & set(texts(request, "user"))
    assert texts(models.turns[-1], "user") == [f"line {n}" for n in range(3, 8)]
    record = await backends.store.load(ROOM, USER)
    assert record is not None
    assert [i for i in record.items if i.get("extra", {}).get("is_summary")], "summary stored"
    # people keep everything: the stored transcript has every line, the first one included
    said = [s["text"] for s in record.transcript if s["role"] == "user"]
    assert said == [f"line {n}" for n in range(8)]
    restored = chat_ctx_from_record(record).messages()
    assert is_summary(restored[0]) and SUMMARY in (restored[0].text_content or "")


async def test_a_failing_summariser_costs_one_log_line_and_changes_nothing(
    backends: Backends,
) -> None:
    models = Models(fail=True)
    found: dict[str, Any] = {}

    async def long_talk(sim: Simulation) -> None:
        await sim.join(USER)
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        for n in range(7):
            await sim.say(USER, f"line {n}")
        assert sim.supervisor is not None
        found["restarts"] = sim.supervisor.restarts

    with structlog.testing.capture_logs() as logs:
        obs = await run_scenario(
            "failing", long_talk, settings=backends.settings, llm=ScriptedLLM(),
            backends=backends, models=models, printer=lambda _: None, checks=turns_only,
        )  # fmt: skip
    assert obs.violations == []
    failed = [e for e in logs if e["event"].startswith("conversation summary failed")]
    assert len(failed) == 1 and failed[0]["log_level"] == "warning"
    assert len(models.summaries) == 1, "no retry before the backoff"
    assert found["restarts"] == 0, "the summariser's error never reached the session"
    assert texts(models.turns[-1], "user") == [f"line {n}" for n in range(7)]
    record = await backends.store.load(ROOM, USER)
    assert record is not None
    assert not [i for i in record.items if i.get("extra", {}).get("is_summary")]


def turn(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Conversation item and transcript line ``n`` of a long conversation."""
    role = "user" if n % 2 else "assistant"
    text = f"turn {n}: " + "a sentence of ordinary conversational length, said aloud. " * 2
    item = {"id": f"item_{n:05d}", "type": "message", "role": role, "content": [text],
            "interrupted": False, "created_at": 1718000000.0 + n}  # fmt: skip
    speaker = USER if n % 2 else "agent"
    segment = {"seq": n + 1, "id": f"seg_{n:05d}", "role": "user" if n % 2 else "agent",
               "speaker": speaker, "text": text, "at": 1718000000.0 + n}  # fmt: skip
    return item, segment


async def seed(store: Any, turns: int, keep: int, *, summary: bool = True) -> None:
    """A conversation of ``turns`` turns, its last summary covering all but ``keep``."""
    await store.join(ROOM, USER, "s0")
    for start in range(0, turns, 500):
        pairs = [turn(n) for n in range(start, min(turns, start + 500))]
        await store.append(ROOM, USER, items=[p[0] for p in pairs],
                           transcript=[p[1] for p in pairs])  # fmt: skip
    if summary:
        made = summary_message(
            SUMMARY, covers=f"item_{turns - keep - 1:05d}", created_at=1718000000.0 + turns
        )
        await store.append(ROOM, USER, items=[item_to_dict(made)])
    await store.leave(ROOM, USER, "s0")


@pytest.fixture(params=["memory", "redis"])
async def roomy(request: pytest.FixtureRequest) -> AsyncIterator[Backends]:
    """A store that keeps 10,000 turns whole (the default keeps the newest 5,000)."""
    limits = {"session_max_entries": 20_000}
    if request.param == "memory":
        shared = open_backends(load_settings(session_db_path=":memory:", **limits))
        yield shared
        await shared.aclose()
        return
    with RedisServer() as server:
        shared = open_backends(load_settings(redis_url=server.url, **limits))
        yield shared
        await shared.aclose()


async def test_ten_thousand_turns_restore_as_summary_and_recent_turns(roomy: Backends) -> None:
    await seed(roomy.store, 10_000, keep=40)
    models = Models()

    async def comes_back(sim: Simulation) -> None:
        await sim.join(USER)
        sim.expect_agent_turn("welcome back")
        await sim.wait_for_agent_replies(1)
        await sim.say(USER, "Where were we?")

    obs = await run_scenario(
        "comes-back", comes_back, settings=roomy.settings, llm=ScriptedLLM(),
        backends=roomy, models=models, printer=lambda _: None, checks=turns_only,
    )  # fmt: skip
    assert obs.violations == []
    first = models.turns[0]  # the welcome back
    conversation = [text for role, text in first.messages if role != "system"]
    assert SUMMARY in conversation[0]
    assert conversation[1:] == [turn(n)[0]["content"][0] for n in range(9960, 10_000)]
    assert sum(len(i.text) for i in first.items) < 16_000, "bounded: the full is 1.3 MB"
    record = await roomy.store.load(ROOM, USER)
    assert record is not None
    assert len([s for s in record.transcript if s["id"].startswith("seg_")]) == 10_000
    unsummarised = [i for i in record.items if not i.get("extra", {}).get("is_summary")]
    whole = dataclasses.replace(record, items=tuple(unsummarised))
    assert len(chat_ctx_from_record(whole).items) == 10_000 + 3, "no summary: every item"


async def test_ten_thousand_turns_compact_in_the_store_and_restore_bounded(
    roomy: Backends,
) -> None:
    await seed(roomy.store, 10_000, keep=40, summary=False)  # written before summaries
    models = Models()
    models.release.set()

    async def comes_back(sim: Simulation) -> None:
        await sim.join(USER)
        sim.expect_agent_turn("welcome back")
        await sim.wait_for_agent_replies(1)
        conversation = sim.conversation
        assert conversation is not None
        await until(lambda: conversation.summarizer.summary is not None, "the summary", 60)
        await conversation.recorder.flush()

    obs = await run_scenario(
        "comes-back", comes_back, settings=roomy.settings, llm=ScriptedLLM(),
        backends=roomy, models=models, printer=lambda _: None, checks=turns_only,
    )  # fmt: skip
    assert obs.violations == []
    record = await roomy.store.load(ROOM, USER)
    assert record is not None
    # the store dropped what the summary covers: the summary and the recent turns are left
    assert len(record.items) <= 45 and record.items_trimmed >= 9_950
    assert sum(map(len, map(str, record.items))) < 20_000, "bounded: the full is 1.3 MB"
    # people keep everything: every line stays in the store (load), the join sends the newest
    assert len([s for s in record.transcript if s["id"].startswith("seg_")]) == 10_000
    token = await roomy.store.acquire_lease(ROOM, USER, "next-job", 30, force=True)
    joined = await roomy.store.join(ROOM, USER, "s9", fence=token, transcript_tail=2000)
    assert len(joined.record.transcript) == 2000
    assert joined.record.transcript[-1]["seq"] == record.transcript[-1]["seq"]
    restored = chat_ctx_from_record(joined.record).messages()
    assert is_summary(restored[0]) and SUMMARY in (restored[0].text_content or "")


async def test_records_without_a_summary_restore_as_before() -> None:
    store = MemoryStore(limits=StorageLimits(max_entries=30))
    await seed(store, 50, keep=4, summary=False)
    record = await store.load(ROOM, USER)
    assert record is not None
    items = chat_ctx_from_record(record).messages()
    assert "20 oldest items" in (items[0].text_content or ""), "told where the rest was"
    assert [i.id for i in items[1:]] == [f"item_{n:05d}" for n in range(20, 50)]
    # one summary later, the trimmed items are covered: no note, the summary first
    made = summary_message(SUMMARY, covers="item_00045", created_at=1718000100.0)
    await store.append(ROOM, USER, items=[item_to_dict(made)])
    record = await store.load(ROOM, USER)
    assert record is not None
    ids = [i.id for i in chat_ctx_from_record(record).items]
    assert ids == [made.id, *(f"item_{n:05d}" for n in range(46, 50))]


async def test_an_unreadable_item_is_skipped_and_the_rest_restored() -> None:
    store = MemoryStore()
    await seed(store, 6, keep=2, summary=False)
    await store.append(ROOM, USER, items=[{"id": "bad", "type": "message", "role": "nobody"}])
    record = await store.load(ROOM, USER)
    assert record is not None
    with structlog.testing.capture_logs() as logs:
        items = chat_ctx_from_record(record).items
    assert [i.id for i in items] == [f"item_{n:05d}" for n in range(6)]
    assert [e["item_id"] for e in logs if e["event"].startswith("skipped")] == ["bad"]


def gemini_model(srv: LocalGeminiLiveServer, resume: GeminiResume) -> llm.RealtimeModel:
    return gemini_realtime_model(
        resume, api_key="local-test-key", http_options=srv.http_options(),
        modalities=[types.Modality.TEXT],
    )  # fmt: skip


def history_sent(srv: LocalGeminiLiveServer, connection: int) -> str:
    """The history clientContent a connection got before its first reply trigger."""
    sent = []
    for message in srv.connections[connection].received:
        content = message.get("client_content")
        if content is not None:
            if content.get("turn_complete"):
                break
            sent += [p.get("text", "") for t in content["turns"] for p in t["parts"]]
    return "\n".join(sent)


async def newest_handle_known(srv: LocalGeminiLiveServer, resume: GeminiResume) -> None:
    await until(
        lambda: (
            resume.current is not None
            and resume.current.handle in srv.connections[-1].handles_issued[-1:]
        ),
        "the newest handle",
    )


async def refuse_and_replay(srv: LocalGeminiLiveServer, session: AgentSession) -> str:
    """A refused handle: the fresh connection gets the whole (compact) history again."""
    srv.arm(RefuseHandle(code=1008))
    count = len(srv.connections)
    await srv.inject(Drop())
    await connected(srv, count + 2)
    await ask(session, "still there?")
    return history_sent(srv, count + 1)


async def test_a_restored_conversation_replays_to_gemini_compact() -> None:
    store = MemoryStore(limits=StorageLimits(max_entries=20_000))
    await seed(store, 10_000, keep=40)
    record = await store.load(ROOM, USER)
    assert record is not None
    async with LocalGeminiLiveServer(chunk_delay=0.0) as srv:
        resume = GeminiResume(policy=FAST)
        session: AgentSession = AgentSession(llm=gemini_model(srv, resume))
        await session.start(Agent(instructions="test", chat_ctx=chat_ctx_from_record(record)))
        try:
            await ask(session, "hello again")
            await newest_handle_known(srv, resume)
            first = history_sent(srv, 0)
            replay = await refuse_and_replay(srv, session)
        finally:
            await session.aclose()
    for sent in (first, replay):
        assert SUMMARY in sent and "turn 9999:" in sent and "turn 9959:" not in sent
        assert len(sent.encode()) < 16_000, "bounded: the full history is 1.3 MB"


async def test_a_live_gemini_session_is_compacted_at_an_idle_point() -> None:
    summariser = ScriptedLLM(responder=lambda _request: SUMMARY)
    stored: list[llm.ChatMessage] = []
    summarizer = ConversationSummarizer(
        SummaryBudget(max_turns=6, keep_turns=2, max_tokens=0),
        lambda: summariser,
        on_summary=stored.append,
    )
    async with LocalGeminiLiveServer(chunk_delay=0.0) as srv:
        resume = GeminiResume(policy=FAST)
        session: AgentSession = AgentSession(llm=gemini_model(srv, resume))
        agent = Agent(instructions="test")
        await session.start(agent)
        summarizer.attach(session)
        try:
            for n in range(4):
                await ask(session, f"question {n}")
            await until(lambda: any(is_summary(i) for i in agent.chat_ctx.items), "compaction")
            await ask(session, "question 4")  # the server holds the summary: a handle covers it
            await newest_handle_known(srv, resume)
            replay = await refuse_and_replay(srv, session)
        finally:
            await summarizer.aclose()
            await session.aclose()
    assert stored, "a summary was made and handed to the store"
    assert SUMMARY in replay and "question 4" in replay and "question 0" not in replay


def test_summary_settings_fail_in_one_line_each() -> None:
    with pytest.raises(SettingsError) as bad:
        load_settings(summary_max_turns=10, summary_keep_turns=10, summary_model="claude")
    assert bad.value.problems == [
        "SUMMARY_KEEP_TURNS is invalid: must be less than SUMMARY_MAX_TURNS (10) (got 10)",
        "SUMMARY_MODEL is invalid: must be openai/<model> or google/<model>, e.g. "
        "openai/gpt-4.1-mini or google/gemini-2.5-flash (got 'claude')",
    ]
    assert SummaryBudget.from_settings(load_settings()) == SummaryBudget(200, 40, 32_000)
    off = load_settings(summary_max_turns=0, summary_max_tokens=0)
    assert SummaryBudget.from_settings(off) is None


def test_which_model_summarises() -> None:
    realtime = ModelStack(name="gemini-live", llm=google.realtime.RealtimeModel(api_key="test"))
    reason = summary_model(load_settings(), lambda: realtime)
    assert isinstance(reason, str) and reason.startswith("MODEL_STACK=gemini-live has no text")
    no_key = summary_model(load_settings(summary_model="openai/gpt-4.1-mini"), lambda: realtime)
    assert no_key == "SUMMARY_MODEL=openai/gpt-4.1-mini needs OPENAI_API_KEY"
    keyed = load_settings(summary_model="google/gemini-2.5-flash", google_api_key="test-key")
    built = summary_model(keyed, lambda: realtime)
    assert isinstance(built, llm.LLM) and built.model == "gemini-2.5-flash"
    pipeline = Models()
    assert isinstance(summary_model(load_settings(), pipeline), ScriptedLLM)
