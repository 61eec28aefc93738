"""The RPC methods a frontend calls on the agent, routed to the caller's own conversation.

A LiveKit participant has one handler per method name, but a room may hold several
supervised conversations (one per participant), so one :class:`RpcRoutes` per room registers
the methods once and dispatches each call by ``caller_identity``. A caller with no
conversation of its own is refused with ``RpcError(4003)``: nobody can restart, or read the
transcript of, someone else's conversation; another device of the same person (the same user
key, see ``devices``) reaches the person's conversation (:meth:`RpcRoutes.add_device`). A
malformed payload (not JSON, a number with too many digits, nesting too deep,
``NaN``/``Infinity``, a field of the wrong type or range) is refused with ``RpcError(4000)``
and a one-line message naming what is wrong.

``session.restart``
    Request: empty, or JSON ``{"reason": "<1-64 chars of a-z 0-9 _ . ->"}``.
    Response: JSON ``{"ok": true, "restarts": <restarts so far in this conversation>}``,
    sent once the new session listens. Errors: 4000 bad request, 4003 not your conversation,
    4009 the conversation is closed or its restart budget is spent (it reopens when the
    participant reconnects),
    4029 too soon: this participant's previous restart is still in progress or finished less
    than ``RESTART_RPC_MIN_INTERVAL_S`` ago (the message says when to retry). A refused call
    never reaches the conversation, so retries and double clicks spend no restart budget.

``transcript.history``
    Request: empty, or JSON ``{"after": <seq, default 0>, "limit": <1-100, default 50>}``.
    Response: JSON ``{"segments": [...], "next": <seq or null>, "oldest": <seq>, "latest": <seq>}``.
    ``segments`` are final lines in conversation order, each ``{"seq", "id", "role"
    ("agent" | "user"), "speaker", "text", "at" (epoch s), "track_id"}``; agent ``id``s are
    the ``lk.segment_id`` the live stream carried, so a client can drop duplicates. Pass
    ``next`` as ``after`` for the following page; ``null`` means nothing more for now.
    ``oldest`` greater than ``after + 1`` means older lines are not served: the log is bounded
    to a conversation's newest ``KEPT_SEGMENTS`` (2,000) lines, and a returning participant's
    is restored with at most those (``SessionStore.join(transcript_tail=...)``). The store
    keeps every line (``sessions export`` reads them); this RPC serves memory only.
    A page holds at most ``limit`` segments and stays under the 15 KiB RPC payload limit; a
    single segment too long for a page has its text cut and ``"truncated": true``.
    In a multi-participant room every person in the room (any non-agent participant, whenever
    they joined) reads the room's whole transcript: everyone's lines and the agent's
    (``RpcRoutes.share_history``, ``MeetingTranscript``). Errors: 4000 bad request, 4003 not your
    conversation (one-to-one) or not a person in the room.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from livekit import rtc

from ..audit import ERROR, OK, REFUSED, TRANSCRIPT_READ, audit
from ..log import get_logger, identity_ref
from .transcript import TranscriptLog

logger = get_logger(__name__)

METHOD_RESTART = "session.restart"
METHOD_HISTORY = "transcript.history"

ERROR_INVALID_REQUEST = 4000
ERROR_FORBIDDEN = 4003
ERROR_UNAVAILABLE = 4009
ERROR_TOO_SOON = 4029

# a participant's restarts are at least this far apart (from the end of one to the next
# request): a retrying frontend must not spend the conversation's restart budget
RESTART_RPC_MIN_INTERVAL_S = 10.0

HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 100
# the SFU refuses payloads over 15 KiB; keep headroom for the RPC envelope
MAX_RESPONSE_BYTES = 14_000

_REASON = re.compile(r"[a-z0-9_.-]{1,64}")


class RestartUnavailableError(Exception):
    """The conversation cannot restart (closed, or its restart budget is spent)."""


RestartHandler = Callable[[str], Awaitable[int]]
"""Restarts the conversation for the given reason; returns the restarts so far."""


class Restartable(Protocol):
    """What the restart RPC needs of a conversation (a ``SessionSupervisor``)."""

    @property
    def closed(self) -> bool: ...
    @property
    def restarts(self) -> int: ...
    async def restart(self, reason: str) -> Any: ...


def restart_handler(conversation: Restartable) -> RestartHandler:
    """The restart RPC's handler for ``conversation``: the restarts so far, or
    RestartUnavailableError when it is closed or its restart budget is spent."""

    async def restart(reason: str) -> int:
        if conversation.closed:
            raise RestartUnavailableError("the conversation is closed")
        try:
            session = await conversation.restart(reason)
        except RuntimeError as exc:
            raise RestartUnavailableError(str(exc)) from None
        if session is None:
            raise RestartUnavailableError("the restart budget is spent; the call is ending")
        return conversation.restarts

    return restart


class _Route:
    def __init__(self, restart: RestartHandler, transcript: TranscriptLog) -> None:
        self.restart = restart
        self.transcript = transcript


class RpcRoutes:
    """The agent's RPC methods in one room, each call dispatched to the caller's conversation."""

    def __init__(
        self,
        local_participant: rtc.LocalParticipant,
        *,
        room_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._participant = local_participant
        self._room_name = room_name  # for the audit trail
        self._routes: dict[str, _Route] = {}
        # another device of a person -> the identity their conversation's route is under
        self._devices: dict[str, str] = {}
        self._clock = clock
        # per caller identity: when its restart in flight was requested, when its last ended
        self._restart_started: dict[str, float] = {}
        self._restart_ended: dict[str, float] = {}
        # a multi-participant room's transcript, and who may read it
        self._shared: tuple[TranscriptLog, Callable[[str], bool]] | None = None
        self._registered = False

    def add(self, identity: str, restart: RestartHandler, transcript: TranscriptLog) -> None:
        """Route ``identity``'s calls to its conversation (registers the methods on first use)."""
        if identity in self._routes:
            raise ValueError(f"participant {identity_ref(identity)} already has a conversation")
        self._routes[identity] = _Route(restart, transcript)
        self._update_registration()

    def remove(self, identity: str) -> None:
        """Stop routing ``identity``'s calls; the methods go when nothing is left to serve."""
        self._routes.pop(identity, None)
        self._update_registration()

    def add_device(self, identity: str, *, of: str) -> None:
        """Route ``identity``'s calls to ``of``'s conversation: the same person on another
        device (their user key says so). Kept for the job, whether ``of`` has a route now."""
        if identity != of:
            self._devices[identity] = of

    def share_history(
        self, log: TranscriptLog | None, *, may_read: Callable[[str], bool] | None = None
    ) -> None:
        """Serve ``log`` (the room's transcript) to every caller ``may_read`` accepts, in
        place of their own conversation's (None: stop)."""
        self._shared = (log, may_read or (lambda _identity: True)) if log is not None else None
        self._update_registration()

    def _update_registration(self) -> None:
        wanted = bool(self._routes) or self._shared is not None
        if wanted and not self._registered:
            self._participant.register_rpc_method(METHOD_RESTART, self._on_restart)
            self._participant.register_rpc_method(METHOD_HISTORY, self._on_history)
        elif not wanted and self._registered:
            self._participant.unregister_rpc_method(METHOD_RESTART)
            self._participant.unregister_rpc_method(METHOD_HISTORY)
        self._registered = wanted

    def _owner(self, caller: str) -> str:
        """The identity whose conversation ``caller`` reaches (itself, or its person's)."""
        return self._devices.get(caller, caller)

    def _route(self, data: rtc.RpcInvocationData) -> _Route:
        route = self._routes.get(self._owner(data.caller_identity))
        if route is None:
            logger.warning(
                "rpc refused: caller has no conversation",
                method=data.method,
                caller=identity_ref(data.caller_identity),
            )
            raise rtc.RpcError(
                ERROR_FORBIDDEN, f"{data.method} is only for the participant of this conversation"
            )
        return route

    async def _on_restart(self, data: rtc.RpcInvocationData) -> str:
        route = self._route(data)
        reason = parse_restart_request(data.payload)
        # one pace per conversation, whichever of the person's devices asks
        identity = self._owner(data.caller_identity)
        # no await between this check and marking the restart in flight
        self._check_restart_interval(identity)
        self._restart_started[identity] = self._clock()
        try:
            restarts = await route.restart(reason)
        except RestartUnavailableError as exc:
            raise rtc.RpcError(ERROR_UNAVAILABLE, str(exc)) from None
        finally:
            del self._restart_started[identity]
            self._restart_ended[identity] = self._clock()
        return json.dumps({"ok": True, "restarts": restarts})

    def _check_restart_interval(self, identity: str) -> None:
        now = self._clock()
        started = self._restart_started.get(identity)
        if started is not None:
            message = (
                f"too soon: a restart was requested {int(now - started)} s ago and is still in"
                " progress; retry after it answers"
            )
        else:
            ended = self._restart_ended.get(identity)
            if ended is None or now - ended >= RESTART_RPC_MIN_INTERVAL_S:
                self._restart_ended.pop(identity, None)
                return
            wait = max(1, math.ceil(RESTART_RPC_MIN_INTERVAL_S - (now - ended)))
            message = f"too soon: a restart finished {int(now - ended)} s ago; retry in {wait} s"
        logger.warning("rpc restart refused: too soon", caller=identity_ref(identity))
        raise rtc.RpcError(ERROR_TOO_SOON, message)

    async def _on_history(self, data: rtc.RpcInvocationData) -> str:
        caller = data.caller_identity
        shared = self._shared if self._shared is not None and self._shared[1](caller) else None
        # one audit event per call, served or refused: who read which conversation
        event: dict[str, Any] = {
            "actor": identity_ref(caller),
            "room": self._room_name,
            # whose conversation was read (a meeting's is the room's)
            "identity": self._owner(caller) if shared is None else None,
            "scope": "participant" if shared is None else "room",
        }
        try:
            log = self._route(data).transcript if shared is None else shared[0]
            page = history_page(log, data.payload)
        except rtc.RpcError as exc:
            audit(TRANSCRIPT_READ, outcome=REFUSED, code=exc.code, **event)
            raise
        except Exception as exc:
            audit(TRANSCRIPT_READ, outcome=ERROR, error=type(exc).__name__, **event)
            raise
        audit(TRANSCRIPT_READ, outcome=OK, segments=len(json.loads(page)["segments"]), **event)
        return page


def _invalid(message: str) -> rtc.RpcError:
    return rtc.RpcError(ERROR_INVALID_REQUEST, f"invalid request: {message}")


def _request_object(payload: str) -> dict[str, Any]:
    if not payload.strip():
        return {}
    try:
        request = json.loads(payload, parse_constant=_reject_constant)
    except json.JSONDecodeError:
        raise _invalid("the payload is not JSON") from None
    except _ConstantError as exc:
        raise _invalid(f"{exc.args[0]} is not a JSON value") from None
    except ValueError:
        # json refuses integers over sys.get_int_max_str_digits() digits with a ValueError
        raise _invalid("a number in the payload has too many digits") from None
    except RecursionError:
        raise _invalid("the payload nests too deeply") from None
    if not isinstance(request, dict):
        raise _invalid("the payload must be a JSON object")
    return request


class _ConstantError(Exception):
    pass


def _reject_constant(name: str) -> Any:
    # json accepts NaN, Infinity and -Infinity, which are not JSON
    raise _ConstantError(name)


def parse_restart_request(payload: str) -> str:
    """The restart reason a ``session.restart`` payload gives (``"rpc"`` when none)."""
    request = _request_object(payload)
    reason = request.get("reason", "rpc")
    if not isinstance(reason, str) or not _REASON.fullmatch(reason):
        raise _invalid("reason must be 1-64 characters of a-z 0-9 _ . -")
    return reason if reason == "rpc" else f"rpc:{reason}"


def parse_history_request(payload: str) -> tuple[int, int]:
    """``(after, limit)`` from a ``transcript.history`` payload."""
    request = _request_object(payload)
    after = request.get("after", 0)
    limit = request.get("limit", HISTORY_DEFAULT_LIMIT)
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise _invalid("after must be an integer >= 0")
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise _invalid(f"limit must be an integer from 1 to {HISTORY_MAX_LIMIT}")
    if not 1 <= limit <= HISTORY_MAX_LIMIT:
        raise _invalid(f"limit must be an integer from 1 to {HISTORY_MAX_LIMIT}")
    return after, limit


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


def history_page(log: TranscriptLog, payload: str, *, max_bytes: int = MAX_RESPONSE_BYTES) -> str:
    """The ``transcript.history`` response for ``payload`` (see the module docstring)."""
    after, limit = parse_history_request(payload)
    page: list[dict[str, Any]] = []
    body: dict[str, Any] = {
        "segments": page,
        "next": None,
        "oldest": log.oldest_seq,
        "latest": log.latest_seq,
    }
    # the cursor fields grow by a few digits at most once filled in
    size = _size(body) + 16
    for segment in log.after(after, limit):
        entry = segment.to_dict()
        room_left = max_bytes - size - 1  # the separating comma
        if _size(entry) > room_left:
            if page:
                break  # the next page starts here
            entry = _truncated(entry, room_left)
        page.append(entry)
        size += _size(entry) + 1
    last = page[-1]["seq"] if page else after
    body["next"] = last if last < log.latest_seq else None
    return json.dumps(body, ensure_ascii=False)


def _truncated(entry: dict[str, Any], room: int) -> dict[str, Any]:
    raw = str(entry.get("text", "")).encode()
    entry = {**entry, "text": "", "truncated": True}
    budget = room - _size(entry)
    # cut the UTF-8 bytes and drop a partial character; JSON escaping may add bytes, so
    # shrink until it fits
    while budget > 0:
        entry["text"] = raw[:budget].decode("utf-8", errors="ignore")
        overflow = _size(entry) - room
        if overflow <= 0:
            return entry
        budget -= overflow
    entry["text"] = ""
    return entry
