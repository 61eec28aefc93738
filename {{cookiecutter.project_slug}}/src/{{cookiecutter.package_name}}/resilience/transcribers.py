"""Multi-participant rooms: one listen-only transcription session per remote participant.

A :class:`Transcriber` runs an AgentSession with only an STT (and a VAD when the STT cannot
stream) bound to one participant through RoomIO: it hears their microphone, publishes their
transcript on their behalf (``lk.transcription`` streams naming their track), and never
speaks. Its final lines are kept, attributed to the participant. It is an election member
(``role == "listen-only"``): the job's primary may be a transcriber while no conversation
runs, and then it holds the SessionHost and recording.

:class:`TranscriberPool` starts a transcriber when a participant joins and closes it when
they leave, each start going through the :class:`~.election.SessionElection`. The participant
the conversational agent talks to is not transcribed again (their conversation session
publishes their lines), so every line is transcribed and published once. Memory is bounded:
each transcriber and the pool keep the newest ``MAX_LINES`` lines (the room's transcript is
kept, and persisted, by :class:`MeetingTranscript`).

:class:`MeetingTranscript` gathers the final lines of everyone in the room: the transcribers'
and the conversation's (its participant's lines and the agent's). It keeps the newest lines
in a bounded :class:`~.transcript.TranscriptLog`, which ``transcript.history`` serves to
anyone in the room who is not an agent, whenever they joined (the whole meeting, as a
meeting's notes are shared), and appends each line to the session store under the room's own
record (:data:`MEETING_IDENTITY`), so it survives a restart, a crash with re-dispatch and the
end of the job. One-to-one rooms have no meeting transcript.

The STT is the model stack's when it has one (the OpenAI pipeline), else OpenAI's
(``openai.STT``, which needs ``OPENAI_API_KEY``): see :func:`listen_only_stt`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from livekit import rtc
from livekit.agents import Agent, AgentSession, JobContext, llm, room_io, stt, utils, vad
from livekit.agents.voice.events import UserInputTranscribedEvent
from livekit.agents.voice.turn import TurnDetectionMode

from ..log import get_logger, identity_ref
from . import _livekit
from .primary.election import Role, SessionElection
from .returning import ConversationRecorder, transcript_from_record
from .store import SessionStore, StoreError
from .transcript import TranscriptLog, TranscriptSegment

logger = get_logger(__name__)

LISTEN_ONLY_INSTRUCTIONS = "You only listen and transcribe; you never speak."
CLOSE_TIMEOUT_S = 10.0
# lines kept in memory per transcriber and per pool (as the conversation's transcript log)
MAX_LINES = 2000
# participants that get a transcriber: people and phone callers, not other agents
TRANSCRIBED_KINDS = (
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
    rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS,
)

EventTypes = Literal["session_started", "transcribed", "closed"]


@dataclass(frozen=True)
class TranscribedLine:
    """One final line a participant said."""

    id: str
    identity: str
    text: str
    at: float


@dataclass(frozen=True)
class TranscriberStarted:
    """A transcriber's session is running (the payload of ``session_started``)."""

    session: AgentSession
    reason: str


@dataclass(frozen=True)
class TranscriberClosed:
    """A transcriber ended (the payload of ``closed``)."""

    reason: str


def listen_only_stt(
    stack_stt: stt.STT | None, *, openai_api_key: str | None, model: str
) -> stt.STT:
    """The STT transcribers use: the model stack's, else ``openai.STT`` (needs the key)."""
    if stack_stt is not None:
        return stack_stt
    if not openai_api_key:
        raise ValueError(
            "multi-participant rooms transcribe every participant: set OPENAI_API_KEY "
            "(the model stack has no STT of its own)"
        )
    from livekit.plugins import openai

    return openai.STT(model=model, api_key=openai_api_key)


class _ListenOnlyAgent(Agent):
    def __init__(self) -> None:
        super().__init__(instructions=LISTEN_ONLY_INSTRUCTIONS)


class Transcriber(utils.EventEmitter[EventTypes]):
    """A listen-only session for one participant, restartable; see the module docstring.

    stt: the STT (shared objects are fine: each session opens its own stream).
    vad: needed when ``stt`` cannot stream (livekit then segments speech with it).
    job_ctx: the job, so a restart of the primary session hands the designation over
        (None outside a job).
    """

    role: Role = "listen-only"

    def __init__(
        self,
        room: rtc.Room,
        identity: str,
        *,
        stt: stt.STT,
        vad: vad.VAD | None = None,
        job_ctx: JobContext | None = None,
    ) -> None:
        super().__init__()
        if not stt.capabilities.streaming and vad is None:
            raise ValueError("this STT cannot stream: pass a VAD so speech can be segmented")
        self._room = room
        self._identity = identity
        self._stt = stt
        self._vad = vad
        self._job_ctx = job_ctx
        self._session: AgentSession | None = None
        self._previous: AgentSession | None = None
        self._lines: deque[TranscribedLine] = deque(maxlen=MAX_LINES)
        self._items: deque[llm.ChatItem] = deque(maxlen=MAX_LINES)
        self._lock = asyncio.Lock()
        self._closed = False
        self._restarts = 0

    @property
    def identity(self) -> str:
        """The participant this transcriber listens to."""
        return self._identity

    @property
    def session(self) -> AgentSession | None:
        """The current session (None before start, between sessions, after close)."""
        return self._session

    @property
    def closed(self) -> bool:
        """True once the transcriber ended."""
        return self._closed

    @property
    def restarts(self) -> int:
        """Sessions replaced so far."""
        return self._restarts

    @property
    def lines(self) -> list[TranscribedLine]:
        """The participant's newest final lines (up to ``MAX_LINES``), across sessions."""
        return list(self._lines)

    def conversation_items(self) -> list[llm.ChatItem]:
        """The lines as user messages (what a session report of this transcriber shows)."""
        return list(self._items)

    async def start(self) -> AgentSession:
        """Start the first session."""
        async with self._lock:
            if self._session is not None or self._closed:
                raise RuntimeError("Transcriber.start() was already called")
            return await self._open("start")

    async def restart(self, reason: str) -> AgentSession | None:
        """Replace the session with a fresh one (lines are kept); None once closed."""
        async with self._lock:
            if self._closed:
                return None
            await self._retire()
            self._restarts += 1
            return await self._open(reason)

    async def aclose(self, reason: str = "closed") -> None:
        """Close the session and end the transcriber."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._retire()
        logger.info("transcriber closed", participant=identity_ref(self._identity), reason=reason)
        self.emit("closed", TranscriberClosed(reason))

    async def _open(self, reason: str) -> AgentSession:
        # turns end where the STT (or the VAD) says; there is no turn-detector model to load
        turn_detection: TurnDetectionMode = "vad" if self._vad is not None else "stt"
        session: AgentSession = AgentSession(
            stt=self._stt, vad=self._vad, turn_handling={"turn_detection": turn_detection}
        )
        session.on("user_input_transcribed", self._on_transcribed)
        if self._job_ctx is not None and self._previous is not None:
            # as the supervisor does: a primary's replacement is primary too
            _livekit.hand_over_primary(self._job_ctx, self._previous, session)
        options = room_io.RoomOptions(
            participant_identity=self._identity,
            # another session may own the pre-connect buffer and the chat topic: never claim
            # them, so closing this one cannot unregister theirs
            audio_input=room_io.AudioInputOptions(pre_connect_audio=False),
            audio_output=False,
            text_input=False,
            text_output=True,
            close_on_disconnect=False,  # the pool closes it when the participant leaves
            delete_room_on_close=False,
        )
        try:
            await session.start(_ListenOnlyAgent(), room=self._room, room_options=options)
        except BaseException:
            session.off("user_input_transcribed", self._on_transcribed)
            await session.aclose()
            raise
        self._session = session
        logger.info("transcriber started", participant=identity_ref(self._identity), reason=reason)
        self.emit("session_started", TranscriberStarted(session, reason))
        return session

    async def _retire(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        self._previous = session
        try:
            await asyncio.wait_for(asyncio.shield(session.aclose()), CLOSE_TIMEOUT_S)
        except TimeoutError:
            logger.warning("transcriber session did not close in time")
        session.off("user_input_transcribed", self._on_transcribed)

    def _on_transcribed(self, ev: UserInputTranscribedEvent) -> None:
        text = ev.transcript.strip()
        if not ev.is_final or not text:
            return
        message = llm.ChatMessage(role="user", content=[text], extra={"speaker": self._identity})
        line = TranscribedLine(message.id, self._identity, text, time.time())
        self._lines.append(line)
        self._items.append(message)
        if self._session is not None:
            # a session with no LLM keeps no history of its own; the report reads it
            history = self._session.history
            history.insert(message.model_copy(deep=True))
            if len(history.items) > MAX_LINES:
                history.truncate(max_items=MAX_LINES)
        self.emit("transcribed", line)


class TranscriberPool:
    """One :class:`Transcriber` per remote participant: started on join, closed on leave.

    stt_factory: the STT for each transcriber (called once per participant).
    job_ctx: the job (for the primary designation on restarts).
    election: where each transcriber registers (None: no election, e.g. a lone tool).
    on_line: called with every final :class:`TranscribedLine`, from any participant.
    exclude: whether a participant is not to be transcribed (the conversation's, on any of
        their devices: its session publishes them).
    """

    def __init__(
        self,
        room: rtc.Room,
        *,
        stt_factory: Callable[[], stt.STT],
        vad: vad.VAD | None = None,
        job_ctx: JobContext | None = None,
        election: SessionElection | None = None,
        on_line: Callable[[TranscribedLine], None] | None = None,
        exclude: Callable[[rtc.RemoteParticipant], bool] | None = None,
    ) -> None:
        self._room = room
        self._exclude = exclude or (lambda participant: False)
        self._stt_factory = stt_factory
        self._vad = vad
        self._job_ctx = job_ctx
        self._election = election
        self._on_line = on_line
        self._transcribers: dict[str, Transcriber] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks = utils.aio.TaskSet()  # transcribers starting and closing
        self._lines: deque[TranscribedLine] = deque(maxlen=MAX_LINES)
        self._following = False

    @property
    def transcribers(self) -> dict[str, Transcriber]:
        """Running transcribers by participant identity."""
        return dict(self._transcribers)

    @property
    def lines(self) -> list[TranscribedLine]:
        """The newest final lines (up to ``MAX_LINES``), of every participant, in order."""
        return list(self._lines)

    def follow(self) -> None:
        """Start transcribing everyone in the room now, and everyone who joins later."""
        if self._following:
            return
        self._following = True
        self._room.on("participant_connected", self._on_connected)
        self._room.on("participant_disconnected", self._on_disconnected)
        for participant in list(self._room.remote_participants.values()):
            self._on_connected(participant)

    async def settled(self) -> None:
        """Wait until every pending start and close is done."""
        while self._tasks.tasks:
            await asyncio.gather(*self._tasks.tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop following the room and close every transcriber."""
        if self._following:
            self._following = False
            self._room.off("participant_connected", self._on_connected)
            self._room.off("participant_disconnected", self._on_disconnected)
        await self.settled()
        for identity in list(self._transcribers):
            await self._leave(identity, "pool closed")

    def _on_connected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind in TRANSCRIBED_KINDS and not self._exclude(participant):
            self._spawn(self._join(participant.identity))

    def _on_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self._spawn(self._leave(participant.identity, "participant left"))

    async def _join(self, identity: str) -> None:
        async with self._lock_for(identity):
            if identity in self._transcribers or identity not in self._room.remote_participants:
                return  # already transcribed, or gone again before its turn came
            transcriber = Transcriber(
                self._room, identity, stt=self._stt_factory(), vad=self._vad, job_ctx=self._job_ctx
            )
            transcriber.on("transcribed", self._on_transcribed)
            self._transcribers[identity] = transcriber
            try:
                if self._election is not None:
                    async with self._election.starting(transcriber):
                        await transcriber.start()
                else:
                    await transcriber.start()
            except Exception:
                logger.exception("transcriber failed to start", participant=identity_ref(identity))
                self._transcribers.pop(identity, None)
                await transcriber.aclose("start failed")

    async def _leave(self, identity: str, reason: str) -> None:
        async with self._lock_for(identity):
            transcriber = self._transcribers.pop(identity, None)
            if transcriber is not None:
                await transcriber.aclose(reason)
                transcriber.off("transcribed", self._on_transcribed)

    def _on_transcribed(self, line: TranscribedLine) -> None:
        self._lines.append(line)
        if self._on_line is not None:
            self._on_line(line)

    def _lock_for(self, identity: str) -> asyncio.Lock:
        # joins and leaves of one identity run in the order they happened
        return self._locks.setdefault(identity, asyncio.Lock())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.create_task(coro)


# the store record of the room itself; no LiveKit identity holds a NUL character
MEETING_IDENTITY = "\x00meeting"


class MeetingTranscript:
    """The room's transcript for ``transcript.history`` and the store; see the module docstring."""

    def __init__(
        self,
        store: SessionStore,
        room: str,
        initial: list[TranscriptSegment] | None = None,
        *,
        session_id: str | None = None,
    ) -> None:
        self.log = TranscriptLog(initial=initial or ())
        self._recorder = ConversationRecorder(store, room, MEETING_IDENTITY)
        self._store, self._room, self._session_id = store, room, session_id

    @classmethod
    async def load(cls, store: SessionStore, room: str, session_id: str) -> MeetingTranscript:
        """The room's transcript so far (empty when the store cannot answer). The job joins
        the room's record as a participant's (``session_id``: the job's), so a Redis that lost
        its data gets the transcript back from memory before the next line."""
        record = None
        try:
            record = (await store.join(room, MEETING_IDENTITY, session_id)).record
        except StoreError as exc:
            logger.warning("room transcript not restored; starting it empty", error=str(exc))
        initial = transcript_from_record(record) if record is not None else []
        if initial:
            logger.info("room transcript restored", lines=len(initial))
        return cls(store, room, initial, session_id=session_id)

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

    async def flush(self) -> None:
        """Wait until every line so far has been handed to the store."""
        await self._recorder.flush()

    async def aclose(self) -> None:
        """Hand what is queued to the store; the record's retention starts."""
        await self._recorder.aclose()
        if self._session_id is not None:
            try:
                await self._store.leave(self._room, MEETING_IDENTITY, self._session_id)
            except StoreError as exc:
                logger.warning("room transcript's leave not recorded", error=str(exc))

    def _keep(self, segment: TranscriptSegment) -> None:
        self._recorder.add(transcript=[segment.to_dict()])


def may_read(room: rtc.Room, identity: str) -> bool:
    """Whether ``identity`` may read the room's transcript: a person in the room now."""
    participant = room.remote_participants.get(identity)
    return participant is not None and participant.kind in TRANSCRIBED_KINDS
