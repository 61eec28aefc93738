"""The SessionSupervisor: one participant's conversation, across any number of AgentSessions.

It starts the session, replaces it with a fresh one when needed and closes it. A restart
builds a new AgentSession (on the same or another model stack) and carries over what the
conversation is: the chat context (tool calls with their outputs, a reply the restart cut
kept as interrupted), userdata, the participant binding, the job's primary designation, and
the room output (same audio track, same transcript). The new session greets only when the
agent was never heard (the first session's model failed before it spoke).

Restart triggers: an unrecoverable model error or an error close, the participant's RPC
``session.restart`` (see :mod:`.rpc`), ``await supervisor.restart(reason, models=...)``, and a
watchdog when the agent thinks for longer than ``stuck_timeout`` without speaking. A
:class:`RestartPolicy` bounds them; when its budget is spent the agent apologises and the
conversation closes, as it does on ``end_with_apology(reason)`` (a model gone for good).

Events (``supervisor.on(name, callback)``): ``session_started`` (:class:`SessionStartedEvent`),
``conversation_item_added`` (livekit's, from the current session), ``transcript_segment``
(:class:`TranscriptSegmentEvent`), ``restarted`` (:class:`RestartedEvent`), ``closed``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Literal

from livekit import rtc
from livekit.agents import Agent, AgentSession, JobContext, llm, room_io, utils
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    CloseReason,
    ConversationItemAddedEvent,
    ErrorEvent,
)
from livekit.agents.voice.events import EventTypes as SessionEvent

from ..log import get_logger, identity_ref
from ..models import ModelSource, as_factory
from . import _livekit
from .apology import APOLOGY, GAVE_UP, say_apology
from .backoff import RestartBudget, RestartPolicy
from .events import (
    BeforeStart,
    CarriedContext,
    ClosedEvent,
    RestartedEvent,
    SessionSpec,
    SessionStartedEvent,
    TranscriptSegmentEvent,
)
from .room_output import RoomOutput
from .rpc import RpcRoutes, restart_handler
from .transcript import TranscriptLog, TranscriptSegment

logger = get_logger(__name__)

EventTypes = Literal[
    "session_started", "conversation_item_added", "transcript_segment", "restarted", "closed"
]

RESTART_NOTE = (
    "The voice connection was restarted just now. Continue the conversation where it was; "
    "do not greet the user again or repeat earlier answers."
)
CLOSE_TIMEOUT_S = 10.0

AgentFactory = Callable[[llm.ChatContext], Agent]


class SessionSupervisor(utils.EventEmitter[EventTypes]):
    """Runs one participant's conversation; see the module docstring.

    room, participant_identity: where, and with whom, the conversation happens.
    models: the model stack (or a factory called for each session).
    agent_factory: builds the Agent for a session from the conversation so far
        (e.g. ``lambda ctx: Assistant(chat_ctx=ctx)``).
    job_ctx: the job, for the primary designation (None outside a job).
    userdata: AgentSession userdata, the same object for every session.
    room_options: RoomIO input options and participant binding for each session.
    session_options: more AgentSession keyword arguments (``max_tool_steps``...).
    policy: restart budget and backoff.
    stuck_timeout: seconds of thinking without speaking before the watchdog restarts
        (None: no watchdog).
    note_restarts: tell the model in its context that a restart happened.
    before_start: called with the :class:`SessionSpec` before each session is built.
    initial_transcript: transcript segments of an earlier part of the conversation.
    routes: the room's RPC routes, which the job shares among its conversations (None:
        routes of this conversation's own).
    """

    def __init__(
        self,
        room: rtc.Room,
        participant_identity: str,
        *,
        models: ModelSource,
        agent_factory: AgentFactory,
        job_ctx: JobContext | None = None,
        userdata: Any = None,
        room_options: room_io.RoomOptions | None = None,
        session_options: Mapping[str, Any] | None = None,
        policy: RestartPolicy | None = None,
        stuck_timeout: float | None = 30.0,
        note_restarts: bool = False,
        before_start: BeforeStart | None = None,
        initial_transcript: Iterable[TranscriptSegment] = (),
        apology: str = APOLOGY,
        routes: RpcRoutes | None = None,
    ) -> None:
        super().__init__()
        if stuck_timeout is not None and stuck_timeout <= 0:
            raise ValueError("stuck_timeout must be positive seconds, or None")
        self._room = room
        self._identity = participant_identity
        self._models = as_factory(models)
        self._agent_factory = agent_factory
        self._job_ctx = job_ctx
        self._userdata = userdata
        self._room_options = dataclasses.replace(
            room_options or room_io.RoomOptions(), participant_identity=participant_identity
        )
        self._session_options = dict(session_options or {})
        self._budget = RestartBudget(policy or RestartPolicy())
        self._stuck_timeout = stuck_timeout
        self._note_restarts = note_restarts
        self._before_start = before_start
        self._apology = apology
        self._routes = routes or RpcRoutes(room.local_participant, room_name=room.name)
        self._output = RoomOutput(room, participant_identity, on_segment=self._on_segment,
                                  initial_transcript=initial_transcript)  # fmt: skip
        self._carried = CarriedContext()
        self._session: AgentSession | None = None
        self._previous: AgentSession | None = None
        self._running = False
        self._own_close: set[int] = set()
        self._listeners: dict[int, dict[SessionEvent, Callable[..., None]]] = {}
        self._lock = asyncio.Lock()
        self._auto_restart: asyncio.Task[Any] | None = None
        self._tasks = utils.aio.TaskSet()  # background work, cancelled on close
        self._stuck_timer: asyncio.TimerHandle | None = None
        self._restarts, self._last_models = 0, ""
        self._started = self._closed = False
        self._greeting: str | None = None  # said again by a restart if never said

    # -- public surface --------------------------------------------------------------------

    @property
    def session(self) -> AgentSession | None:
        """The current AgentSession (None before start, during a restart, after close)."""
        return self._session

    @property
    def restarts(self) -> int:
        """Restarts completed so far."""
        return self._restarts

    @property
    def closed(self) -> bool:
        """True once the conversation ended."""
        return self._closed

    @property
    def transcript(self) -> TranscriptLog:
        """The final transcript segments so far (what ``transcript.history`` serves)."""
        return self._output.transcript

    @property
    def track_sid(self) -> str | None:
        """The SID of the agent's audio track (the same for every session)."""
        return self._output.track_sid

    def set_participant(self, identity: str) -> None:
        """Listen to ``identity`` from now on, in this session and every later one, and
        transcribe its speech as the participant's: the same person on another device."""
        self._room_options = dataclasses.replace(self._room_options, participant_identity=identity)
        self._output.set_participant(identity)
        if self._session is not None:
            self._session.room_io.set_participant(identity)

    def chat_ctx(self) -> llm.ChatContext:
        """The whole conversation so far, across sessions (a copy)."""
        current = self._session.history.items if self._session is not None else ()
        return llm.ChatContext(items=self._carried.items(current))

    async def start(
        self, *, greeting: str | None = None, chat_ctx: llm.ChatContext | None = None
    ) -> AgentSession:
        """Start the first session; ``greeting`` (instructions) makes the agent speak first.

        ``chat_ctx`` is an earlier conversation to continue (a returning participant's).
        """
        if self._started:
            raise RuntimeError("SessionSupervisor.start() was already called")
        self._started, self._greeting = True, greeting
        if chat_ctx is not None:
            self._carried.absorb(chat_ctx.items)
        await self._output.start()
        self._routes.add(self._identity, restart_handler(self), self.transcript)
        try:
            async with self._lock:
                session = await self._open(restart=False, reason="start")
        except BaseException:
            await self._finish("start_failed")
            raise
        if greeting:
            session.generate_reply(instructions=greeting)
        return session

    async def add_earlier_context(self, chat_ctx: llm.ChatContext) -> int:
        """Put an earlier conversation before this one, without a restart or a greeting.

        For a participant the store recognised only after the conversation started (it could
        not answer at once). Returns how many items were added to the model's context.
        """
        async with self._lock:
            if self._closed:
                return 0
            earlier = self._carried.prepend(chat_ctx.items)
            if not earlier:
                return 0
            if self._session is not None:
                agent = self._session.current_agent
                ctx = agent.chat_ctx.copy()
                ctx.items[:0] = earlier
                await agent.update_chat_ctx(ctx)
            return len(earlier)

    async def restart(
        self, reason: str, *, models: ModelSource | None = None
    ) -> AgentSession | None:
        """Replace the session with a fresh one; ``models`` switches (and keeps) the stack.

        Returns the new session once it listens, or None when the restart budget is spent
        (the agent apologised and the conversation closed).
        """
        if not self._started:
            raise RuntimeError("start() the supervisor before restarting it")
        if models is not None:
            self._models = as_factory(models)
        async with self._lock:
            if self._closed:
                raise RuntimeError("the conversation is closed")
            return await self._restart_locked(reason)

    async def aclose(self, reason: str = "closed") -> None:
        """End the conversation: close the session and the room output, emit ``closed``."""
        async with self._lock:
            await self._finish(reason)

    async def end_with_apology(self, reason: str) -> None:
        """Apologise, then end the conversation with ``reason``: for a model gone for good (an
        invalid API key...) and no fallback stack. A session with no model replaces the current
        one and plays the recorded apology (:mod:`.apology`), which the model cannot cut."""
        async with self._lock:
            if not self._closed:
                await self._apologise_and_finish(reason, model_free=True)

    # -- restarts ----------------------------------------------------------------------------

    async def _restart_locked(self, reason: str) -> AgentSession | None:
        while True:
            delay = self._budget.acquire()
            if delay is None:
                logger.error("restart budget spent; ending the call", reason=reason,
                             restarts_in_window=self._budget.used,
                             window_s=self._budget.policy.window,
                             participant=identity_ref(self._identity))  # fmt: skip
                await self._apologise_and_finish(GAVE_UP)
                return None
            if delay:
                logger.info("restart backing off", reason=reason, delay_s=round(delay, 3))
                await asyncio.sleep(delay)
            began = time.monotonic()
            await self._retire(self._session)
            try:
                session = await self._open(restart=True, reason=reason)
            except Exception as exc:
                logger.warning("restarted session failed to start", reason=reason, error=repr(exc))
                reason = "start_failed"
                continue
            self._restarts += 1
            blackout, models = time.monotonic() - began, self._last_models
            logger.info("session restarted", reason=reason, restarts=self._restarts,
                        blackout_ms=round(blackout * 1000, 1), model_stack=models)  # fmt: skip
            self.emit("restarted", RestartedEvent(reason, self._restarts, blackout, models))
            if self._carried.ends_with_user_turn():  # a turn nobody answered: answer it
                session.generate_reply()
            elif self._greeting and not self._carried.agent_spoke():  # the greeting failed
                session.generate_reply(instructions=self._greeting)
            return session

    def _trigger(self, reason: str) -> None:
        """An automatic restart, unless one is under way or the conversation ended."""
        if self._closed or (self._auto_restart is not None and not self._auto_restart.done()):
            return
        self._auto_restart = self._spawn(self._restart_quietly(reason))

    async def _restart_quietly(self, reason: str) -> None:
        try:
            async with self._lock:
                if not self._closed:
                    await self._restart_locked(reason)
        except Exception:
            logger.exception("automatic restart failed", reason=reason)

    async def _apologise_and_finish(self, reason: str, *, model_free: bool = False) -> None:
        session = self._session if self._running and not model_free else None
        if session is None:
            await self._retire(self._session)
            try:  # a session only to apologise: the last one is gone (or its model is)
                session = await self._open(restart=True, reason="apology", model_free=model_free)
            except Exception as exc:
                logger.warning("no session to apologise with", error=repr(exc))
        if session is not None:
            await say_apology(session, self._apology)
        await self._finish(reason)

    # -- sessions ----------------------------------------------------------------------------

    async def _open(self, *, restart: bool, reason: str, model_free: bool = False) -> AgentSession:
        spec = SessionSpec(self._models(), self._seed(restart), restart, reason, self._previous)
        if self._before_start is not None and not model_free:
            result = self._before_start(spec)
            if inspect.isawaitable(result):
                await result
        if model_free:  # only to play the recorded apology: no model to fail, no TTS
            options, agent, name = {}, Agent(instructions="", chat_ctx=spec.chat_ctx), "none"
        else:
            options = spec.models.session_options()
            agent, name = self._agent_factory(spec.chat_ctx), spec.models.name
        kwargs = {**self._session_options, **options}
        if self._userdata is not None:
            kwargs["userdata"] = self._userdata
        session: AgentSession = AgentSession(**kwargs)
        if restart and self._job_ctx is not None:
            _livekit.hand_over_primary(self._job_ctx, self._previous, session)
        self._watch(session)
        try:
            await self._output.start_session(session, agent, room_options=self._room_options)
        except BaseException:
            self._own_close.add(id(session))
            await session.aclose()
            self._unwatch(session)
            await self._output.release(session)
            raise
        self._session, self._running, self._last_models = session, True, name
        logger.info("session started", restart=restart, reason=reason, model_stack=name)
        self.emit("session_started", SessionStartedEvent(session, restart, reason, name))
        return session

    def _seed(self, restart: bool) -> llm.ChatContext:
        ctx = llm.ChatContext(items=self._carried.items())
        if restart and self._note_restarts:
            ctx.add_message(role="system", content=RESTART_NOTE)
        return ctx

    async def _retire(self, session: AgentSession | None) -> None:
        """Close ``session`` (ours, so not a trigger), keep its turns, free the outputs."""
        if session is None:
            return
        self._own_close.add(id(session))
        self._cancel_stuck()
        try:
            # a reply the close cuts is committed during aclose(), so read history after it
            await asyncio.wait_for(asyncio.shield(session.aclose()), CLOSE_TIMEOUT_S)
        except TimeoutError:
            logger.warning("session did not close in time; replacing it anyway")
        self._carried.absorb(session.history.items)
        self._unwatch(session)
        await self._output.release(session)
        self._session, self._previous, self._running = None, session, False

    async def _finish(self, reason: str, error: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._routes.remove(self._identity)
        await self._retire(self._session)
        await self._output.aclose()
        current = asyncio.current_task()
        await utils.aio.cancel_and_wait(*(t for t in self._tasks.tasks if t is not current))
        logger.info("conversation closed", reason=reason, restarts=self._restarts)
        self.emit("closed", ClosedEvent(reason, error))

    # -- session events ----------------------------------------------------------------------

    def _watch(self, session: AgentSession) -> None:
        def on_item(ev: ConversationItemAddedEvent) -> None:
            if isinstance(ev.item, llm.ChatMessage):
                self._output.add_user_turn(ev.item)
            self.emit("conversation_item_added", ev)

        def on_error(ev: ErrorEvent) -> None:
            if session is self._session and not getattr(ev.error, "recoverable", True):
                kind = getattr(ev.error, "type", type(ev.error).__name__)
                logger.warning("unrecoverable model error; restarting", error_type=str(kind))
                self._trigger("model_error")

        def on_close(ev: CloseEvent) -> None:
            if session is not self._session:
                return
            self._running = False
            self._cancel_stuck()
            if id(session) in self._own_close:
                return
            if ev.reason == CloseReason.ERROR or ev.error is not None:
                self._trigger("error_close")
            else:  # the participant left, the job shuts down, a tool ended the call
                self._spawn(self.aclose(ev.reason.value))

        def on_state(ev: AgentStateChangedEvent) -> None:
            if session is not self._session:
                return
            self._cancel_stuck()
            if ev.new_state == "thinking" and self._stuck_timeout is not None:
                loop = asyncio.get_running_loop()
                self._stuck_timer = loop.call_later(self._stuck_timeout, self._on_stuck, session)

        listeners: dict[SessionEvent, Callable[..., None]] = {"conversation_item_added": on_item,
            "error": on_error, "close": on_close, "agent_state_changed": on_state}  # fmt: skip
        for event, callback in listeners.items():
            session.on(event, callback)
        self._listeners[id(session)] = listeners

    def _unwatch(self, session: AgentSession) -> None:
        for event, callback in self._listeners.pop(id(session), {}).items():
            session.off(event, callback)
        self._own_close.discard(id(session))

    def _on_stuck(self, session: AgentSession) -> None:
        self._stuck_timer = None
        if session is self._session:
            logger.warning("agent stuck thinking; restarting", stuck_timeout_s=self._stuck_timeout)
            self._trigger("watchdog")

    def _cancel_stuck(self) -> None:
        if self._stuck_timer is not None:
            self._stuck_timer.cancel()
            self._stuck_timer = None

    def _on_segment(self, segment: TranscriptSegment) -> None:
        self.emit("transcript_segment", TranscriptSegmentEvent(segment))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._tasks.create_task(coro)
