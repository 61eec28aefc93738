"""Chaos: long conversations through seeded random faults on the local server.

The real plugin, with the handler's connection loop, in a real AgentSession: typed text
(200 turns), speech in and out (AUDIO modality, 40 turns) and typed text with tool calls
(40 turns). After every turn (and so after every reconnect) the server's conversation must
equal the worker's chat context, and the turn must have its whole reply (a reply cut by a
drop may arrive in two parts); the session never closes with an error; goAway never cuts a
reply; a tool runs once per call, and its result reaches the server and is held once by
every conversation the server keeps (one resumed from an older handle may need it again).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from google.genai import types
from livekit import rtc
from livekit.agents import Agent, AgentSession, RunContext, function_tool, io
from livekit.agents.voice.events import CloseEvent

from {{ cookiecutter.package_name }}.resilience.gemini import gemini_realtime_model
from {{ cookiecutter.package_name }}.resilience.gemini.resume import (
    CONTINUE_PROMPT,
    GeminiResume,
    ReconnectedEvent,
    ReconnectPolicy,
)
from {{ cookiecutter.package_name }}.simulation.scenario_gemini import (
    server_conversation,
    worker_conversation,
)
from {{ cookiecutter.package_name }}.testing.gemini.audio import tone
from {{ cookiecutter.package_name }}.testing.gemini.chaos import (
    ServerChaos,
    TurnReply,
    reply_problem,
    reply_settled,
    scripted_answer,
)
from {{ cookiecutter.package_name }}.testing.gemini.protocol import (
    FunctionCall,
    HistoryItem,
    Reply,
)
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    REPLY_PLACEHOLDER,
    LocalGeminiLiveServer,
    default_responder,
)

SEED = 20240611
# a fault every other turn is far denser than any real server's drops: the drop budget (which
# ends an accept-then-drop loop, tested in test_gemini_resume.py) is out of this test's way
POLICY = ReconnectPolicy(
    max_attempts=6,
    backoff_base=0.01,
    backoff_max=0.05,
    setup_timeout=0.4,
    go_away_margin=0.5,
    max_drops=10_000,
)
# how long a reply may stand still, incomplete, before the turn counts as cut for good
GRACE_S = 2.0
IN_RATE = 16000  # Gemini hears 16 kHz 16-bit mono
FRAME_MS = 50
SILENCE_MS = 100  # the quiet that ends a spoken turn on the server (Gemini's is longer)
QUIET_MS = 150
TOOL_WORDS = "look it up"


@dataclass(frozen=True)
class Mode:
    name: str
    turns: int
    audio: bool = False
    tools: bool = False


MODES = [Mode("text", 200), Mode("audio", 40, audio=True), Mode("tools", 40, tools=True)]


class Microphone(io.AudioInput):
    """The user's speech: a tone for each turn, then quiet, in real time (a drop lands
    mid-speech as it would: what went out before it is on the dropped connection)."""

    def __init__(self) -> None:
        super().__init__(label="test-microphone")
        self._frames: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()
        self._due = 0.0

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await self._frames.get()
        loop = asyncio.get_running_loop()
        self._due = max(self._due, loop.time()) + frame.duration
        await asyncio.sleep(self._due - loop.time())
        return frame

    def say(self, loud_ms: int) -> str:
        """Speak for ``loud_ms`` (a multiple of 50); return what the server will hear."""
        pcm = tone(loud_ms, sample_rate=IN_RATE) + bytes(2 * IN_RATE * QUIET_MS // 1000)
        step = 2 * IN_RATE * FRAME_MS // 1000
        for start in range(0, len(pcm), step):
            chunk = pcm[start : start + step]
            self._frames.put_nowait(rtc.AudioFrame(chunk, IN_RATE, 1, len(chunk) // 2))
        # the server ends the turn after SILENCE_MS of quiet (see testing/gemini/audio.py)
        return f"audio turn of {loud_ms + SILENCE_MS} ms"


class Speaker(io.AudioOutput):
    """Plays the agent's audio at once (no device) and counts it."""

    def __init__(self) -> None:
        super().__init__(label="test-speaker", capabilities=io.AudioOutputCapabilities(pause=False))
        self.frames = 0
        self._pushed: float | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._pushed is None:
            self._pushed = 0.0
            self.on_playback_started(created_at=time.time())
        self.frames += 1
        self._pushed += frame.duration

    def flush(self) -> None:
        super().flush()
        self._finish(interrupted=False)

    def clear_buffer(self) -> None:
        self._finish(interrupted=True)

    def _finish(self, *, interrupted: bool) -> None:
        if self._pushed is not None:
            played, self._pushed = self._pushed, None
            self.on_playback_finished(playback_position=played, interrupted=interrupted)


class ToolAgent(Agent):
    """An agent with one tool; ``runs`` holds the call id of every run."""

    def __init__(self) -> None:
        super().__init__(instructions="You are a test agent.")
        self.runs: list[str] = []

    @function_tool
    async def look_up(self, context: RunContext, turn: int) -> str:
        """Look something up for the user's turn."""
        self.runs.append(context.function_call.call_id)
        return f"found it for turn {turn}"


def tool_responder(history: Sequence[HistoryItem]) -> str | Reply:
    """Call ``look_up`` once for a turn that asks for it, then answer as the default does."""
    spoken = [
        n
        for n, item in enumerate(history)
        if item.role == "user" and item.text not in (REPLY_PLACEHOLDER, CONTINUE_PROMPT)
    ]
    if spoken:
        asked = history[spoken[-1]]
        answered = any(item.role == "tool" for item in history[spoken[-1] + 1 :])
        if TOOL_WORDS in asked.text and not answered:
            turn = int(asked.text.split()[1])
            return Reply(function_calls=(FunctionCall("look_up", {"turn": turn}),))
    return default_responder(history)


async def until(predicate: Callable[[], object], give_up_after: float, what: str) -> None:
    """Poll ``predicate`` (the worker's chat context changes with no server event)."""
    for _ in range(round(give_up_after / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what} after {give_up_after} s")


def in_sync(srv: LocalGeminiLiveServer, agent: Agent) -> bool:
    """The server holds the worker's conversation (tool calls and the re-ask left out)."""
    return server_conversation(srv.history()) == worker_conversation(agent.chat_ctx)


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
async def test_long_conversation_through_random_faults(mode: Mode) -> None:
    rng = random.Random(SEED)
    responder = tool_responder if mode.tools else default_responder
    async with LocalGeminiLiveServer(
        chunks=4, chunk_delay=0.002, responder=responder, silence_ms=SILENCE_MS
    ) as srv:
        resume = GeminiResume(policy=POLICY)
        reconnects: list[ReconnectedEvent] = []
        resume.on("reconnected", reconnects.append)
        model = gemini_realtime_model(
            resume,
            api_key="local-test-key",
            http_options=srv.http_options(),
            modalities=[types.Modality.AUDIO if mode.audio else types.Modality.TEXT],
        )
        session: AgentSession = AgentSession(llm=model)
        closes: list[CloseEvent] = []
        session.on("close", closes.append)
        agent = ToolAgent()
        microphone, speaker = Microphone(), Speaker()
        if mode.audio:
            session.input.audio, session.output.audio = microphone, speaker
        await session.start(agent)
        chaos = ServerChaos(srv, rng)
        said: list[str] = []
        broken: list[str] = []  # every user turn gets a complete reply: where it did not
        heard = 0
        for turn in range(mode.turns):
            fault = await chaos.inject() if rng.random() < 0.6 else None
            said.append(await take_turn(mode, turn, rng, session, microphone))
            settled = await reply_settled(
                lambda: agent.chat_ctx.items, heard, grace=GRACE_S, give_up_after=5
            )
            heard += settled is not None
            if (problem := turn_problem(settled, said[-1])) is not None:
                broken.append(f"turn {turn} after {fault or 'no fault'}: {problem}")
            await until(lambda: in_sync(srv, agent), 5, f"server and worker agree after {turn}")
        await session.aclose()

    assert len(srv.fault_log) >= mode.turns // 2, f"only {len(srv.fault_log)} faults fired"
    assert not [c for c in closes if c.error is not None], "no fatal close"
    assert resume.metrics.exhausted == 0 and len(reconnects) >= mode.turns // 4
    for conn in srv.connections:
        if conn.go_away_sent_at is not None and conn.closed_by == "client":
            assert all(r.completed for r in conn.replies), "goAway cut a reply"
    resumed = [r for r in reconnects if r.resumed]
    assert resumed and any(not r.resumed for r in reconnects), "both paths were taken"
    if mode.audio:
        assert speaker.frames >= mode.turns, "the agent's replies were heard as audio"
    if mode.tools:
        assert_tools_ran_once_per_call(srv, agent, said)
    assert broken == [], f"seed {SEED}, {mode.name}: {len(broken)} turns without their reply"


def turn_problem(settled: TurnReply | None, said: str) -> str | None:
    """Why the user turn ``said`` has no complete reply in the worker, or None."""
    if settled is None:
        return f"{said!r} never reached the worker"
    if settled.user != said:
        return f"{said!r} reached the worker as {settled.user!r}"
    return reply_problem(settled, scripted_answer)


async def take_turn(
    mode: Mode, turn: int, rng: random.Random, session: AgentSession, microphone: Microphone
) -> str:
    """The user's turn ``turn``: typed (a tool turn now and then) or spoken; returns what
    the worker should hear."""
    if mode.audio:
        return microphone.say(rng.randrange(100, 350, FRAME_MS))
    text = f"turn {turn} " + " ".join(rng.choice("abcdefgh") for _ in range(6))
    if mode.tools and rng.random() < 0.4:
        text += f" {TOOL_WORDS}"
    await session.run(user_input=text)
    return text


def assert_tools_ran_once_per_call(
    srv: LocalGeminiLiveServer, agent: ToolAgent, said: list[str]
) -> None:
    """Each call the worker got ran once; its result reached the server, and no
    conversation the server holds has it twice (a resumed one may need it sent again)."""
    runs = Counter(agent.runs)
    assert runs and max(runs.values()) == 1, f"a tool ran twice for one call: {runs}"
    issued = {
        call["id"]
        for conn in srv.connections
        for message in conn.sent
        for call in message.get("toolCall", {}).get("functionCalls", [])
    }
    assert set(runs) <= issued
    received = {
        response.get("id")
        for conn in srv.connections
        for message in conn.received
        for response in message.get("tool_response", {}).get("function_responses", [])
    }
    assert set(runs) <= received, "every result reached the server"
    for conn in srv.connections:
        held = Counter(
            response.get("id")
            for item in srv.history(connection=conn.index)
            if item.role == "tool"
            for response in json.loads(item.text)
        )
        twice = {call: n for call, n in held.items() if n > 1}
        assert not twice, f"connection {conn.index}'s conversation holds results twice: {twice}"
    asked = [text for text in said if TOOL_WORDS in text]
    assert len(asked) <= len(runs), "every turn that asked for the tool ran it"
