"""The agent's voice and transcript in the room, shared by every session of one conversation.

RoomIO builds its outputs per session, so each restart would publish a new agent audio track
(a new SID) and frontend hooks bound to the track would lose the transcript. ``RoomOutput``
builds them once: one audio track (published once, same SID for the whole conversation), one
agent transcription output stamping that SID on every ``lk.transcription`` stream, one
participant transcription output, and the TranscriptSynchronizer pacing text with audio.
Each session runs RoomIO for its inputs only (see :meth:`RoomOutput.start_session`).

Every final line of the conversation is kept, in order, in a bounded :class:`TranscriptLog`
(agent lines as the frontend saw them, participant lines as committed turns), which backs
the ``transcript.history`` RPC, and is handed to ``on_segment`` for the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, llm, utils
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)
from livekit.agents.voice import Agent, io, room_io
from livekit.agents.voice.events import UserInputTranscribedEvent
from livekit.agents.voice.transcription import TranscriptSynchronizer

from ..log import get_logger
from . import _livekit
from .transcript import TranscriptLog, TranscriptSegment

logger = get_logger(__name__)


SegmentCallback = Callable[[TranscriptSegment], None]


class RoomOutput:
    """One conversation's audio track and transcription outputs, reused by every session.

    Call :meth:`start` once, then :meth:`start_session` for each AgentSession and
    :meth:`release` after it closed; :meth:`aclose` at the end of the conversation.
    """

    def __init__(
        self,
        room: rtc.Room,
        participant_identity: str,
        *,
        on_segment: SegmentCallback | None = None,
        max_segments: int = 2000,
        initial_transcript: Iterable[TranscriptSegment] = (),
        sample_rate: int = 24000,
        num_channels: int = 1,
        track_name: str = "roomio_audio",
    ) -> None:
        self._room = room
        self._identity = participant_identity
        self._on_segment = on_segment
        self.transcript = TranscriptLog(max_segments, initial_transcript)
        self._audio = _livekit.new_audio_output(
            room, sample_rate=sample_rate, num_channels=num_channels, track_name=track_name
        )
        self._agent_text = _AgentTranscriptOutput(room, self._track_sid, self._agent_line)
        self._sync = TranscriptSynchronizer(
            next_in_chain_audio=self._audio, next_in_chain_text=self._agent_text
        )
        self._user_text = _livekit.new_user_transcription_output(room, participant_identity)
        self._user_ch = utils.aio.Chan[UserInputTranscribedEvent]()
        self._tasks: list[asyncio.Task[None]] = []
        self._heads: dict[int, io.AudioOutput | None] = {}
        self._started = False

    @property
    def track_sid(self) -> str | None:
        """The SID of the agent's audio track, once published."""
        return _livekit.published_track_sid(self._audio)

    @property
    def audio_output(self) -> io.AudioOutput:
        """What sessions play into (the synchronizer in front of the track)."""
        return self._sync.audio_output

    async def start(self) -> None:
        """Publish the track (in the background: it waits for a subscriber, as RoomIO does)."""
        if self._started:
            return
        self._started = True
        self._tasks.append(asyncio.create_task(self._publish(), name="room_output_publish"))
        self._tasks.append(asyncio.create_task(self._forward_user_text(), name="room_output_user"))

    async def start_session(
        self, session: AgentSession, agent: Agent, *, room_options: room_io.RoomOptions, **kwargs
    ) -> None:
        """Start ``session`` with RoomIO for input only, speaking through the shared outputs.

        ``room_options`` keep their inputs and participant binding; their audio and text
        outputs are switched off (and room deletion on close, which a restart must not do).
        """
        if not self._started:
            raise RuntimeError("RoomOutput.start() must run before start_session()")
        session.output.audio = self._sync.audio_output
        session.output.transcription = self._sync.text_output
        session.on("user_input_transcribed", self._on_user_transcribed)
        options = dataclasses.replace(
            room_options, audio_output=False, text_output=False, delete_room_on_close=False
        )
        await session.start(agent, room=self._room, room_options=options, **kwargs)
        # a session may wrap the shared sink (RecorderIO does); remember the top to unhook it
        self._heads[id(session)] = session.output.audio

    async def release(self, session: AgentSession) -> None:
        """Forget a closed session: its listeners, and its wrappers on the shared sink.

        Waits until the segment the close cut (if any) was finalised, so it is in the log.
        """
        session.off("user_input_transcribed", self._on_user_transcribed)
        head = self._heads.pop(id(session), None)
        _livekit.unhook_audio_wrappers(head, self._sync.audio_output)
        await self._sync.barrier()
        await self._agent_text.drain()

    def set_participant(self, identity: str) -> None:
        """Transcribe ``identity``'s speech as the participant's from now on (their next
        device): published as theirs, and logged with them as the speaker."""
        self._identity = identity
        _livekit.set_transcription_participant(self._user_text, identity)

    def add_user_turn(self, item: llm.ChatMessage) -> TranscriptSegment | None:
        """Log a committed participant turn (typed or spoken); empty turns are skipped."""
        text = item.text_content
        if item.role != "user" or not text:
            return None
        return self._log(id=item.id, role="user", speaker=self._identity, text=text)

    async def aclose(self) -> None:
        """Finalise what is open, stop playout; the track is unpublished when the room ends."""
        await self._sync.aclose()
        await self._agent_text.aclose()
        self._user_ch.close()
        await utils.aio.cancel_and_wait(*self._tasks)
        await _livekit.close_text_output(self._user_text)
        await _livekit.close_audio_output(self._audio)

    # -- internals -------------------------------------------------------------------------

    async def _publish(self) -> None:
        try:
            await _livekit.start_audio_output(self._audio)
        except Exception:
            logger.exception("agent audio track could not be published")
            raise
        logger.debug("agent audio track published", track_sid=self.track_sid)

    async def _track_sid(self) -> str | None:
        # text reaches the room paced by audio, which cannot play before the track is
        # subscribed; unpaced text (audio switched off) waits for it the same way
        await _livekit.subscribed(self._audio)
        return self.track_sid

    def _agent_line(self, segment_id: str, text: str, track_id: str | None) -> None:
        self._log(
            id=segment_id,
            role="agent",
            speaker=self._room.local_participant.identity,
            text=text,
            track_id=track_id,
        )

    def _log(self, **fields: Any) -> TranscriptSegment:
        segment = self.transcript.append(**fields)
        if self._on_segment is not None:
            try:
                self._on_segment(segment)
            except Exception:
                logger.exception("transcript segment callback failed", seq=segment.seq)
        return segment

    def _on_user_transcribed(self, ev: UserInputTranscribedEvent) -> None:
        if not self._user_ch.closed:
            self._user_ch.send_nowait(ev)

    async def _forward_user_text(self) -> None:
        # one ordered forwarder for every session: a restart never reorders user transcripts
        async for ev in self._user_ch:
            await self._user_text.capture_text(ev.transcript)
            if ev.is_final:
                self._user_text.flush()


class _AgentTranscriptOutput(io.TextOutput):
    """Agent transcript on ``lk.transcription``: one delta stream per segment, stamped with
    the shared track's SID, closed with ``lk.transcription_final=true`` exactly once."""

    def __init__(
        self,
        room: rtc.Room,
        track_sid: Callable[[], Any],
        on_final: Callable[[str, str, str | None], None],
    ) -> None:
        super().__init__(label="SharedRoomTranscript", next_in_chain=None)
        self._room = room
        self._track_sid = track_sid
        self._on_final = on_final
        self._open: _OpenSegment | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def capture_text(self, text: str) -> None:
        if not text:
            return
        segment = self._open
        if segment is None:
            segment = self._open = _OpenSegment(utils.shortuuid("SG_"))
        segment.parts.append(str(text))
        async with segment.lock:  # FIFO: writes, then the close, in capture order
            try:
                if segment.writer is None:
                    segment.track_id = await self._track_sid()
                    segment.writer = await self._room.local_participant.stream_text(
                        topic=TOPIC_TRANSCRIPTION,
                        attributes=segment.attributes(final=False),
                    )
                await segment.writer.write(str(text))
            except Exception as exc:
                # the room is gone or refused the stream: the line is still logged on flush
                logger.warning("agent transcript not sent", error=str(exc))

    def flush(self) -> None:
        segment, self._open = self._open, None
        if segment is None:
            return
        task = asyncio.create_task(self._finish(segment), name="agent_transcript_final")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _finish(self, segment: _OpenSegment) -> None:
        async with segment.lock:
            if segment.writer is not None:
                try:
                    await segment.writer.aclose(attributes=segment.attributes(final=True))
                except Exception as exc:
                    logger.warning("agent transcript not finalised", error=str(exc))
        self._on_final(segment.id, "".join(segment.parts), segment.track_id)

    async def drain(self) -> None:
        """Wait until every flushed segment is finalised."""
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def aclose(self) -> None:
        self.flush()
        await self.drain()


class _OpenSegment:
    def __init__(self, segment_id: str) -> None:
        self.id = segment_id
        self.parts: list[str] = []
        self.lock = asyncio.Lock()
        self.writer: rtc.TextStreamWriter | None = None
        self.track_id: str | None = None

    def attributes(self, *, final: bool) -> dict[str, str]:
        attrs = {
            ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: self.id,
            ATTRIBUTE_TRANSCRIPTION_FINAL: "true" if final else "false",
        }
        if self.track_id:
            attrs[ATTRIBUTE_TRANSCRIPTION_TRACK_ID] = self.track_id
        return attrs
