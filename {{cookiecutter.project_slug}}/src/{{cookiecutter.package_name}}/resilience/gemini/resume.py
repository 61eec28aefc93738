"""Gemini Live resume handler: one conversation's resumption handle, reconnect policy and events.

What it guarantees, after every reconnect of a Gemini Live session: the conversation the
server holds equals the worker's chat context, nothing missing and nothing twice.

- A drop (or a plugin-requested reconnect) resumes with the newest resumable handle and
  sends only the chat items the handle does not cover; a reply that was awaited is asked
  for again, after the turns it answers.
- A reply cut by a lost connection (a drop, a goAway deadline, a refused handle after it)
  is asked for again once after the reconnect (``CONTINUE_PROMPT``; a rest cut in turn
  again, at most three times a reply), after the cut part,
  which stays in the chat context marked interrupted (``watch``); the rest is the next
  message of the same speech, so ``session.run`` returns the whole reply.
- A refused or expired handle falls back to a fresh session with the whole history
  replayed; the call goes on. A refusal no retry changes (a bad or expired key, no access,
  an unsupported location, a spent quota, an unknown model: close code and reason, see
  ``connection_loop.refusal_kind``) is not retried: the budget is spent at once and
  ``on_exhausted`` gets a ``ModelRefusedError``.
- goAway lets the reply in progress finish, then reconnects at the next idle point, or
  when ``time_left`` minus a margin runs out, whichever comes first.
- Reconnects: the first at once, then jittered backoff; a missing setupComplete counts as a
  failed connect; that count resets after each setupComplete. Connections dropped after
  their setupComplete count in a sliding window (``max_drops`` per ``drop_window``), so a
  server that accepts and then always drops spends the budget too. A spent budget calls
  ``on_exhausted`` (wire it to ``SessionSupervisor.restart``), or, without one, closes the
  AgentSession with an unrecoverable error (the supervisor restarts on an error close).
- Every resumable handle, with the chat item ids it covers, is written to the store; a
  worker that picks the conversation up after a crash resumes with it (``before_start``).

Why a subclass of the plugin's RealtimeSession that replaces only its connection loop
(``_main_task``), and not a wrapper: every defect measured in livekit-plugins-google 1.8.9
lives in that loop (retries, goAway, refusal, the order of what is sent after a connect,
the trigger lost on a drop), while everything else it does (turning server messages into
generations, tools, audio, transcripts) is right and large. A wrapper around the
RealtimeModel or the genai client cannot reorder the plugin's queue or see which chat items
a handle covers, so it would have to re-implement the session. The subclass keeps the
plugin's receive path and chat-context diff and swaps the loop; every contact with the
plugin's internals sits in ``gemini/_plugin.py`` behind a version pin, and
``tests/test_gemini_plugin_adapter.py`` fails when an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from livekit.agents import AgentSession, llm, utils
from livekit.agents.voice.events import ConversationItemAddedEvent

from ...log import get_logger, identity_ref
from ..backoff import Backoff
from ..store import GeminiHandle, SessionStore, StoreError

if TYPE_CHECKING:
    from ..events import SessionSpec

__all__ = [
    "CONTINUE_PROMPT",
    "ExhaustedEvent",
    "GeminiResume",
    "GeminiResumeMetrics",
    "HandleRefusedEvent",
    "ModelRefusedError",
    "ReconnectPolicy",
    "ReconnectedEvent",
]

logger = get_logger(__name__)

EventTypes = Literal[
    "reconnected", "handle_updated", "handle_refused", "go_away", "exhausted", "reply_cut"
]

HANDLE_LIFETIME_S = 2 * 3600.0
"""Google documents resumption handles as valid for 2 h after a session ends."""

CONTINUE_PROMPT = (
    "(The connection dropped while you were answering. Continue your last answer from "
    "exactly where it stopped, without repeating what you already said.)"
)
"""The user turn that asks, once, for the rest of a reply a lost connection cut: the cut
part is already in the model's context as its own (interrupted) turn."""


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a Gemini Live session reconnects.

    max_attempts: failed connects in a row (no setupComplete) before giving up.
    backoff_base / backoff_max: seconds before the 2nd failed attempt's retry, doubling up
        to the cap; the first reconnect after a lost connection is immediate.
    jitter: the fraction of each delay taken off at random (see ``Backoff`` in backoff.py).
    setup_timeout: seconds to wait for setupComplete before the attempt counts as failed.
    go_away_margin: seconds before goAway's ``time_left`` runs out at which the handler
        reconnects even if no idle point came.
    max_drops / drop_window: connections lost after their setupComplete (a drop, not a
        goAway or a config change) that the handler reconnects within any ``drop_window``
        seconds; the next one spends the budget, so a server that accepts and then always
        drops ends in ``exhausted`` (the fallback) instead of being retried forever.
    """

    max_attempts: int = 5
    backoff_base: float = 0.25
    backoff_max: float = 5.0
    jitter: float = 0.3
    setup_timeout: float = 10.0
    go_away_margin: float = 2.0
    max_drops: int = 8
    drop_window: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_drops < 1:
            raise ValueError("max_attempts and max_drops must be at least 1")
        if self.drop_window <= 0:
            raise ValueError("drop_window must be positive seconds")
        Backoff(self.backoff_base, self.backoff_max, self.jitter)  # validates the three
        if self.setup_timeout <= 0 or self.go_away_margin < 0:
            raise ValueError("setup_timeout must be positive and go_away_margin not negative")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt after ``failures`` failed ones in a row."""
        return Backoff(self.backoff_base, self.backoff_max, self.jitter).delay(failures, rng)


@dataclass(frozen=True)
class ReconnectedEvent:
    """A Gemini session is connected again (``setupComplete`` arrived)."""

    reason: str
    """Why it reconnected: ``drop``, ``go_away``, ``go_away_deadline``, ``config``,
    ``handle_refused`` or ``start`` (the first connect of a session that resumed)."""
    resumed: bool
    """True when a handle was used; False when the whole history was replayed."""
    items_replayed: int
    """Chat items sent to bring the server up to date (0 when the handle covered all)."""
    handle_age: float | None
    """Seconds since the handle used was issued (None for a fresh session)."""
    downtime: float
    """Seconds from losing the connection (or deciding to leave it) to setupComplete."""
    attempts: int
    """Connect attempts this reconnect took."""


@dataclass(frozen=True)
class HandleRefusedEvent:
    """The server refused a handle (close code before setupComplete); history is replayed."""

    code: int | None
    handle_age: float | None


class ModelRefusedError(Exception):
    """Gemini refused the session for good (a bad or expired key, no access, an unsupported
    location, a spent quota, an unknown model): retrying changes nothing."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"Gemini refused the session (close code {code}): {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ExhaustedEvent:
    """The reconnect budget is spent: the Gemini session cannot be brought back."""

    attempts: int
    error: BaseException | None


@dataclass
class GeminiResumeMetrics:
    """Counters since the handler was made (for logs, metrics exporters and tests)."""

    connects: int = 0
    reconnects: int = 0
    resumed: int = 0
    replayed: int = 0
    items_replayed: int = 0
    failed_attempts: int = 0
    handle_refusals: int = 0
    refusals: int = 0
    go_aways: int = 0
    handles_stored: int = 0
    exhausted: int = 0
    replies_cut: int = 0
    replies_continued: int = 0
    last_handle_age: float | None = None
    downtimes: list[float] = field(default_factory=list)


ExhaustedHook = Callable[[ExhaustedEvent], Awaitable[Any] | Any]


class GeminiResume(utils.EventEmitter[EventTypes]):
    """One conversation's Gemini resumption state, shared by every session it runs.

    store, room, identity: where handles are kept (all three, or none for memory only).
    policy: reconnect budget, backoff, setup timeout and goAway margin.
    on_exhausted: called when the budget is spent (e.g. restart the supervisor on the
        fallback model); without it the AgentSession closes with an unrecoverable error.
    max_handle_age: a stored handle older than this is not tried (full replay instead).

    Events: ``reconnected`` (:class:`ReconnectedEvent`), ``handle_updated``
    (:class:`~.store.GeminiHandle`), ``handle_refused`` (:class:`HandleRefusedEvent`),
    ``go_away`` (seconds left, float), ``exhausted`` (:class:`ExhaustedEvent`),
    ``reply_cut`` (the id of the assistant message a lost connection cut).
    """

    def __init__(
        self,
        store: SessionStore | None = None,
        room: str | None = None,
        identity: str | None = None,
        *,
        policy: ReconnectPolicy | None = None,
        on_exhausted: ExhaustedHook | None = None,
        max_handle_age: float = HANDLE_LIFETIME_S,
    ) -> None:
        super().__init__()
        if store is not None and not (room and identity):
            raise ValueError("a store needs the room and participant identity to key handles")
        self._store = store
        self._room = room
        self._identity = identity
        self.policy = policy or ReconnectPolicy()
        self.on_exhausted = on_exhausted
        self._max_age = max_handle_age
        self._current: GeminiHandle | None = None
        self._loaded = store is None
        self._pending_write: GeminiHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        # on_exhausted hooks still running; made in the event loop, when one first runs (a
        # model, and this handler with it, may be built before any loop runs)
        self._hooks: utils.aio.TaskSet | None = None
        self._cut_ids: set[str] = set()
        self.metrics = GeminiResumeMetrics()

    # -- state --------------------------------------------------------------------------------

    @property
    def current(self) -> GeminiHandle | None:
        """The newest resumable handle (``issued_at`` is epoch seconds), or None."""
        return self._current

    def usable(self) -> GeminiHandle | None:
        """The newest handle if it is young enough to try."""
        if self._current is None or self.handle_age(self._current) > self._max_age:
            return None
        return self._current

    @staticmethod
    def handle_age(handle: GeminiHandle) -> float:
        """Seconds since ``handle`` was issued."""
        return max(0.0, time.time() - handle.issued_at)

    def resume_from(self, handle: GeminiHandle | None) -> None:
        """Start the next session from this handle (e.g. one read from elsewhere)."""
        self._current = handle
        self._loaded = True

    async def load(self) -> GeminiHandle | None:
        """Read the stored handle once (a worker picking the conversation up after a crash)."""
        if self._loaded or self._store is None:
            return self._current
        self._loaded = True
        assert self._room is not None and self._identity is not None
        try:
            record = await self._store.load(self._room, self._identity)
        except StoreError as exc:
            logger.warning("stored gemini handle not readable; replaying", error=repr(exc))
            return None
        if record is not None and record.gemini is not None and self._current is None:
            self._current = record.gemini
            logger.info(
                "gemini handle loaded from the store",
                handle_age_s=round(self.handle_age(record.gemini), 1),
                covered_items=len(record.gemini.covered_item_ids),
                participant=identity_ref(self._identity),
            )
        return self._current

    # -- wiring ---------------------------------------------------------------------------------

    async def before_start(self, spec: SessionSpec) -> None:
        """``SessionSupervisor(before_start=...)``: bind a resumable Gemini model in the
        next session's stack to this conversation (and load the stored handle first)."""
        await self.load()
        bind = getattr(spec.models.llm, "bind_resume", None)  # a ResumableRealtimeModel's
        if bind is not None:
            bind(self)

    def watch(self, session: AgentSession) -> None:
        """Mark the messages of ``session`` that a lost connection cut as interrupted, before
        listeners registered after this one (the store's recorder) see them."""

        def on_item(ev: ConversationItemAddedEvent) -> None:
            item = ev.item
            if isinstance(item, llm.ChatMessage) and item.id in self._cut_ids:
                self._cut_ids.discard(item.id)
                item.interrupted = True

        session.on("conversation_item_added", on_item)

    async def aclose(self) -> None:
        """Finish the pending store write and background tasks."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._hooks is not None:
            await utils.aio.cancel_and_wait(*self._hooks.tasks)

    # -- reports from the connection loop (connection_loop.py) ----------------------------

    def handle_issued(self, handle: str, covered_item_ids: Sequence[str]) -> None:
        """A resumable update arrived: keep it, and write it to the store (newest wins)."""
        self._current = GeminiHandle(handle, tuple(covered_item_ids), time.time())
        self.emit("handle_updated", self._current)
        if self._store is not None:
            self._pending_write = self._current
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write_handles(), name="gemini-handle")

    def handle_refused(self, code: int | None) -> None:
        """The server refused the current handle; forget it (the next connect is fresh)."""
        age = self.handle_age(self._current) if self._current else None
        self._current = None
        self.metrics.handle_refusals += 1
        logger.warning("gemini handle refused; replaying the history", code=code)
        self.emit("handle_refused", HandleRefusedEvent(code, age))

    def reply_cut(self, message_id: str, *, asking: bool) -> None:
        """A lost connection cut the reply ``message_id`` (its message will be marked
        interrupted); ``asking``: its rest is asked for (not when the reply's re-asks are
        spent)."""
        self.metrics.replies_cut += 1
        self._cut_ids.add(message_id)
        logger.info("gemini reply cut by a lost connection", asking_for_the_rest=asking)
        self.emit("reply_cut", message_id)

    def reply_continued(self, message_id: str) -> None:
        """The rest of the cut reply ``message_id`` has begun."""
        self.metrics.replies_continued += 1

    def connected(self, event: ReconnectedEvent) -> None:
        """A connect finished: count it and tell listeners when it was a reconnect."""
        m = self.metrics
        m.connects += 1
        if event.resumed:
            m.resumed += 1
            m.last_handle_age = event.handle_age
        else:
            m.replayed += 1
        if event.reason == "start" and not event.resumed:
            return  # a first connect sends the conversation so far: not a reconnect
        m.items_replayed += event.items_replayed
        m.reconnects += 1
        m.downtimes.append(event.downtime)
        logger.info(
            "gemini reconnected",
            reason=event.reason,
            resumed=event.resumed,
            items_replayed=event.items_replayed,
            handle_age_s=None if event.handle_age is None else round(event.handle_age, 1),
            downtime_ms=round(event.downtime * 1000, 1),
            attempts=event.attempts,
        )
        self.emit("reconnected", event)

    def refused(self, error: BaseException) -> None:
        """The server refused the session for good (a bad key, no access, an unknown model,
        a spent quota): no retry; the budget is spent at once."""
        self.metrics.refusals += 1
        logger.error("gemini refused the session; not retrying", error=str(error)[:300])

    def attempt_failed(self, error: BaseException, failures: int) -> None:
        """A connect attempt failed (counted against the budget)."""
        self.metrics.failed_attempts += 1
        logger.warning("gemini connect failed", failures=failures, error=repr(error)[:200])

    def go_away(self, time_left: float) -> None:
        """The server announced it will close the connection in ``time_left`` seconds."""
        self.metrics.go_aways += 1
        logger.info("gemini goAway", time_left_s=round(time_left, 3))
        self.emit("go_away", time_left)

    def exhausted(self, event: ExhaustedEvent) -> bool:
        """The budget is spent; True when a hook took over (else the caller fails loudly)."""
        self.metrics.exhausted += 1
        logger.error("gemini reconnect budget spent", attempts=event.attempts)
        self.emit("exhausted", event)
        if self.on_exhausted is None:
            return False
        result = self.on_exhausted(event)
        if inspect.isawaitable(result):
            hook = result

            async def run_hook() -> None:
                await hook

            if self._hooks is None:
                self._hooks = utils.aio.TaskSet()
            self._hooks.create_task(run_hook())
        return True

    async def _write_handles(self) -> None:
        assert self._store is not None and self._room and self._identity
        while (pending := self._pending_write) is not None:
            self._pending_write = None
            try:
                await self._store.set_gemini_handle(
                    self._room, self._identity, pending.handle, pending.covered_item_ids
                )
                self.metrics.handles_stored += 1
            except StoreError as exc:
                # the live session still resumes from memory; only a crash would need it
                logger.warning("gemini handle not stored", error=repr(exc))
