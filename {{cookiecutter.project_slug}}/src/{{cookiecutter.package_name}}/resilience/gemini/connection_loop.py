"""The connection loop of one resumable Gemini Live session: connect, serve, reconnect.

The loop decides *when* and *how* to connect (which handle, after what delay, whether a
goAway has reached an idle point); the plugin adapter (:mod:`._plugin`) does the
sending and receiving through a :class:`SessionPort`. A :class:`TappedSession` sits between
the plugin's receive path and the genai session: it takes resumption updates and goAway
out of the stream (the loop owns them).

Which chat items a handle covers: the Developer API does not say (``last_consumed_client_
message_index`` is Vertex-only), and a chat item written while an update is on its way would
be claimed by it. So an update is adopted only when the connection is *settled*: every chat
item written on it was followed by a reply trigger whose model turn has completed (the server
answers a connection's messages in order, so it had read them), or nothing was written yet.
An update that is not settled is passed over; the previous handle plus the delta stays exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Collection
from typing import Any, Literal, Protocol

import numpy as np
from google.genai import errors, types
from websockets.exceptions import InvalidStatus

from ...log import get_logger
from ..backoff import RestartBudget, RestartPolicy
from ..store import GeminiHandle
from .resume import ExhaustedEvent, GeminiResume, ModelRefusedError, ReconnectedEvent

logger = get_logger(__name__)

REFUSAL_CODES = frozenset({1007, 1008, 1011})
"""Close codes before setupComplete that, on a resuming setup, mean "this handle is not
accepted" unless the reason says the refusal is permanent."""

PERMANENT_REASONS = re.compile(
    r"api key (?:not valid|expired)|api_key_invalid|permission[ _]denied|"
    r"location is not supported|exceeded your current quota|billing|"
    r"is not found for api version|not supported for bidigeneratecontent",
    re.IGNORECASE,
)
"""Close reasons Gemini gives for what no retry changes: a bad or expired key, a key or
project without access, an unsupported location, a spent quota, an unknown model."""


class HandleRefusedError(Exception):
    """The server closed a resuming setup before setupComplete."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"resumption handle refused (close code {code})")
        self.code = code


RefusalKind = Literal["permanent", "handle", "transient"]


def refusal_kind(code: int | None, reason: str, *, resuming: bool) -> RefusalKind:
    """What a close before setupComplete means: ``permanent`` (no retry changes it: a known
    reason, or a fresh setup closed with 1007/1008), ``handle`` (a resuming setup refused:
    try fresh), or ``transient`` (retry with backoff)."""
    if PERMANENT_REASONS.search(reason):
        return "permanent"
    if code in REFUSAL_CODES and resuming:
        return "handle"
    if code in (1007, 1008):
        # the same setup with no handle is refused again; 1008 "Requested entity was not
        # found" also comes after tool responses mid-session, but that is past setupComplete
        return "permanent"
    return "transient"


def _close_reason(exc: errors.APIError) -> str:
    details = exc.details
    return details if isinstance(details, str) else str(exc.message or details or "")


class SetupTimeoutError(Exception):
    """No setupComplete within the policy's setup timeout."""


class DropLoopError(Exception):
    """The server keeps dropping connections it accepted (the drop budget is spent)."""


class SessionPort(Protocol):
    """What the loop needs from the plugin's session (implemented by the adapter)."""

    @property
    def closed(self) -> bool: ...
    @property
    def wake(self) -> asyncio.Event: ...
    def connect(self, handle: str | None) -> contextlib.AbstractAsyncContextManager[Any]: ...
    def attach(self, tap: TappedSession, known_ids: Collection[str] | None) -> int: ...
    async def detach(self) -> None: ...
    async def send_loop(self, tap: TappedSession) -> None: ...
    async def recv_loop(self, tap: TappedSession) -> None: ...
    def take_error(self) -> BaseException | None: ...
    def speech_answered(self) -> None: ...
    def hold_reply(self) -> None: ...
    def covered_item_ids(self) -> list[str]: ...
    def busy(self) -> bool: ...
    def report_connected(self, seconds: float) -> None: ...
    def fail(self, error: BaseException, recoverable: bool) -> None: ...


SPEECH_RMS = 300
"""Input audio louder than this (16-bit RMS) counts as speech for goAway's idle point."""


def is_speech(pcm: bytes) -> bool:
    """Whether 16-bit PCM ``pcm`` is loud enough to be someone speaking."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16).astype(np.float32)
    return bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) >= SPEECH_RMS


def _seconds(duration: str | None) -> float:
    """A protobuf Duration as genai hands it over (``"1.500s"``) in seconds."""
    try:
        return float((duration or "0").rstrip("s"))
    except ValueError:
        return 0.0


class TappedSession:
    """A genai ``AsyncSession`` with resumption updates and goAway routed to the loop."""

    def __init__(self, inner: Any, loop: ConnectionLoop) -> None:
        self.inner = inner
        self._loop = loop

    async def receive(self) -> AsyncIterator[types.LiveServerMessage]:
        """genai's ``receive()`` (one model turn), minus what the loop consumes."""
        async for message in self.inner.receive():
            stripped = False
            if (update := message.session_resumption_update) is not None:
                self._loop.on_update(bool(update.resumable), update.new_handle)
                message.session_resumption_update = None
                stripped = True
            if message.go_away is not None:
                self._loop.on_go_away(_seconds(message.go_away.time_left))
                message.go_away = None
                stripped = True
            if message.server_content and message.server_content.turn_complete:
                self._loop.on_turn_complete()
            if stripped and not message.model_dump(exclude_none=True):
                continue
            yield message

    async def close(self) -> None:
        """Close the websocket (the plugin calls this on shutdown)."""
        await self.inner.close()


class ConnectionLoop:
    """Runs one Gemini session's connections until the session closes or gives up."""

    def __init__(self, port: SessionPort, resume: GeminiResume) -> None:
        self._port = port
        self.resume = resume
        self._reconnect_reason: str | None = None
        self._draining_until: float | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._last_update_resumable = True
        self._settled = True
        self._written_since_trigger = False
        self._speech_unanswered = False

    async def run(self) -> None:
        """Connect, serve, and reconnect until the session closes or the budget is spent."""
        policy = self.resume.policy
        # drops after setupComplete in a sliding window; reconnecting after one stays immediate
        drops = RestartBudget(
            RestartPolicy(policy.max_drops, policy.drop_window, base_delay=0, max_delay=0)
        )
        failures, attempts = 0, 0
        reason, lost_at = "start", time.monotonic()
        while not self._port.closed:
            if failures:
                await asyncio.sleep(policy.delay(failures))
            handle = self.resume.usable()
            attempts += 1
            try:
                stack, tap, connect_s = await self._connect(handle)
            except asyncio.CancelledError:
                raise
            except HandleRefusedError as exc:
                self.resume.handle_refused(exc.code)
                reason = "handle_refused"
                continue  # at once, fresh: a refusal is an answer, not an outage
            except ModelRefusedError as exc:
                self.resume.refused(exc)
                self._give_up(attempts, exc)  # no retry: the next setup is refused the same
                return
            except Exception as exc:
                failures += 1
                self.resume.attempt_failed(exc, failures)
                if failures >= policy.max_attempts:
                    self._give_up(attempts, exc)
                    return
                self._port.fail(exc, recoverable=True)
                continue
            failures = 0
            async with stack:
                self._port.report_connected(connect_s)
                replayed = self._port.attach(tap, handle.covered_item_ids if handle else None)
                self.resume.connected(
                    ReconnectedEvent(
                        reason=reason,
                        resumed=handle is not None,
                        items_replayed=replayed,
                        handle_age=self.resume.handle_age(handle) if handle else None,
                        downtime=time.monotonic() - lost_at,
                        attempts=attempts,
                    )
                )
                attempts = 0
                reason = await self._serve(tap)
                lost_at = time.monotonic()
                await self._port.detach()
            if reason == "closed":
                return
            if reason == "drop" and drops.acquire() is None:
                window = f"{policy.drop_window:g}"
                error = DropLoopError(f"more than {policy.max_drops} drops in {window} s")
                self._give_up(policy.max_drops + 1, error)
                return

    async def _connect(
        self, handle: GeminiHandle | None
    ) -> tuple[contextlib.AsyncExitStack, TappedSession, float]:
        self._port.wake.clear()  # a config change from now on is in this connect's config
        self._reconnect_reason = None
        self._draining_until = None
        self._last_update_resumable = True
        self._settled, self._written_since_trigger = True, False
        self._speech_unanswered = False
        stack = contextlib.AsyncExitStack()
        began = time.perf_counter()
        try:
            async with asyncio.timeout(self.resume.policy.setup_timeout):
                # genai returns from connect() once setupComplete arrived
                inner = await stack.enter_async_context(
                    self._port.connect(handle.handle if handle else None)
                )
        except TimeoutError:
            await stack.aclose()
            raise SetupTimeoutError("no setupComplete in time") from None
        except errors.APIError as exc:
            await stack.aclose()
            reason = _close_reason(exc)
            kind = refusal_kind(exc.code, reason, resuming=handle is not None)
            if kind == "permanent":
                raise ModelRefusedError(exc.code, reason) from exc
            if kind == "handle":
                raise HandleRefusedError(exc.code) from exc
            raise
        except InvalidStatus as exc:
            await stack.aclose()
            status = exc.response.status_code
            if status in (401, 403):  # a proxy refusing the key at the HTTP upgrade
                raise ModelRefusedError(status, f"HTTP {status} at connect") from exc
            raise
        except BaseException:
            await stack.aclose()
            raise
        return stack, TappedSession(inner, self), time.perf_counter() - began

    async def _serve(self, tap: TappedSession) -> str:
        """Run one connection; return why it ended."""
        port = self._port
        send = asyncio.create_task(port.send_loop(tap), name="gemini-resume-send")
        recv = asyncio.create_task(port.recv_loop(tap), name="gemini-resume-recv")
        wake = asyncio.create_task(port.wake.wait(), name="gemini-resume-wake")
        try:
            await asyncio.wait({send, recv, wake}, return_when=asyncio.FIRST_COMPLETED)
            if not port.closed:
                port.hold_reply()  # a reply mid-way is continued after the reconnect
        finally:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            for task in (send, recv, wake):
                task.cancel()
            await asyncio.gather(send, recv, wake, return_exceptions=True)
        if port.closed:
            return "closed"
        if self._reconnect_reason is not None:
            return self._reconnect_reason
        error = port.take_error()
        if error is None and send.done() and not send.cancelled():
            error = send.exception()
        return "drop" if error is not None else "config"

    # -- events from the tapped session ----------------------------------------------------

    def on_sent(self, *, chat_item: bool, trigger: bool, speech: bool = False) -> None:
        """The adapter wrote a message: chat items unsettle the connection until a reply
        trigger written after them has its model turn completed; speech (loud input audio)
        keeps a goAway from leaving until a model turn completes (the server may be about
        to answer it, and a user turn in audio cannot be sent again)."""
        if chat_item:
            self._settled = False
            self._written_since_trigger = True
        if trigger:
            self._written_since_trigger = False
        if speech:
            self._speech_unanswered = True

    def on_turn_complete(self) -> None:
        """A model turn completed: what was written before its trigger has been read."""
        if not self._written_since_trigger:
            self._settled = True
        self._speech_unanswered = False
        self._port.speech_answered()

    def on_update(self, resumable: bool, handle: str | None) -> None:
        """A sessionResumptionUpdate: keep a resumable handle and what it covers."""
        self._last_update_resumable = resumable and bool(handle) and self._settled
        if self._last_update_resumable:
            assert handle is not None
            self.resume.handle_issued(handle, self._port.covered_item_ids())
            self._port.speech_answered()  # the handle holds the audio sent before it
        self._maybe_leave()

    def on_go_away(self, time_left: float) -> None:
        """goAway: finish the reply in progress, leave at the next idle point or in time."""
        self.resume.go_away(time_left)
        self._draining_until = time.monotonic() + time_left
        margin = min(self.resume.policy.go_away_margin, time_left / 2)
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.call_later(
                max(0.0, time_left - margin), self._leave, "go_away_deadline"
            )
        self._maybe_leave()

    def _maybe_leave(self) -> None:
        # idle: nothing generating or awaited, and the newest state is resumable
        if (
            self._draining_until is not None
            and self._last_update_resumable
            and not self._speech_unanswered
            and not self._port.busy()
        ):
            self._leave("go_away")

    def _leave(self, reason: str) -> None:
        if self._reconnect_reason is None:
            self._reconnect_reason = reason
            self._port.wake.set()

    def _give_up(self, attempts: int, error: BaseException) -> None:
        if not self.resume.exhausted(ExhaustedEvent(attempts, error)):
            self._port.fail(error, recoverable=False)
