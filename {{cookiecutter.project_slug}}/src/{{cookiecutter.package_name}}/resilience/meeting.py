"""A multi-participant room's transcript: every line once, attributed, ordered and kept.

In ``ROOM_MODE=multi-participant`` one :class:`MeetingTranscript` per job gathers the final
lines of everyone in the room: the transcribers' (every participant but the conversation's)
and the conversation's (its participant's lines and the agent's). It keeps the newest lines
in a bounded :class:`~.room_output.TranscriptLog`, which ``transcript.history`` serves to
anyone in the room, and appends each line to the session store under the room's own record
(:data:`MEETING_IDENTITY`), so the transcript survives a restart, a crash with re-dispatch and
the end of the job: the room's next job starts from it.

Who may read it: any participant in the room who is not an agent, whenever they joined (the
whole meeting, as a meeting's notes are shared). One-to-one rooms have no meeting transcript;
there only the conversation's participant reads their own.
"""

from __future__ import annotations

from livekit import rtc

from ..log import get_logger
from .returning import ConversationRecorder, transcript_from_record
from .store import SessionStore, StoreError
from .transcribers import TRANSCRIBED_KINDS, TranscribedLine
from .transcript import TranscriptLog, TranscriptSegment

logger = get_logger(__name__)

# the store record of the room itself; no LiveKit identity holds a NUL character
MEETING_IDENTITY = "\x00meeting"


class MeetingTranscript:
    """The room's transcript for ``transcript.history`` and the store; see the module docstring."""

    def __init__(
        self, store: SessionStore, room: str, initial: list[TranscriptSegment] | None = None
    ) -> None:
        self.log = TranscriptLog(initial=initial or ())
        self._recorder = ConversationRecorder(store, room, MEETING_IDENTITY)

    @classmethod
    async def load(cls, store: SessionStore, room: str) -> MeetingTranscript:
        """The room's transcript so far from the store (empty when it cannot answer)."""
        try:
            record = await store.load(room, MEETING_IDENTITY)
        except StoreError as exc:
            logger.warning("room transcript not restored; starting it empty", error=str(exc))
            record = None
        initial = transcript_from_record(record) if record is not None else []
        if initial:
            logger.info("room transcript restored", lines=len(initial))
        return cls(store, room, initial)

    def add_line(self, line: TranscribedLine) -> None:
        """A transcriber's final line."""
        self._keep(self.log.append(id=line.id, role="user", speaker=line.identity, text=line.text))

    def add_segment(self, segment: TranscriptSegment) -> None:
        """A final line of the conversation (its participant's or the agent's)."""
        self._keep(
            self.log.append(
                id=segment.id,
                role=segment.role,
                speaker=segment.speaker,
                text=segment.text,
                track_id=segment.track_id,
            )
        )

    async def aclose(self) -> None:
        """Hand what is queued to the store."""
        await self._recorder.aclose()

    def _keep(self, segment: TranscriptSegment) -> None:
        self._recorder.add(transcript=[segment.to_dict()])


def may_read(room: rtc.Room, identity: str) -> bool:
    """Whether ``identity`` may read the room's transcript: a person in the room now."""
    participant = room.remote_participants.get(identity)
    return participant is not None and participant.kind in TRANSCRIBED_KINDS
