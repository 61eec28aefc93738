"""The one place that touches livekit-plugins-google's internals (pinned to 1.8.x, >= 1.8.9).

``ResumableRealtimeSession`` subclasses the plugin's ``RealtimeSession`` and replaces its
connection loop (``_main_task``) with :class:`.connection_loop.ConnectionLoop`; it keeps the
plugin's receive path (``_recv_task``: server messages -> generations, tools, transcripts)
and chat-context diff (``_sync_chat_ctx``). What it relies on, all checked by
``tests/test_gemini_plugin_adapter.py``:

- ``RealtimeSession.__init__`` starts ``self._main_task()`` as a task;
- the outbound queue ``_msg_ch`` (``utils.aio.Chan``) of genai ``LiveClient*`` messages, and
  ``_ChatCtxContent`` / ``_ChatCtxToolResponse`` carrying the chat item ids they send;
- ``_chat_ctx`` (what the server should hold), ``_pending_chat_ctx`` (set while no session
  is active), ``_unsent_item_ids``, ``_active_session``, ``_session_lock``;
- ``_session_should_close`` (set by ``_mark_restart_needed`` when a reconnect is needed),
  ``_session_error`` (set by ``_recv_task`` when the connection fails);
- ``_pending_generation_fut`` (a ``generate_reply`` waiting for its generation),
  ``_current_generation`` (a ``_ResponseGeneration``: ``message_ch``, ``function_ch``,
  ``text_ch``, ``audio_ch``, ``response_id``, ``output_text``, ``_done``) and
  ``_start_new_generation()``, which the receive path calls when a model turn begins;
- ``_build_connect_config()``, ``_client.aio.live.connect``, ``_sync_chat_ctx(ctx, known=)``,
  ``_recv_task(session)``, ``_report_connection_acquired(s)``, ``_emit_error(e, recoverable)``,
  ``RealtimeModel._sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection
from typing import Any, TypeGuard

from google.genai import types
from livekit.agents import llm, utils
from livekit.plugins import google
from livekit.plugins.google import log as google_log
from livekit.plugins.google.realtime import realtime_api

from ...log import get_logger
from ._catch_up import (
    MAX_REASKS,
    REASK_TIMEOUT_S,
    HeldReply,
    UnansweredSpeech,
    answered_or_unknown_calls,
    paired,
    reask,
)
from .connection_loop import ConnectionLoop, TappedSession, is_speech
from .resume import GeminiResume

__all__ = [
    "PLUGIN_VERSION_RANGE",
    "ResumableRealtimeModel",
    "ResumableRealtimeSession",
    "UnsupportedPluginVersionError",
    "check_plugin_version",
]

logger = get_logger(__name__)

PLUGIN_VERSION_RANGE = ((1, 8, 9), (1, 9, 0))
"""livekit-plugins-google versions whose internals this adapter was checked against:
at least the first, below the second."""

_CHAT_CONTENT = (realtime_api._ChatCtxContent, realtime_api._ChatCtxToolResponse)


class UnsupportedPluginVersionError(RuntimeError):
    """The installed livekit-plugins-google is outside the range the adapter supports."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_plugin_version(version: str | None = None) -> None:
    """Raise UnsupportedPluginVersionError unless the plugin version is in the pinned range."""
    from livekit.plugins.google.version import __version__

    found = version or __version__
    low, high = PLUGIN_VERSION_RANGE
    if not low <= _version_tuple(found) < high:
        span = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
        raise UnsupportedPluginVersionError(
            f"livekit-plugins-google {found} is not supported by the Gemini resume handler "
            f"(needs {span}); pin the plugin or re-check resilience/gemini/_plugin.py and run "
            "tests/test_gemini_plugin_adapter.py"
        )


# The plugin logs every dropped connection at ERROR with a traceback ("error in receive
# task"); with the resume handler a drop is routine and recovered, so it is a warning.
RECEIVE_ERROR_PREFIX = "error in receive task"


class RecoveredDropsAreWarnings(logging.Filter):
    """Downgrade the plugin's receive-task errors to one-line warnings (the handler reconnects;
    it logs ERROR itself when its reconnect budget is spent)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith(RECEIVE_ERROR_PREFIX):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def quieten_recovered_drops() -> None:
    """Install `RecoveredDropsAreWarnings` on the plugin's logger (idempotent)."""
    plugin_logger = logging.getLogger(google_log.logger.name)
    if not any(isinstance(f, RecoveredDropsAreWarnings) for f in plugin_logger.filters):
        plugin_logger.addFilter(RecoveredDropsAreWarnings())


def _is_trigger(msg: Any) -> TypeGuard[types.LiveClientContent]:
    """A clientContent that asks the model to answer (generate_reply's ``.`` turn)."""
    return (
        isinstance(msg, types.LiveClientContent)
        and not isinstance(msg, _CHAT_CONTENT)
        and msg.turn_complete is not False
    )


class ResumableRealtimeModel(google.realtime.RealtimeModel):
    """The plugin's RealtimeModel whose sessions reconnect through a :class:`GeminiResume`.

    Takes the plugin's keywords except ``session_resumption`` (the handler owns handles).
    Context-window compression (sliding window) is on unless given.
    """

    def __init__(self, *, resume: GeminiResume | None = None, **kwargs: Any) -> None:
        check_plugin_version()
        quieten_recovered_drops()
        if "session_resumption" in kwargs:
            raise ValueError(
                "pass the handle through GeminiResume.resume_from(), not session_resumption"
            )
        kwargs.setdefault(
            "context_window_compression",
            types.ContextWindowCompressionConfig(sliding_window=types.SlidingWindow()),
        )
        super().__init__(**kwargs)
        self._resume = resume or GeminiResume()

    @property
    def resume(self) -> GeminiResume:
        """The handler the next sessions report to."""
        return self._resume

    def bind_resume(self, resume: GeminiResume) -> None:
        """Make sessions created from now on use ``resume`` (one per conversation)."""
        self._resume = resume

    def drop_connections(self) -> int:
        """Abort every live websocket of this model's sessions, as a network drop does
        (fault drills against any endpoint); returns how many were dropped."""
        dropped = 0
        for sess in list(self._sessions):
            if isinstance(sess, ResumableRealtimeSession) and sess.abort_connection():
                dropped += 1
        return dropped

    def session(self, *, turn_detection_disabled: bool = False) -> ResumableRealtimeSession:
        sess = ResumableRealtimeSession(self, self._resume)
        self._sessions.add(sess)
        return sess


class ResumableRealtimeSession(realtime_api.RealtimeSession):
    """The plugin's session with the connection loop replaced (see the module docstring)."""

    def __init__(self, model: ResumableRealtimeModel, resume: GeminiResume) -> None:
        # set before the base __init__, which starts _main_task
        self._carry: deque[Any] = deque()
        self._last_trigger: types.LiveClientContent | None = None
        self._link_error: BaseException | None = None
        self._held: HeldReply | None = None
        self._continuation: Any = None  # the generation that continues a held reply
        self._reasks = 0  # re-asks so far for the reply _continuation continues
        self._speech = UnansweredSpeech()
        self._resume = resume
        self._link = ConnectionLoop(self, resume)
        super().__init__(model)

    # a structlog logger: log_exceptions only calls its .exception(), which it has
    @utils.log_exceptions(logger=logger)  # type: ignore[arg-type]
    async def _main_task(self) -> None:
        await self._link.run()

    def _mark_restart_needed(self, on_error: bool = False) -> None:
        # the base drops every queued message here (a reply trigger with them); the loop
        # re-orders the queue after the next connect instead
        if on_error and self._session_error is not None:
            self._link_error, self._session_error = self._session_error, None
            self.hold_reply()  # before the receive task's teardown finishes the generation
        self._session_should_close.set()

    # -- a reply cut by a lost connection ---------------------------------------------------

    def hold_reply(self) -> None:
        """The connection is ending: if a reply is mid-way, keep its speech open for the
        rest (asked for once after the reconnect; at most ``MAX_REASKS`` times a reply).
        The base then finishes the generation as usual (the cut part plays out and joins
        the chat context) but closes stand-in channels, not the ones the speech reads."""
        gen = self._current_generation
        if gen is None or gen._done or self.closed:
            return
        # each cut is asked for once; a rest cut in turn is asked for again, up to a cap
        asked = self._reasks if gen is self._continuation else 0
        self._resume.reply_cut(gen.response_id, asking=asked < MAX_REASKS)
        if asked >= MAX_REASKS:
            return
        self._reasks = asked + 1
        self._release_held()
        self._held = HeldReply(gen.message_ch, gen.function_ch, gen.response_id)
        gen.message_ch, gen.function_ch = utils.aio.Chan(), utils.aio.Chan()

    def _release_held(self) -> None:
        """End a held reply's speech with the part said (no rest is coming)."""
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def _start_new_generation(self) -> None:
        self._speech.answered()  # the server took the spoken turn in: it is answering
        held = self._held
        pending = self._pending_generation_fut
        if held is None or (pending is not None and not pending.done()):
            self._release_held()  # a reply someone asked for since: the held one ends
            super()._start_new_generation()
            return
        # the rest of a held reply: the next message of the same speech, nothing emitted
        self._held = None
        if held.expires is not None:
            held.expires.cancel()
        audio = self._realtime_model.capabilities.audio_output
        gen = realtime_api._ResponseGeneration(
            message_ch=held.message_ch,
            function_ch=held.function_ch,
            response_id=utils.shortuuid("GR_"),
            input_id=utils.shortuuid("GI_"),
            text_ch=utils.aio.Chan[str](),
            audio_ch=utils.aio.Chan(),
        )
        if not audio:
            gen.audio_ch.close()
        modalities: asyncio.Future[list[Any]] = asyncio.Future()
        modalities.set_result(["audio", "text"] if audio else ["text"])
        held.message_ch.send_nowait(
            llm.MessageGeneration(
                message_id=gen.response_id,
                text_stream=gen.text_ch,
                audio_stream=gen.audio_ch,
                modalities=modalities,
            )
        )
        self._current_generation = gen
        self._continuation = gen
        self._resume.reply_continued(held.response_id)

    def interrupt(self) -> None:
        self._release_held()  # the caller barged in: the rest is not wanted
        super().interrupt()

    async def aclose(self) -> None:
        self._release_held()
        await super().aclose()

    # -- SessionPort ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._msg_ch.closed

    @property
    def wake(self) -> asyncio.Event:
        return self._session_should_close

    def connect(self, handle: str | None) -> contextlib.AbstractAsyncContextManager[Any]:
        config = self._build_connect_config()
        config.session_resumption = types.SessionResumptionConfig(handle=handle)
        self._session_resumption_handle = handle
        return self._client.aio.live.connect(model=self._opts.model, config=config)

    def attach(self, tap: TappedSession, known_ids: Collection[str] | None) -> int:
        """Make ``tap`` the active session and queue what the server lacks, in order:
        the missing chat items, then what was queued (a reply trigger after the turns it
        answers), then a trigger again if a reply is still awaited. Returns items sent."""
        # duck-types genai's AsyncSession: the plugin only calls receive() and close()
        self._active_session = tap  # type: ignore[assignment]
        target = self._pending_chat_ctx if self._pending_chat_ctx is not None else self._chat_ctx
        self._pending_chat_ctx = None
        old, self._msg_ch = self._msg_ch, utils.aio.Chan()
        queued = list(self._carry)
        self._carry.clear()
        while not old.empty():
            queued.append(old.recv_nowait())
        # chat content is derived again from the chat context below, so none goes twice;
        # a spoken turn in flight goes again, before what was said since
        kept = [*self._speech.take(), *(m for m in queued if not isinstance(m, _CHAT_CONTENT))]
        self._unsent_item_ids.clear()
        if known_ids is None:
            sent = self._send_as_content(target.items, target)
        else:
            known_set = set(known_ids)
            known = llm.ChatContext([i for i in target.items if i.id in known_set])
            missing = [
                item
                for _, item_id in llm.utils.compute_chat_ctx_diff(known, target).to_create
                if (item := target.get_by_id(item_id)) is not None
            ]
            if answered_or_unknown_calls(missing, target):
                # a tool result the server would take as a toolResponse answers a call it
                # may not hold and asks for a reply the chat context already has (or a held
                # reply is about to continue): the catch-up goes as content, in chat order
                sent = self._send_as_content(missing, target)
            else:
                sent = len(missing)
                self._sync_chat_ctx(target, known=known)
        awaited = (
            self._pending_generation_fut is not None and not self._pending_generation_fut.done()
        )
        if awaited:
            self._release_held()  # a new reply is asked for: it follows the part said
            if self._last_trigger is not None and not any(map(_is_trigger, kept)):
                kept.append(self._last_trigger)
        elif (held := self._held) is not None:
            if not any(map(_is_trigger, kept)):
                kept.append(reask())  # after the cut part, which the chat context just sent
            # whatever asks for the rest, the speech ends with the part said if none begins
            held.expire_in(REASK_TIMEOUT_S, self._expire_held)
        for msg in kept:
            self._send_client_event(msg)
        return sent

    def _expire_held(self, held: HeldReply) -> None:
        if self._held is held:
            logger.warning("the rest of a cut reply never came; its speech ends here")
            self._release_held()

    def _send_as_content(self, items: list[llm.ChatItem], target: llm.ChatContext) -> int:
        """Send ``items`` as one clientContent (no reply asked), in chat order, function
        calls and their results as parts; ``target`` becomes the known state."""
        turns_dict, _ = (
            llm.ChatContext(paired(items))
            .copy(
                exclude_handoff=True,
                exclude_instructions=True,
                exclude_empty_message=True,
                exclude_config_update=True,
            )
            .to_provider_format(format="google", inject_dummy_user_message=False)
        )
        turns = [types.Content.model_validate(turn) for turn in turns_dict]
        self._chat_ctx = target
        ids = {
            i.id for i in items if i.type in ("message", "function_call", "function_call_output")
        }
        if turns:
            self._unsent_item_ids |= ids
            self._send_client_event(
                realtime_api._ChatCtxContent(turns=turns, turn_complete=False, item_ids=ids)
            )
        return len(ids) if turns else 0

    def abort_connection(self) -> bool:
        """Abort the live websocket with no close frame (genai keeps it as ``_ws``)."""
        tap = self._active_session
        ws = getattr(getattr(tap, "inner", None), "_ws", None)
        if ws is None:
            return False
        ws.transport.abort()
        return True

    async def detach(self) -> None:
        async with self._session_lock:
            self._active_session = None

    async def send_loop(self, tap: TappedSession) -> None:
        """Send queued messages in order; one that failed to go out is sent next time."""
        with contextlib.suppress(utils.aio.ChanClosed):
            while True:
                msg = self._carry.popleft() if self._carry else await self._msg_ch.recv()
                try:
                    await self._send_one(tap.inner, msg)
                except BaseException:
                    self._carry.appendleft(msg)
                    raise
                trigger = _is_trigger(msg) or isinstance(msg, types.LiveClientToolResponse)
                if isinstance(msg, _CHAT_CONTENT):
                    self._unsent_item_ids -= msg.item_ids
                if _is_trigger(msg):
                    self._last_trigger = msg
                speech = False
                if isinstance(msg, types.LiveClientRealtimeInput) and msg.audio is not None:
                    speech = is_speech(msg.audio.data or b"")
                    self._speech.sent(msg, speech=speech)
                self._link.on_sent(
                    chat_item=isinstance(msg, _CHAT_CONTENT), trigger=trigger, speech=speech
                )

    @staticmethod
    async def _send_one(session: Any, msg: Any) -> None:
        if isinstance(msg, types.LiveClientContent):
            turn_complete = msg.turn_complete if msg.turn_complete is not None else True
            await session.send_client_content(turns=msg.turns, turn_complete=turn_complete)
        elif isinstance(msg, types.LiveClientToolResponse):
            if msg.function_responses:
                await session.send_tool_response(function_responses=msg.function_responses)
        elif isinstance(msg, types.LiveClientRealtimeInput):
            fields = msg.model_dump(exclude_none=True)
            for name in ("audio", "video", "text", "activity_start", "activity_end"):
                if name in fields:
                    await session.send_realtime_input(**{name: getattr(msg, name)})
                    break
        else:
            logger.warning("unknown outbound message dropped", kind=type(msg).__name__)

    async def recv_loop(self, tap: TappedSession) -> None:
        await self._recv_task(tap)  # type: ignore[arg-type]  # duck-types AsyncSession, as above

    def speech_answered(self) -> None:
        self._speech.answered()

    def take_error(self) -> BaseException | None:
        error, self._link_error = self._link_error, None
        return error

    def covered_item_ids(self) -> list[str]:
        return [i.id for i in self._chat_ctx.items if i.id not in self._unsent_item_ids]

    def busy(self) -> bool:
        generation = self._current_generation
        pending = self._pending_generation_fut
        return (generation is not None and not generation._done) or (
            pending is not None and not pending.done()
        )

    def report_connected(self, seconds: float) -> None:
        self._report_connection_acquired(seconds)

    def fail(self, error: BaseException, recoverable: bool) -> None:
        self._emit_error(error if isinstance(error, Exception) else Exception(error), recoverable)
