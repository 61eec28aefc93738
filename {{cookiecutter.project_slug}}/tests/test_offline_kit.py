"""The offline kit runs the real AgentSession and RoomIO with no LiveKit server.

Each test drives a conversation the way a frontend would (join, type on ``lk.chat``, call RPC,
leave) and asserts on what that frontend would see in the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, CloseReason, RunContext, function_tool, llm
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.events import CloseEvent

from {{ cookiecutter.package_name }}.testing import (
    ScriptedLLM,
    ScriptedTTS,
    ScriptExhaustedError,
    SimulatedRoom,
    ToolCall,
)

USER = "user-1"
GREETING = "Hello, I am your test assistant."
TURNS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("And of Italy?", "Rome is the capital of Italy."),
    ("Thanks, bye!", "You are welcome, goodbye."),
]


class Assistant(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You are a terse test assistant.")

    @function_tool
    async def lookup_weather(self, context: RunContext, city: str) -> str:
        """Look up the weather in a city."""
        return f"sunny in {city}"


@contextlib.asynccontextmanager
async def running_session(
    room: SimulatedRoom, model: ScriptedLLM, voice: ScriptedTTS | None = None
) -> AsyncIterator[AgentSession]:
    """An AgentSession started on ``room`` inside a fake job, closed afterwards."""
    with fake_job_context(room=room, agent_identity=room.local_participant.identity):
        session: AgentSession = AgentSession(llm=model, tts=voice or ScriptedTTS())
        await session.start(agent=Assistant(), room=room, record=False)
        try:
            yield session
        finally:
            await session.aclose()
            await room.disconnect()


def agent_final_segments(room: SimulatedRoom) -> int:
    return sum(1 for s in room.transcript() if s.role == "agent" and s.final)


async def wait_for_agent_segments(room: SimulatedRoom, count: int) -> None:
    await room.wait_until(lambda r: agent_final_segments(r) >= count, timeout=10)


def sdk_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Warnings and errors the SDK logged (a simulated call it did not expect shows here)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_greeting_and_three_turns_reach_the_frontend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    room = SimulatedRoom(agent_identity="agent")
    model = ScriptedLLM([GREETING, *(answer for _, answer in TURNS)])
    room.add_participant(USER, name="Test User")
    async with running_session(room, model) as session:
        await session.generate_reply(instructions="Greet the user.")
        await wait_for_agent_segments(room, 1)
        for n, (question, _) in enumerate(TURNS, start=2):
            await room.send_chat(USER, question)
            await wait_for_agent_segments(room, n)

        agent_tracks = [t for t in room.published_tracks if t.participant_identity == "agent"]
        assert len(agent_tracks) == 1
        track = agent_tracks[0]
        assert (track.kind, track.source, track.is_published) == ("audio", "microphone", True)
        assert track.sid.startswith("TR_")

    transcriptions = [
        s for s in room.text_streams if s.topic == "lk.transcription" and s.direction == "outgoing"
    ]
    assert transcriptions
    assert all(s.attributes["lk.transcribed_track_id"] == track.sid for s in transcriptions)
    assert all(s.closed for s in transcriptions)
    finals = Counter(
        s.attributes["lk.segment_id"]
        for s in transcriptions
        if s.attributes["lk.transcription_final"] == "true"
    )
    segments = {s.attributes["lk.segment_id"] for s in transcriptions}
    assert finals == Counter(segments)  # every segment finalised, and only once

    expected = [("agent", GREETING)]
    for question, answer in TURNS:
        expected += [(USER, question), ("agent", answer)]
    transcript = room.transcript()
    assert [(s.speaker, s.text) for s in transcript] == expected
    assert all(s.final for s in transcript)
    assert {s.track_id for s in transcript if s.role == "agent"} == {track.sid}

    # the model saw every earlier turn when it wrote the last answer
    last_request = model.requests[-1].messages
    conversation = [(role, text) for role, text in last_request if role in ("user", "assistant")]
    expected_seen = [("assistant", GREETING)]
    for question, answer in TURNS[:-1]:
        expected_seen += [("user", question), ("assistant", answer)]
    expected_seen.append(("user", TURNS[-1][0]))
    assert conversation == expected_seen
    assert len(model.requests) == 1 + len(TURNS)
    assert sdk_problems(caplog) == []


def agent_words(room: SimulatedRoom) -> list[str]:
    return " ".join(s.text for s in room.transcript() if s.role == "agent").split()


async def test_typing_over_the_agent_interrupts_it() -> None:
    room = SimulatedRoom()
    long_answer = "This answer goes on for a good while so that the user can cut it short."
    model = ScriptedLLM([long_answer, "Sure, I will stop."])
    room.add_participant(USER)
    # 20 ms of audio per character: about 1.5 s, played out in real time
    async with running_session(room, model, ScriptedTTS(ms_per_char=20)):
        await room.send_chat(USER, "Tell me something long.")
        # interrupt once the frontend shows a few words: the user has heard the start
        await room.wait_until(lambda r: len(agent_words(r)) >= 4)
        await room.send_chat(USER, "Stop.")
        await wait_for_agent_segments(room, 2)

    first, stop, second = [s for s in room.transcript()][1:]
    assert (first.role, first.final) == ("agent", True)
    assert first.text and long_answer.startswith(first.text) and first.text != long_answer
    assert (stop.text, second.text) == ("Stop.", "Sure, I will stop.")
    # the model is told what the user heard before cutting in, not the whole scripted answer
    heard = [text for role, text in model.requests[-1].messages if role == "assistant"]
    assert len(heard) == 1
    assert heard[0] and long_answer.startswith(heard[0]) and heard[0] != long_answer


@pytest.mark.parametrize("streaming_tts", [True, False], ids=["streaming", "chunked"])
async def test_tool_call_runs_and_its_follow_up_is_spoken(streaming_tts: bool) -> None:
    room = SimulatedRoom()
    model = ScriptedLLM([ToolCall("lookup_weather", {"city": "Oslo"}, then="It is sunny in Oslo.")])
    voice = ScriptedTTS(streaming=streaming_tts)
    room.add_participant(USER)
    async with running_session(room, model, voice):
        await room.send_chat(USER, "Weather in Oslo?")
        await wait_for_agent_segments(room, 1)

    assert [(s.role, s.text) for s in room.transcript()] == [
        ("user", "Weather in Oslo?"),
        ("agent", "It is sunny in Oslo."),
    ]
    follow_up = model.requests[-1]
    assert [(i.type, i.text) for i in follow_up.items[-2:]] == [
        ("function_call", 'lookup_weather({"city": "Oslo"})'),
        ("function_call_output", "sunny in Oslo"),
    ]
    assert "lookup_weather" in model.requests[0].tools
    assert voice.texts == ["It is sunny in Oslo."]


async def test_rpc_from_participant_reaches_registered_method() -> None:
    room = SimulatedRoom()
    room.add_participant(USER)
    async with running_session(room, ScriptedLLM()):
        calls: list[rtc.RpcInvocationData] = []

        async def echo_upper(data: rtc.RpcInvocationData) -> str:
            calls.append(data)
            return data.payload.upper()

        def broken(data: rtc.RpcInvocationData) -> str:
            raise RuntimeError("boom")

        room.local_participant.register_rpc_method("echo_upper", echo_upper)
        room.local_participant.register_rpc_method("broken", broken)

        assert await room.perform_rpc_as(USER, "echo_upper", "hi there") == "HI THERE"
        assert (calls[0].caller_identity, calls[0].method) == (USER, "echo_upper")

        with pytest.raises(rtc.RpcError) as unknown:
            await room.perform_rpc_as(USER, "no_such_method", "")
        assert unknown.value.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD

        with pytest.raises(rtc.RpcError) as failed:
            await room.perform_rpc_as(USER, "broken", "")
        assert failed.value.code == rtc.RpcError.ErrorCode.APPLICATION_ERROR

    assert {m.method for m in room.rpc_methods} >= {"echo_upper", "broken"}
    outcomes = [(c.method, c.response, c.error_code) for c in room.rpc_calls]
    assert outcomes == [
        ("echo_upper", "HI THERE", None),
        ("no_such_method", None, rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD),
        ("broken", None, rtc.RpcError.ErrorCode.APPLICATION_ERROR),
    ]


async def test_participant_joining_late_then_leaving_closes_the_session() -> None:
    room = SimulatedRoom()
    async with running_session(room, ScriptedLLM()) as session:
        closed: asyncio.Future[CloseReason] = asyncio.get_running_loop().create_future()

        def on_close(ev: CloseEvent) -> None:
            if not closed.done():
                closed.set_result(ev.reason)

        session.on("close", on_close)
        assert room.published_tracks == []  # RoomIO publishes once someone is there to hear

        room.add_participant(USER)
        await room.wait_until(lambda r: any(t.subscribed_at for t in r.published_tracks))
        room.remove_participant(USER, reason=rtc.DisconnectReason.CLIENT_INITIATED)
        assert await asyncio.wait_for(closed, 5) == CloseReason.PARTICIPANT_DISCONNECTED

    assert [e.kind for e in room.timeline if e.kind.startswith("participant_")] == [
        "participant_connected",
        "participant_disconnected",
    ]


async def test_agent_rpc_to_participant_and_its_errors() -> None:
    room = SimulatedRoom()
    room.add_participant(USER)
    room.set_participant_rpc_handler(USER, "get_location", lambda data: f"home:{data.payload}")
    agent = room.local_participant

    reply = await agent.perform_rpc(destination_identity=USER, method="get_location", payload="x")
    assert reply == "home:x"
    for destination, code in [
        (USER, rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD),
        ("nobody", rtc.RpcError.ErrorCode.RECIPIENT_NOT_FOUND),
    ]:
        with pytest.raises(rtc.RpcError) as err:
            await agent.perform_rpc(destination_identity=destination, method="other", payload="")
        assert err.value.code == code
    await room.disconnect()


async def test_room_scripting_rejects_bad_input_and_records_everything() -> None:
    room = SimulatedRoom(name="scripted")
    events: list[str] = []
    room.add_observer(lambda ev: events.append(ev.kind))
    room.add_observer(lambda ev: 1 / 0)  # a broken observer must not break the room

    with pytest.raises(ValueError, match="needs an identity"):
        room.add_participant("")
    room.add_participant(USER, attributes={"tier": "gold"}, publish_microphone=True)
    with pytest.raises(ValueError, match="already in the room"):
        room.add_participant(USER)
    with pytest.raises(ValueError, match="not in the room"):
        await room.send_chat("stranger", "hello")

    # no handler on lk.chat yet: recorded, then ignored as the SDK does
    await room.send_chat(USER, "anyone?")
    assert room.text_streams[-1].text == "anyone?"
    mic = room.remote_participants[USER].track_publications
    assert [p.source for p in mic.values()] == [rtc.TrackSource.SOURCE_MICROPHONE]

    writer = await room.local_participant.stream_text(topic="custom", attributes={"a": "1"})
    await writer.write("part one, ")
    await writer.write("part two")
    await writer.aclose(attributes={"b": "2"})
    with pytest.raises(RuntimeError):
        await writer.aclose()
    custom = room.text_streams[-1]
    assert (custom.text, custom.attributes, custom.closed) == (
        "part one, part two",
        {"a": "1", "b": "2"},
        True,
    )

    await room.local_participant.set_attributes({"lk.agent.state": "listening", "x": "1"})
    await room.local_participant.set_attributes({"x": ""})  # an empty value deletes the key
    assert room.local_participant.attributes == {"lk.agent.state": "listening"}
    with pytest.raises(TimeoutError, match="last room event: attributes_changed"):
        await room.wait_until(lambda r: False, timeout=0.05)
    with pytest.raises(ZeroDivisionError):
        await room.wait_until(lambda r: bool(1 / 0))
    outside: list[str] = []  # a condition no room event announces is polled
    asyncio.get_running_loop().call_later(0.05, outside.append, "done")
    await room.wait_until(lambda r: bool(outside), timeout=1)

    await room.disconnect()
    assert not room.isconnected()
    with pytest.raises(rtc.StreamError):
        await room.local_participant.stream_text(topic="late")
    with pytest.raises(RuntimeError, match="disconnected"):
        room.add_participant("latecomer")
    assert events[:3] == ["participant_connected", "track_published", "text_stream_received"]
    assert events[-1] == "room_disconnected"


async def test_scripted_llm_reports_an_exhausted_script() -> None:
    model = ScriptedLLM(["only one"])
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="first")
    assert (await model.chat(chat_ctx=ctx).collect()).text == "only one"
    with pytest.raises(ScriptExhaustedError, match="request #2"):
        await model.chat(chat_ctx=ctx).collect()
    assert [r.last_user_text for r in model.requests] == ["first", "first"]

    echo = ScriptedLLM()
    assert (await echo.chat(chat_ctx=ctx).collect()).text == "You said: first"
    with pytest.raises(TypeError):
        ScriptedLLM([42])  # type: ignore[list-item]  # not a reply, on purpose


@pytest.mark.parametrize("streaming", [True, False])
async def test_scripted_tts_audio_lasts_in_proportion_to_text(streaming: bool) -> None:
    voice = ScriptedTTS(ms_per_char=10, streaming=streaming, tone_hz=440)
    short, long = "Hi.", "This sentence is quite a lot longer."
    durations = []
    for text in (short, long):
        if streaming:
            stream = voice.stream()
            stream.push_text(text)
            stream.end_input()
            frames = [ev.frame async for ev in stream]
            await stream.aclose()
        else:
            frames = [ev.frame async for ev in voice.synthesize(text)]
        durations.append(sum(f.duration for f in frames))
    assert durations[0] == pytest.approx(len(short) * 0.010, abs=0.002)
    assert durations[1] == pytest.approx(len(long) * 0.010, abs=0.002)
    assert voice.texts == [short, long]


async def test_a_job_waiting_for_a_participant_sees_one_that_joins_later() -> None:
    """livekit's wait_for_participant listens for participant_active, as the SDK emits it."""
    from livekit.agents.utils.participant import wait_for_participant

    room = SimulatedRoom(agent_identity="agent")
    waiting = asyncio.create_task(wait_for_participant(room))
    await asyncio.sleep(0)  # the waiter is registered before anyone joins
    room.add_participant(USER)
    participant = await asyncio.wait_for(waiting, timeout=5)
    assert participant.identity == USER
    await room.disconnect()
