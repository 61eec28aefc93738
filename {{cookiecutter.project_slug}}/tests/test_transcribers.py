"""Listen-only transcribers: one per participant, started on join, closed on leave.

Real: the AgentSession and its RoomIO input (an ``rtc.AudioStream`` on each participant's
microphone track, audio processing, resampling), STT streaming, the participant's
transcription output (``lk.transcription`` streams), the room events. Scripted: the audio is
tones from ``ParticipantMicrophone`` and ``ToneSTT`` tells which line each tone says, so a
line reaches a participant's transcript only if that participant's audio carried it.
"""

from __future__ import annotations

import asyncio

import pytest
from livekit.agents.testing import fake_job_context

from {{ cookiecutter.package_name }}.resilience import _livekit
from {{ cookiecutter.package_name }}.resilience.primary.election import SessionElection
from {{ cookiecutter.package_name }}.resilience.transcribers import (
    Transcriber,
    TranscriberPool,
    listen_only_stt,
)
from {{ cookiecutter.package_name }}.testing import SimulatedRoom
from {{ cookiecutter.package_name }}.testing.room.speech import (
    ParticipantMicrophone,
    SpeechCodebook,
    ToneSTT,
)

AGENT = "agent"


def final_user_lines(room: SimulatedRoom) -> list[tuple[str, str]]:
    """(speaker, text) of each final transcribed user line, as a frontend shows them."""
    return [
        (s.speaker, s.text)
        for s in room.transcript()
        if s.role == "user" and s.source == "transcription" and s.final
    ]


async def test_each_participant_is_transcribed_under_their_own_name() -> None:
    codebook = SpeechCodebook()
    room = SimulatedRoom(agent_identity=AGENT)
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        election = SessionElection(ctx, room=room)
        pool = TranscriberPool(
            room, stt_factory=lambda: ToneSTT(codebook), election=election, job_ctx=ctx
        )
        pool.follow()
        mics = {}
        for who in ("ann", "ben"):
            room.add_participant(who)
            mics[who] = ParticipantMicrophone(room, who, codebook)
        await pool.settled()
        assert set(pool.transcribers) == {"ann", "ben"}

        await mics["ann"].say("Good morning.")
        await mics["ben"].say("Morning, Ann.")
        await mics["ann"].say("Shall we begin?")
        await room.wait_until(lambda r: len(final_user_lines(r)) >= 3, 10)

        assert final_user_lines(room) == [
            ("ann", "Good morning."),
            ("ben", "Morning, Ann."),
            ("ann", "Shall we begin?"),
        ]
        by_speaker = {(line.identity, line.text) for line in pool.lines}
        assert by_speaker == set(final_user_lines(room))
        # the transcript names each speaker's own microphone track
        tracks = {s.speaker: s.track_id for s in room.transcript() if s.role == "user"}
        assert tracks == {who: mic.track.sid for who, mic in mics.items()}
        # nothing was spoken by the agent and no agent track was published
        assert not [t for t in room.published_tracks if t.participant_identity == AGENT]

        room.remove_participant("ann")
        await pool.settled()
        assert set(pool.transcribers) == {"ben"}
        await election.settled()
        assert election.primary is pool.transcribers["ben"]
        await pool.aclose()
        await election.aclose()
        for mic in mics.values():
            await mic.aclose()
        await room.disconnect()


async def test_a_restarted_transcriber_keeps_listening_and_keeps_its_lines() -> None:
    codebook = SpeechCodebook()
    room = SimulatedRoom(agent_identity=AGENT)
    room.add_participant("ann")
    mic = ParticipantMicrophone(room, "ann", codebook)
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        transcriber = Transcriber(room, "ann", stt=ToneSTT(codebook), job_ctx=ctx)
        first = await transcriber.start()
        assert _livekit.primary_session(ctx) is first
        await mic.say("Before the restart.")
        await room.wait_until(lambda r: len(final_user_lines(r)) >= 1, 10)
        second = await transcriber.restart("test")
        assert second is not None and second is not first and transcriber.restarts == 1
        await mic.say("After the restart.")
        await room.wait_until(lambda r: len(final_user_lines(r)) >= 2, 10)
        assert [line.text for line in transcriber.lines] == [
            "Before the restart.",
            "After the restart.",
        ]
        # a listen-only session keeps the lines in its history (what its report shows)
        assert [m.text_content for m in second.history.messages()] == ["After the restart."]
        await transcriber.aclose()
        assert transcriber.closed and await transcriber.restart("again") is None
    await mic.aclose()
    await room.disconnect()


async def test_join_and_leave_race_leaves_no_transcriber_behind() -> None:
    codebook = SpeechCodebook()
    room = SimulatedRoom(agent_identity=AGENT)
    with fake_job_context(room=room, agent_identity=AGENT) as ctx:
        election = SessionElection(ctx, room=room)
        pool = TranscriberPool(
            room, stt_factory=lambda: ToneSTT(codebook), election=election, job_ctx=ctx
        )
        pool.follow()
        room.add_participant("ann")
        room.remove_participant("ann")  # gone before its transcriber could start
        room.add_participant("ben")
        await pool.settled()
        await election.settled()
        assert set(pool.transcribers) == {"ben"}
        assert election.members == [pool.transcribers["ben"]]
        await pool.aclose()
        await election.settled()
        assert election.members == [] and election.primary is None
        await election.aclose()
        await room.disconnect()


def test_listen_only_stt_needs_an_openai_key_without_a_stack_stt() -> None:
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        listen_only_stt(None, openai_api_key=None, model="gpt-4o-mini-transcribe")
    tone = ToneSTT(SpeechCodebook())
    assert listen_only_stt(tone, openai_api_key=None, model="x") is tone
    openai_stt = listen_only_stt(None, openai_api_key="sk-test", model="gpt-4o-mini-transcribe")
    assert openai_stt.provider.lower().startswith("openai") or "openai" in openai_stt.label


async def test_a_non_streaming_stt_needs_a_vad() -> None:
    room = SimulatedRoom(agent_identity=AGENT)
    batch = listen_only_stt(None, openai_api_key="sk-test", model="gpt-4o-mini-transcribe")
    assert not batch.capabilities.streaming
    with pytest.raises(ValueError, match="VAD"):
        Transcriber(room, "ann", stt=batch)
    await asyncio.sleep(0)
    await room.disconnect()
