"""The local Gemini Live server, proven with the real google-genai client and livekit plugin.

The first half drives ``client.aio.live.connect`` directly; the second runs livekit's
``google.realtime.RealtimeModel`` inside a headless ``AgentSession`` and records how the
plugin (livekit-plugins-google 1.8.9) behaves under each fault.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import websockets
from gemini_helpers import ask, connected
from google import genai
from google.genai import errors, types
from livekit.agents import Agent, AgentSession, APIConnectOptions, llm
from livekit.agents.voice.events import CloseEvent
from livekit.plugins import google

from {{ cookiecutter.package_name }}.testing.gemini.audio import tone
from {{ cookiecutter.package_name }}.testing.gemini.faults import (
    Drop,
    GoAway,
    NoSetupComplete,
    RefuseHandle,
    ResumableFalse,
    SlowSetup,
)
from {{ cookiecutter.package_name }}.testing.gemini.protocol import (
    FunctionCall,
    HistoryItem,
    Reply,
)
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    LocalGeminiLiveServer,
)

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
TEXT_CONFIG = types.LiveConnectConfig(
    response_modalities=[types.Modality.TEXT],
    session_resumption=types.SessionResumptionConfig(),
)


def texts(items: Sequence[HistoryItem]) -> list[tuple[str, str]]:
    """The conversation as (role, text) pairs, livekit's "." reply placeholder left out."""
    return [(i.role, i.text) for i in items if i.text != "."]


@pytest.fixture
async def srv() -> AsyncIterator[LocalGeminiLiveServer]:
    async with LocalGeminiLiveServer() as server:
        yield server


async def say(session: genai.live.AsyncSession, text: str) -> list[types.LiveServerMessage]:
    """Send a user turn and collect the model's turn (google-genai stops at turnComplete)."""
    user = types.Content(role="user", parts=[types.Part(text=text)])
    await session.send_client_content(turns=[user], turn_complete=True)
    return [msg async for msg in session.receive()]


# -- the real google-genai client ----------------------------------------------------------


async def test_genai_client_gets_a_streamed_reply_over_tls(srv: LocalGeminiLiveServer) -> None:
    client = genai.Client(api_key="local-test-key", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        assert session.setup_complete is not None
        messages = await say(session, "what is the weather like")
    chunks = [m.text for m in messages if m.text]
    assert "".join(chunks) == "reply to: what is the weather like"
    assert len(chunks) > 1, "the reply is streamed in pieces so faults can land mid-reply"
    assert texts(srv.history()) == [
        ("user", "what is the weather like"),
        ("model", "reply to: what is the weather like"),
    ]
    conn = srv.connections[0]
    assert conn.api_key_sent and conn.setup and conn.setup.model == f"models/{MODEL}"
    assert conn.handles_issued, "a setup asking for resumption gets handles"


async def test_context_window_compression_is_accepted(srv: LocalGeminiLiveServer) -> None:
    window = types.ContextWindowCompressionConfig(
        trigger_tokens=1000, sliding_window=types.SlidingWindow(target_tokens=500)
    )
    config = TEXT_CONFIG.model_copy(update={"context_window_compression": window})
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        await say(session, "hi")
    setup = srv.connections[0].setup
    assert setup and setup.context_window_compression == {
        "trigger_tokens": 1000,
        "sliding_window": {"target_tokens": 500},
    }


async def test_a_fault_at_a_point_in_time_closes_with_its_code(srv: LocalGeminiLiveServer) -> None:
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        await srv.wait_for(lambda: srv.connections[0].handles_issued != [], what="handle")
        srv.inject_later(Drop(close_code=1011, reason="internal error"), delay=0.05)
        with pytest.raises(errors.APIError) as closed:
            while True:
                await session._receive()
    assert closed.value.code == 1011
    assert [(r.where, r.fault) for r in srv.fault_log] == [("now", Drop(1011, "internal error"))]


async def test_client_that_does_not_trust_the_certificate_is_refused(
    srv: LocalGeminiLiveServer,
) -> None:
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=srv.base_url))
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG):
            pass


async def test_environment_alone_points_genai_at_the_server(
    srv: LocalGeminiLiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", srv.base_url)
    monkeypatch.setenv("SSL_CERT_FILE", str(srv.cert_path))
    monkeypatch.setenv("GOOGLE_API_KEY", "local-test-key")
    async with genai.Client().aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        messages = await say(session, "hi")
    assert "".join(m.text for m in messages if m.text) == "reply to: hi"


async def test_audio_in_is_transcribed_and_answered_with_24khz_audio() -> None:
    async with LocalGeminiLiveServer(transcriber=lambda pcm, rate: "turn on the lights") as srv:
        client = genai.Client(api_key="k", http_options=srv.http_options())
        config = types.LiveConnectConfig(
            input_audio_transcription=types.AudioTranscriptionConfig(),
            output_audio_transcription=types.AudioTranscriptionConfig(),
        )
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            speech, silence = tone(300, sample_rate=16000), bytes(16000)  # 0.3 s loud, 0.5 s quiet
            for pcm in (speech, silence):
                blob = types.Blob(data=pcm, mime_type="audio/pcm;rate=16000")
                await session.send_realtime_input(audio=blob)
            messages = [m async for m in session.receive()]
    contents = [m.server_content for m in messages if m.server_content]
    heard = [c.input_transcription.text for c in contents if c.input_transcription]
    spoken = [c.output_transcription.text or "" for c in contents if c.output_transcription]
    audio = [p.inline_data for c in contents if c.model_turn for p in c.model_turn.parts or []]
    assert heard == ["turn on the lights"]
    assert "".join(spoken) == "reply to: turn on the lights"
    assert audio and all(
        a is not None and a.mime_type == "audio/pcm;rate=24000" and a.data for a in audio
    )
    assert texts(srv.history())[0] == ("user", "turn on the lights")


async def test_resume_by_handle_continues_the_history_without_replay(
    srv: LocalGeminiLiveServer,
) -> None:
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        await say(session, "first")
        await srv.wait_for(lambda: len(srv.connections[0].handles_issued) == 2, what="handle")
        handle = srv.connections[0].handles_issued[-1]
        await srv.inject(Drop())
        with pytest.raises(errors.APIError) as dropped:
            while True:  # messages already in flight arrive first
                await session._receive()
    assert dropped.value.code == 1006, "an abrupt drop sends no close frame"

    config = TEXT_CONFIG.model_copy(
        update={"session_resumption": types.SessionResumptionConfig(handle=handle)}
    )
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        await say(session, "second")
    resumed = srv.connections[1]
    assert resumed.handle == handle and resumed.replayed_turns == 0
    assert texts(srv.history()) == [
        ("user", "first"),
        ("model", "reply to: first"),
        ("user", "second"),
        ("model", "reply to: second"),
    ]


async def test_a_handle_names_the_conversation_as_it_was_when_issued(
    srv: LocalGeminiLiveServer,
) -> None:
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        await say(session, "kept")
        await srv.wait_for(lambda: len(srv.connections[0].handles_issued) == 2, what="handle")
        handle = srv.connections[0].handles_issued[-1]
        await say(session, "lost")
    assert texts(srv.history(handle)) == [("user", "kept"), ("model", "reply to: kept")]
    assert len(texts(srv.history(connection=0))) == 4, "the old conversation is kept as it was"


@pytest.mark.parametrize("code", [1007, 1008, 1011])
async def test_armed_refusal_closes_a_resuming_setup_before_setup_complete(
    srv: LocalGeminiLiveServer, code: int
) -> None:
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG):
        pass  # a fresh setup does not consume the refusal armed below
    srv.arm(RefuseHandle(code=code))
    handle = srv.connections[0].handles_issued[0]
    config = TEXT_CONFIG.model_copy(
        update={"session_resumption": types.SessionResumptionConfig(handle=handle)}
    )
    with pytest.raises(errors.APIError) as refused:
        async with client.aio.live.connect(model=MODEL, config=config):
            pass
    assert refused.value.code == code
    assert srv.connections[1].refused_with == code
    assert srv.connections[1].setup_complete_after is None


async def test_an_expired_handle_is_refused_with_1008(srv: LocalGeminiLiveServer) -> None:
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG):
        pass
    handle = srv.connections[0].handles_issued[0]
    srv.forget_handles()
    config = TEXT_CONFIG.model_copy(
        update={"session_resumption": types.SessionResumptionConfig(handle=handle)}
    )
    with pytest.raises(errors.APIError, match="session not found"):
        async with client.aio.live.connect(model=MODEL, config=config):
            pass


async def test_resumable_false_updates_carry_no_handle(srv: LocalGeminiLiveServer) -> None:
    srv.arm(ResumableFalse(count=2))
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        await say(session, "one")
        await say(session, "two")
        while not (last := await session._receive()).session_resumption_update:
            pass
    sent = srv.connections[0].sent
    updates = [m["sessionResumptionUpdate"] for m in sent if "sessionResumptionUpdate" in m]
    assert updates[:2] == [{"resumable": False}, {"resumable": False}]
    assert all(u["resumable"] and u["newHandle"] for u in updates[2:])
    assert last.session_resumption_update.new_handle == updates[-1]["newHandle"]
    assert len(srv.fault_log) == 2 and not srv.armed


async def test_go_away_reaches_the_client_then_the_server_closes(
    srv: LocalGeminiLiveServer,
) -> None:
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        await srv.wait_for(lambda: srv.connections[0].handles_issued != [], what="handle")
        await srv.inject(GoAway(time_left=0.2, close_code=1000))
        messages = [await session._receive()]
        with pytest.raises(errors.APIError) as closed:
            while True:
                messages.append(await session._receive())
    go_aways = [m.go_away for m in messages if m.go_away]
    assert go_aways and go_aways[0].time_left == "0.200s"
    assert closed.value.code == 1000
    conn = srv.connections[0]
    await srv.wait_for(lambda: not conn.open, what="close record")
    assert conn.closed_by == "server" and conn.close_code == 1000


async def test_a_drop_mid_reply_keeps_what_was_said(srv: LocalGeminiLiveServer) -> None:
    srv.arm(Drop(at="reply", after_chunks=2))
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        with pytest.raises(errors.APIError):
            await say(session, "tell me a long story please")
    await srv.wait_for(lambda: not srv.connections[0].open, what="close")
    reply = srv.history()[-1]
    assert reply.role == "model" and reply.interrupted
    assert reply.text == "reply to: tell me "
    assert srv.connections[0].replies[0].chunks_sent == 2


async def test_activity_start_interrupts_the_reply(srv: LocalGeminiLiveServer) -> None:
    client = genai.Client(api_key="k", http_options=srv.http_options())
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        user = types.Content(role="user", parts=[types.Part(text="a b c d e f g h")])
        await session.send_client_content(turns=[user], turn_complete=True)
        while not (await session._receive()).text:
            pass
        await session.send_realtime_input(activity_start=types.ActivityStart())
        rest = [m async for m in session.receive()]
    assert any(m.server_content and m.server_content.interrupted for m in rest)
    assert srv.history()[-1].interrupted


async def test_slow_and_missing_setup_complete(srv: LocalGeminiLiveServer) -> None:
    client = genai.Client(api_key="k", http_options=srv.http_options())
    srv.arm(SlowSetup(delay=0.2))
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
        assert session.setup_complete is not None
    srv.arm(NoSetupComplete())
    connecting = asyncio.create_task(_connect_once(client))
    await srv.wait_for(lambda: len(srv.connections) == 2 and srv.connections[1].setup is not None)
    assert not connecting.done() and srv.connections[1].setup_complete_after is None
    connecting.cancel()
    assert [type(r.fault) for r in srv.fault_log] == [SlowSetup, NoSetupComplete]


async def _connect_once(client: genai.Client) -> None:
    async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG):
        pass


async def test_scripted_tool_call_round_trip() -> None:
    def responder(history: Sequence[HistoryItem]) -> str | Reply:
        if history[-1].role == "tool":
            return "it is sunny"
        return Reply(function_calls=(FunctionCall("get_weather", {"city": "Paris"}, id="c1"),))

    async with LocalGeminiLiveServer(responder=responder) as srv:
        client = genai.Client(api_key="k", http_options=srv.http_options())
        async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
            await session.send_client_content(
                turns=[types.Content(role="user", parts=[types.Part(text="weather?")])]
            )
            while not (call := await session._receive()).tool_call:
                pass
            calls = call.tool_call.function_calls
            assert calls and calls[0].args == {"city": "Paris"}
            result = types.FunctionResponse(id="c1", name="get_weather", response={"sky": "sun"})
            await session.send_tool_response(function_responses=[result])
            answer = [m.text async for m in session.receive() if m.text]
        assert "".join(answer) == "it is sunny"
        assert [i.source for i in srv.history()] == [
            "client_content",
            "tool_call",
            "tool_response",
            "reply",
        ]


async def test_a_failing_responder_closes_with_1011() -> None:
    def responder(history: Sequence[HistoryItem]) -> str:
        raise ValueError("script bug")

    async with LocalGeminiLiveServer(responder=responder) as srv:
        client = genai.Client(api_key="k", http_options=srv.http_options())
        async with client.aio.live.connect(model=MODEL, config=TEXT_CONFIG) as session:
            with pytest.raises(errors.APIError, match="scripted responder failed") as closed:
                await say(session, "hi")
    assert closed.value.code == 1011


async def test_bad_requests_get_clear_refusals() -> None:
    async with LocalGeminiLiveServer(api_key="right") as srv:
        ws_url = srv.base_url.replace("https", "wss")
        with pytest.raises(websockets.InvalidStatus, match="404"):
            await websockets.connect(f"{ws_url}/not/live", ssl=srv.ssl_context())
        # a wrong key: Gemini reads the setup, then closes with 1007 and says why
        client = genai.Client(api_key="wrong", http_options=srv.http_options())
        with pytest.raises(errors.APIError, match="API key not valid") as refused:
            await _connect_once(client)
        assert refused.value.code == 1007
        path = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
        headers = {"x-goog-api-key": "right"}
        async with websockets.connect(
            ws_url + path, ssl=srv.ssl_context(), additional_headers=headers
        ) as ws:
            await ws.send("not json")
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007


# -- livekit's Gemini RealtimeModel in a headless AgentSession ------------------------------

# retries a tenth of a second apart keep the fault tests fast; the retry logic is unchanged
FAST_RETRY = APIConnectOptions(max_retry=3, retry_interval=0.1)
INSTRUCTIONS = "You are a test agent."


def realtime_model(
    srv: LocalGeminiLiveServer, *, modality: str = "TEXT", handle: str | None = None
) -> google.realtime.RealtimeModel:
    """The plugin pointed at the local server: the recipe the kit documents."""
    extra: dict[str, Any] = (
        {"session_resumption": types.SessionResumptionConfig(handle=handle)} if handle else {}
    )
    return google.realtime.RealtimeModel(
        model=MODEL,
        api_key="local-test-key",
        http_options=srv.http_options(),
        modalities=[types.Modality(modality)],
        conn_options=FAST_RETRY,
        **extra,
    )


@contextlib.asynccontextmanager
async def headless(
    model: google.realtime.RealtimeModel, agent: Agent | None = None
) -> AsyncIterator[tuple[AgentSession, asyncio.Future[CloseEvent]]]:
    """An AgentSession with no room; the future resolves when the session closes."""
    session: AgentSession = AgentSession(llm=model)
    closed: asyncio.Future[CloseEvent] = asyncio.get_running_loop().create_future()

    def on_close(ev: CloseEvent) -> None:
        if not closed.done():
            closed.set_result(ev)

    session.on("close", on_close)
    await session.start(agent or Agent(instructions=INSTRUCTIONS))
    try:
        yield session, closed
    finally:
        await session.aclose()


@pytest.mark.parametrize("modality", ["TEXT", "AUDIO"])
async def test_plugin_gets_the_scripted_reply(srv: LocalGeminiLiveServer, modality: str) -> None:
    async with headless(realtime_model(srv, modality=modality)) as (session, _):
        assert await ask(session, "hello there") == "reply to: hello there"
    setup = srv.connections[0].setup
    assert setup and setup.system_instruction == INSTRUCTIONS
    assert setup.resumption_requested, "the plugin always asks for resumption"
    assert texts(srv.history()) == [("user", "hello there"), ("model", "reply to: hello there")]


async def test_plugin_reaches_the_server_through_the_environment(
    srv: LocalGeminiLiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", srv.base_url)
    monkeypatch.setenv("SSL_CERT_FILE", str(srv.cert_path))
    monkeypatch.setenv("GOOGLE_API_KEY", "local-test-key")
    model = google.realtime.RealtimeModel(modalities=[types.Modality.TEXT])
    async with headless(model) as (session, _):
        assert await ask(session, "via env") == "reply to: via env"


async def test_plugin_resumes_by_handle_with_zero_replay_after_a_drop(
    srv: LocalGeminiLiveServer,
) -> None:
    async with headless(realtime_model(srv)) as (session, _):
        await ask(session, "first")
        await srv.inject(Drop())
        await connected(srv, 2)
        assert await ask(session, "second") == "reply to: second"
    first, resumed = srv.connections
    assert resumed.handle == first.handles_issued[-1]
    assert resumed.replayed_turns == 1, "only the new user turn precedes its reply trigger"
    assert texts(srv.history()) == [
        ("user", "first"),
        ("model", "reply to: first"),
        ("user", "second"),
        ("model", "reply to: second"),
    ]


async def test_plugin_sends_only_the_delta_made_while_disconnected(
    srv: LocalGeminiLiveServer,
) -> None:
    agent = Agent(instructions=INSTRUCTIONS)
    async with headless(realtime_model(srv), agent) as (session, _):
        await ask(session, "first")
        srv.arm(SlowSetup(delay=0.5))  # holds the plugin disconnected while we edit
        await srv.inject(Drop())
        await srv.wait_for(lambda: len(srv.connections) == 2 and srv.connections[1].setup)
        ctx = agent.chat_ctx.copy()
        ctx.add_message(role="user", content="a note added while away")
        await agent.update_chat_ctx(ctx)
        await connected(srv, 2)
        await ask(session, "second")
    assert texts(srv.history()) == [
        ("user", "first"),
        ("model", "reply to: first"),
        ("user", "a note added while away"),
        ("user", "second"),
        ("model", "reply to: second"),
    ]


async def test_plugin_user_turn_while_disconnected_reaches_server_after_its_trigger(
    srv: LocalGeminiLiveServer,
) -> None:
    async with headless(realtime_model(srv)) as (session, _):
        await ask(session, "first")
        srv.arm(SlowSetup(delay=0.5))
        await srv.inject(Drop())
        await srv.wait_for(lambda: len(srv.connections) == 2 and srv.connections[1].setup)
        answer = await ask(session, "asked while away")
    # the placeholder trigger is queued before the pending chat ctx is synced on connect
    assert answer == "reply to: first", "the model answers the previous turn"
    received = [m["client_content"] for m in srv.connections[1].received if "client_content" in m]
    assert received[0]["turn_complete"] and received[1]["turns"][0]["parts"][0]["text"] == (
        "asked while away"
    )


@pytest.mark.parametrize("code", [1007, 1008, 1011])
async def test_plugin_session_dies_when_its_handle_is_refused(
    srv: LocalGeminiLiveServer, code: int
) -> None:
    async with headless(realtime_model(srv)) as (session, closed):
        await ask(session, "first")
        srv.arm(RefuseHandle(code=code))
        await srv.inject(Drop())
        event = await asyncio.wait_for(closed, 10)
    assert event.reason.value == "error" and isinstance(event.error, llm.RealtimeModelError)
    assert not event.error.recoverable
    assert [c.refused_with for c in srv.connections] == [None, code], "no fresh-session fallback"


async def test_plugin_reconnects_at_once_on_go_away(srv: LocalGeminiLiveServer) -> None:
    async with headless(realtime_model(srv)) as (session, _):
        await ask(session, "first")
        await srv.inject(GoAway(time_left=30))
        await connected(srv, 2)
        await srv.wait_for(lambda: not srv.connections[0].open, what="old connection closed")
        assert await ask(session, "second") == "reply to: second"
    first, resumed = srv.connections
    assert first.closed_by == "client", "time_left is ignored: the plugin leaves at once"
    assert resumed.handle == first.handles_issued[-1]


async def test_plugin_go_away_cuts_the_reply_in_progress() -> None:
    # slow chunks leave the plugin ample time to leave before the reply would end
    async with LocalGeminiLiveServer(chunk_delay=0.3) as srv:
        srv.arm(GoAway(time_left=30, at="reply", after_chunks=1))
        async with headless(realtime_model(srv)) as (session, _):
            await ask(session, "tell me a long story please")
            await connected(srv, 2)
        assert srv.connections[0].closed_by == "client"
        assert not srv.connections[0].replies[0].completed
        cut = srv.history(connection=0)[-1]
        assert cut.role == "model" and cut.interrupted


async def test_plugin_keeps_the_old_handle_while_updates_are_not_resumable(
    srv: LocalGeminiLiveServer,
) -> None:
    async with headless(realtime_model(srv)) as (session, _):
        await ask(session, "first")
        await srv.wait_for(lambda: not srv.armed)
        last_good = srv.connections[0].handles_issued[-1]
        srv.arm(ResumableFalse(count=100))
        await ask(session, "second")
        await srv.inject(Drop())
        await connected(srv, 2)
        await ask(session, "third")
    assert srv.connections[1].handle == last_good
    # the handle predates "second": the plugin sends that turn again as the delta
    assert texts(srv.history()) == [
        ("user", "first"),
        ("model", "reply to: first"),
        ("user", "second"),
        ("model", "reply to: second"),
        ("user", "third"),
        ("model", "reply to: third"),
    ]


@pytest.mark.parametrize(("drops", "fatal"), [(3, False), (4, True)])
async def test_plugin_gives_up_after_four_drops_without_a_server_frame(
    srv: LocalGeminiLiveServer, drops: int, fatal: bool
) -> None:
    async with headless(realtime_model(srv)) as (session, closed):
        await ask(session, "first")
        # each reconnection is dropped right after setupComplete, before any other frame
        srv.arm(*[Drop(at="setup")] * (drops - 1))
        await srv.inject(Drop())
        if fatal:
            event = await asyncio.wait_for(closed, 10)
            assert event.reason.value == "error"
            assert len(srv.connections) == drops
        else:
            await connected(srv, drops + 1)
            assert await ask(session, "still there?") == "reply to: still there?"


async def first_session_handle(srv: LocalGeminiLiveServer) -> tuple[str, llm.ChatContext]:
    """Talk once, then return the newest handle and the session history (the session ends)."""
    async with headless(realtime_model(srv)) as (session, _):
        await ask(session, "first")
        await srv.wait_for(lambda: len(srv.connections[0].replies) == 1 and not srv.armed)
        await srv.wait_for(lambda: srv.connections[0].sent[-1].get("sessionResumptionUpdate"))
        return srv.connections[0].handles_issued[-1], session.history.copy()


async def test_plugin_handle_given_to_a_new_model_resumes_but_sends_nothing_newer(
    srv: LocalGeminiLiveServer,
) -> None:
    handle, carried = await first_session_handle(srv)
    carried.add_message(role="user", content="said after the handle")
    agent = Agent(instructions=INSTRUCTIONS, chat_ctx=carried)
    async with headless(realtime_model(srv, handle=handle), agent) as (session, _):
        await connected(srv, 2)
        await ask(session, "second")
    assert srv.connections[1].handle == handle
    assert texts(srv.history()) == [
        ("user", "first"),
        ("model", "reply to: first"),
        ("user", "second"),
        ("model", "reply to: second"),
    ], "the carried turn newer than the handle never reaches the server"


async def test_plugin_turn_before_the_first_resumed_connect_is_lost(
    srv: LocalGeminiLiveServer,
) -> None:
    handle, carried = await first_session_handle(srv)
    srv.arm(SlowSetup(delay=0.5))  # the user speaks while the resumed session connects
    agent = Agent(instructions=INSTRUCTIONS, chat_ctx=carried)
    async with headless(realtime_model(srv, handle=handle), agent) as (session, _):
        await srv.wait_for(lambda: len(srv.connections) == 2 and srv.connections[1].setup)
        answer = await ask(session, "second")
    assert answer == "reply to: first", "the model answers the previous turn"
    assert ("user", "second") not in texts(srv.history())
