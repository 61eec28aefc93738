"""The caller hears the apology even when the model that should say it is gone for good.

Real: the AgentSession, RoomIO and SessionSupervisor on a SimulatedRoom in a fake job, the
Gemini plugin (with the resume handler) against the local Live server, which refuses a wrong
key, and the generated project's recorded clip. The frontend listens to the agent's audio
track with an ``rtc.AudioStream``, as a subscriber would, and reads the transcript it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from array import array
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import structlog
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context

from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience.apology import (
    APOLOGY,
    CLIP_PATH,
    load_clip,
    say_apology,
)
from {{ cookiecutter.package_name }}.resilience.events import ClosedEvent
from {{ cookiecutter.package_name }}.resilience.gemini import gemini_realtime_model
from {{ cookiecutter.package_name }}.resilience.gemini.resume import GeminiResume
from {{ cookiecutter.package_name }}.resilience.supervisor import SessionSupervisor
from {{ cookiecutter.package_name }}.testing import LocalGeminiLiveServer, SimulatedRoom
from {{ cookiecutter.package_name }}.testing.gemini.protocol import HistoryItem

USER = "user-1"
AGENT = "agent"
KEY = "the-right-key"
RATE = 16000


def gemini(srv: LocalGeminiLiveServer, api_key: str) -> ModelStack:
    model = gemini_realtime_model(GeminiResume(), api_key=api_key, http_options=srv.http_options())
    return ModelStack(name="gemini", llm=model)


def clip_seconds(path: Path = CLIP_PATH) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def loud(frame: rtc.AudioFrame) -> bool:
    return max(map(abs, array("h", bytes(frame.data))), default=0) > 300


class Listener:
    """A frontend subscribed to the agent's track: every frame it hears, with its arrival."""

    def __init__(self, track: rtc.Track) -> None:
        self.frames: list[tuple[float, rtc.AudioFrame]] = []
        self._stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        async for event in self._stream:
            self.frames.append((time.monotonic(), event.frame))

    def heard(self) -> list[tuple[float, rtc.AudioFrame]]:
        """The frames from the first loud one to the last loud one."""
        loud_at = [i for i, (_, frame) in enumerate(self.frames) if loud(frame)]
        return self.frames[loud_at[0] : loud_at[-1] + 1] if loud_at else []

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stream.aclose()


@contextlib.asynccontextmanager
async def conversation(
    models: ModelStack,
) -> AsyncIterator[tuple[SimulatedRoom, SessionSupervisor, Listener, list[ClosedEvent]]]:
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant(USER)
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        supervisor = SessionSupervisor(
            room,
            USER,
            models=models,
            agent_factory=lambda chat_ctx: Agent(instructions="Test agent.", chat_ctx=chat_ctx),
            job_ctx=ctx,
            stuck_timeout=None,
        )
        closed: list[ClosedEvent] = []
        supervisor.on("closed", closed.append)
        await supervisor.start()
        await room.wait_until(lambda _: supervisor.track_sid is not None, timeout=10)
        assert supervisor.track_sid is not None
        publication = room.local_participant.track_publications[supervisor.track_sid]
        assert publication.track is not None
        listener = Listener(publication.track)
        try:
            yield room, supervisor, listener, closed
        finally:
            await listener.aclose()
            await supervisor.aclose()
            await room.disconnect()


async def test_a_refused_model_ends_the_call_with_the_recorded_apology() -> None:
    async with (
        LocalGeminiLiveServer(api_key=KEY) as srv,
        conversation(gemini(srv, api_key="a-wrong-key")) as (room, supervisor, listener, closed),
    ):
        # the model is refused first, as when the worker learns its key is invalid
        await srv.wait_for(lambda: any(c.refused_with for c in srv.connections), what="refusal")
        began = time.monotonic()
        await supervisor.end_with_apology("model_unavailable")
        ended = time.monotonic() - began
        await supervisor.end_with_apology("again")  # closed already: nothing more
        await asyncio.sleep(0.3)  # the last frames still on their way to the listener
        heard = listener.heard()

    assert heard, "the frontend heard nothing on the agent's track"
    first_frame = heard[0][0] - began
    seconds = sum(frame.duration for _, frame in heard)
    print(f"\nend_with_apology: first loud frame at the frontend after {first_frame * 1000:.0f} ms")
    print(f"{seconds:.2f} s heard of a {clip_seconds():.2f} s clip; call ended after {ended:.2f} s")
    assert abs(seconds - clip_seconds()) < 0.5
    assert [line.text for line in room.transcript() if line.role == "agent"] == [APOLOGY]
    said = [m for m in supervisor.chat_ctx().messages() if m.role == "assistant"]
    assert [m.text_content for m in said] == [APOLOGY]
    assert [(e.reason, e.error) for e in closed] == [("model_unavailable", None)]
    assert supervisor.closed and supervisor.session is None
    assert not any(c.setup_complete_after is not None for c in srv.connections)


def apologise_when_asked(history: Sequence[HistoryItem]) -> str:
    """A model that follows the apology instruction (the server cannot read instructions)."""
    return APOLOGY if any(APOLOGY in item.text for item in history) else "Hello."


async def test_a_missing_clip_falls_back_to_asking_the_model(tmp_path: Path) -> None:
    async with LocalGeminiLiveServer(api_key=KEY, responder=apologise_when_asked) as srv:
        session: AgentSession = AgentSession(**gemini(srv, api_key=KEY).session_options())
        await session.start(Agent(instructions="Test agent."))
        try:
            with structlog.testing.capture_logs() as logs:
                await say_apology(session, clip=tmp_path / "missing.wav")
            said = [m.text_content for m in session.history.messages() if m.role == "assistant"]
        finally:
            await session.aclose()

    warnings = [entry["event"] for entry in logs if entry["log_level"] == "warning"]
    assert warnings == ["apology clip unreadable; asking the model to apologise"]
    assert said == [APOLOGY]  # the model was asked, and said it


def test_the_generated_project_ships_a_playable_clip() -> None:
    with wave.open(str(CLIP_PATH), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        rate = wav.getframerate()
    assert rate in (16000, 24000)
    assert 1.0 <= clip_seconds() <= 6.0
    assert CLIP_PATH.stat().st_size < 200_000
    frames = load_clip(CLIP_PATH)
    assert {f.samples_per_channel for f in frames[:-1]} == {rate // 50}  # 20 ms each
    assert sum(f.duration for f in frames) == pytest.approx(clip_seconds())
    assert any(loud(f) for f in frames)
    assert load_clip(CLIP_PATH) is frames  # read once
