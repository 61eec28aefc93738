"""Multi-participant rooms: every line once, every line kept, history for everyone in the room;
and a conversation that gave up comes back when its participant does, in either room mode.

These run ``run_job`` as production does (``ROOM_MODE=multi-participant``, the store from the
settings: a SQLite file), with participants speaking through real audio tracks into real
transcription sessions (tones that a scripted STT maps to lines; see ``testing/room/speech.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from livekit import rtc
from livekit.agents import llm
from livekit.agents.voice.events import UserInputTranscribedEvent

from {{ cookiecutter.package_name }}.models import ModelStack
from {{ cookiecutter.package_name }}.resilience.rpc import METHOD_HISTORY
from {{ cookiecutter.package_name }}.resilience.store import open_store
from {{ cookiecutter.package_name }}.resilience.transcribers import (
    MAX_LINES,
    MEETING_IDENTITY,
    MeetingTranscript,
    TranscribedLine,
    Transcriber,
)
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import SCENARIOS, run_scenario
from {{ cookiecutter.package_name }}.simulation.scenario_multi import LINES, LINES_AFTER
from {{ cookiecutter.package_name }}.testing import (
    ScriptedLLM,
    ScriptedTTS,
    SimulatedJob,
    SimulatedRoom,
)
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer
from {{ cookiecutter.package_name }}.testing.room.speech import (
    SpeechCodebook,
    ToneSTT,
)
from {{ cookiecutter.package_name }}.worker import run_job

ROOM = "sim-room"
SPOKEN = sorted(
    [(text, who) for who, lines in LINES.items() for text in lines]
    + [(text, who) for who, text in LINES_AFTER.items()]
)


def stack() -> ModelStack:
    return ModelStack(
        name="scripted",
        llm=ScriptedLLM(["Hello everyone!"], on_exhausted="echo"),
        stt=ToneSTT(SpeechCodebook()),
        tts=ScriptedTTS(),
        turn_detection="manual",
    )


def agent_lines(room: SimulatedRoom) -> list[str]:
    return [s.text for s in room.transcript() if s.role == "agent" and s.final]


async def history(room: SimulatedRoom, caller: str) -> dict:
    return json.loads(await room.perform_rpc_as(caller, METHOD_HISTORY, '{"limit": 100}'))


async def test_every_line_is_published_once_and_kept_as_the_rooms_transcript(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        room_mode="multi-participant", session_db_path=str(tmp_path / "s.sqlite3")
    )
    scenario = SCENARIOS["multi"]
    assert scenario.models is not None
    observations = await run_scenario(
        "multi",
        scenario.run,
        settings=settings,
        llm=scenario.scripted_llm(),
        models=scenario.models(settings),
        checks=scenario.checks,
        printer=lambda _line: None,
    )
    # the scenario checks each spoken line is one final segment, attributed, and in the
    # room's transcript once
    assert observations.ok, observations.violations

    # the job ended; the room's transcript is in the store, in order, attributed
    store = open_store(db_path=settings.session_db_path)
    try:
        record = await store.load(ROOM, MEETING_IDENTITY)
    finally:
        await store.aclose()
    assert record is not None
    users = [(s["text"], s["speaker"]) for s in record.transcript if s["role"] == "user"]
    assert sorted(users) == SPOKEN and len(users) == len(set(users))
    assert [s["seq"] for s in record.transcript] == sorted(s["seq"] for s in record.transcript)
    assert any(s["role"] == "agent" for s in record.transcript)

    # the room's next job starts from it: anyone in the room reads the whole meeting
    room = SimulatedRoom(name=ROOM, departure_timeout=300)
    room.add_participant("dave")  # the next job's conversation
    room.add_participant("erin")  # joined after every line was said
    room.add_participant("bot", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
    with SimulatedJob(room) as job:
        conversation = await run_job(job.ctx, settings=settings, models=lambda: stack())
        assert conversation is not None
        try:
            await room.wait_until(lambda r: len(agent_lines(r)) >= 1, 10)
            page = await history(room, "erin")
            heard = [(s["text"], s["speaker"]) for s in page["segments"] if s["role"] == "user"]
            assert sorted(heard) == SPOKEN
            # the conversation's own participant reads the same room transcript
            assert (await history(room, "dave"))["latest"] == page["latest"]
            with pytest.raises(rtc.RpcError) as refused:
                await history(room, "bot")  # not a person in the room
            assert refused.value.code == 4003
        finally:
            await conversation.aclose()
            await room.disconnect()


async def test_a_transcriber_keeps_a_bounded_number_of_lines() -> None:
    room = SimulatedRoom()
    room.add_participant("ann")
    transcriber = Transcriber(room, "ann", stt=ToneSTT(SpeechCodebook()))
    session = await transcriber.start()
    try:
        for n in range(MAX_LINES + 300):
            event = UserInputTranscribedEvent(transcript=f"line {n}", is_final=True)
            session.emit("user_input_transcribed", event)
        assert len(transcriber.lines) == MAX_LINES
        assert transcriber.lines[-1].text == f"line {MAX_LINES + 299}"
        assert len(transcriber.conversation_items()) == MAX_LINES
        assert len(session.history.items) <= MAX_LINES + 1  # the instructions may stay
    finally:
        await transcriber.aclose()
        await room.disconnect()


@pytest.mark.parametrize("mode", ["one-to-one", "multi-participant"])
async def test_a_conversation_that_gave_up_reopens_when_its_participant_comes_back(
    mode: str,
) -> None:
    settings = load_settings(room_mode=mode, session_db_path=":memory:")
    room = SimulatedRoom(name=ROOM, departure_timeout=300)
    room.add_participant("ada")
    room.add_participant("bob")
    with SimulatedJob(room) as job:
        conversation = await run_job(job.ctx, settings=settings, models=lambda: stack())
        assert conversation is not None
        try:
            await room.wait_until(lambda r: len(agent_lines(r)) >= 1, 10)
            first = conversation.supervisor
            while await first.restart("test") is not None:
                pass  # until the budget is spent: the agent apologises and gives up
            assert first.closed and job.shutdown_reasons == []

            # the participant reconnects (a refresh): a fresh session, welcomed back
            before = len(agent_lines(room))
            room.remove_participant("ada")
            room.add_participant("ada")
            await room.wait_until(lambda r: len(agent_lines(r)) > before, 15)
            assert conversation.supervisor is not first
            assert not conversation.supervisor.closed
            await room.send_chat("ada", "Are you back?")
            await room.wait_until(lambda r: "You said: Are you back?" in agent_lines(r), 10)
            context = conversation.supervisor.chat_ctx()
            assert any(isinstance(i, llm.ChatMessage) and i.role == "user" for i in context.items)
            if mode == "multi-participant":
                assert (await history(room, "bob"))["latest"] >= 2  # the room still answers
            assert job.shutdown_reasons == []
        finally:
            await conversation.aclose()
            await room.disconnect()


async def test_the_rooms_transcript_survives_redis_restarting_empty_between_two_lines() -> None:
    """The job joins the room's record like a participant's, so a Redis that lost its data
    (restarted without persistence, unseen by the client) gets the earlier lines back first."""
    with RedisServer() as server:
        store = open_store(redis_url=server.url)
        meeting = await MeetingTranscript.load(store, ROOM, session_id="meeting/job-1")
        for n in range(3):
            meeting.add_line(TranscribedLine(f"L{n}", "alice", f"line {n}", at=float(n)))
        await meeting.flush()
        with server.client() as admin:  # what a restart without persistence leaves
            admin.flushall()
        meeting.add_line(TranscribedLine("L3", "bob", "line 3", at=3.0))
        await meeting.aclose()
        await store.aclose()
        fresh = open_store(redis_url=server.url)
        try:
            record = await fresh.load(ROOM, MEETING_IDENTITY)
        finally:
            await fresh.aclose()
    assert record is not None
    assert [s["text"] for s in record.transcript] == [f"line {n}" for n in range(4)]
