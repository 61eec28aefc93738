"""Primary election among the AgentSessions of one job.

livekit makes the first AgentSession started in a job its primary, for good: only the
primary gets a SessionHost (the ``lk.agent.session`` byte stream handler a RemoteSession
drives it through), recording, and the job's session report; after it closes, no session is
primary again. A job that runs several sessions (a conversation plus one listen-only
transcriber per participant, say) needs the designation to move. :class:`SessionElection`
keeps a registry of the job's members (a conversation or a transcriber, each running one
session at a time) and guarantees:

- exactly one member is primary whenever any member's session runs, and only the primary's
  session holds the SessionHost and recording; the others start without either (so the
  byte stream handler is never registered twice);
- policy: a member whose participant is in the room outranks one whose participant left;
  then a conversational member outranks a listen-only one; then the earliest registered;
- when the primary closes, its participant leaves, or a member that outranks it starts,
  the designation moves: the old primary's session is replaced by a non-primary one (its
  SessionHost closes first), then the new primary's session is replaced by a primary one
  (``restart("promoted")``; a conversation restarts through its SessionSupervisor, so
  nothing of it is lost);
- the job's session report (``JobContext.make_session_report()``, made from the primary)
  covers the conversation across handovers: a new primary session's history is seeded with
  its member's earlier turns, and a listen-only primary's also with those of the primaries
  before it (a conversational one is not: its history feeds its model).

A handover is two restarts, so it costs the restart budget of a supervised conversation.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from livekit import rtc
from livekit.agents import AgentSession, JobContext, llm, utils

from ...log import get_logger, identity_ref
from .. import _livekit
from ..supervisor import SessionSupervisor

logger = get_logger(__name__)

Role = Literal["conversational", "listen-only"]
_RANK: dict[str, int] = {"conversational": 0, "listen-only": 1}
PROMOTE_ATTEMPTS = 3


class Member(Protocol):
    """What the election needs of a conversation or a transcriber.

    It emits ``session_started`` (a payload with ``.session``) for each session it starts and
    ``closed`` once it ended; ``restart`` replaces its session with a fresh one, which
    livekit makes primary exactly when the job's designation is the session it replaces.
    """

    @property
    def role(self) -> Role: ...

    @property
    def identity(self) -> str: ...

    @property
    def session(self) -> AgentSession | None: ...

    def conversation_items(self) -> list[llm.ChatItem]: ...

    async def restart(self, reason: str) -> AgentSession | None: ...

    def on(self, event: Any, callback: Callable[..., Any] | None = None) -> Any: ...

    def off(self, event: Any, callback: Callable[..., Any]) -> None: ...


class SupervisedConversation:
    """A :class:`SessionSupervisor`'s conversation as a conversational election member."""

    role: Role = "conversational"

    def __init__(self, supervisor: SessionSupervisor, identity: str) -> None:
        self.supervisor = supervisor
        self._identity = identity

    @property
    def identity(self) -> str:
        """The participant the conversation is with."""
        return self._identity

    @property
    def session(self) -> AgentSession | None:
        """The supervisor's current session."""
        return self.supervisor.session

    def conversation_items(self) -> list[llm.ChatItem]:
        """The whole conversation so far, across the supervisor's sessions."""
        return list(self.supervisor.chat_ctx().items)

    async def restart(self, reason: str) -> AgentSession | None:
        """Restart through the supervisor (context, transcript and track carried over)."""
        return await self.supervisor.restart(reason)

    def on(self, event: Any, callback: Callable[..., Any] | None = None) -> Any:
        return self.supervisor.on(event, callback)

    def off(self, event: Any, callback: Callable[..., Any]) -> None:
        self.supervisor.off(event, callback)


@dataclass(eq=False)
class Candidate:
    """A member in the registry, with what the election knows of it."""

    member: Member
    order: int
    running: bool = False
    closed: bool = False
    last_session: AgentSession | None = None
    listeners: dict[str, Callable[..., None]] = field(default_factory=dict)

    @property
    def role(self) -> Role:
        return self.member.role


@dataclass
class PrimaryTerm:
    """One member's time as primary (monotonic seconds); ``hosted_at`` is when a session
    of it first held the SessionHost during the term."""

    identity: str
    role: Role
    reason: str
    started_at: float
    ended_at: float | None = None
    hosted_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``simulate --json`` observations)."""
        return {
            "participant": identity_ref(self.identity),
            "role": self.role,
            "reason": self.reason,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "hosted_at": self.hosted_at,
        }


class SessionElection(utils.EventEmitter[Literal["primary_changed"]]):
    """The job's registry of sessions and its primary; see the module docstring.

    Register a member by starting it inside :meth:`starting`; the election follows its
    ``session_started`` and ``closed`` events and the room's participants from then on.
    ``primary_changed`` is emitted with the new :class:`PrimaryTerm` (or None).
    """

    def __init__(self, job_ctx: JobContext, *, room: rtc.Room | None = None) -> None:
        super().__init__()
        self._job_ctx = job_ctx
        self._room = room if room is not None else job_ctx.room
        self._lock = asyncio.Lock()
        self._order = itertools.count()
        self._candidates: list[Candidate] = []
        self._primary: Candidate | None = None
        self._terms: list[PrimaryTerm] = []
        self._carried: dict[str, llm.ChatItem] = {}
        self._placeholder: AgentSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirty = False
        self._closed = False
        self._room.on("participant_connected", self._on_presence)
        self._room.on("participant_disconnected", self._on_presence)

    # -- public surface ----------------------------------------------------------------------

    @property
    def primary(self) -> Member | None:
        """The member the designation belongs to (it may be mid-handover)."""
        return self._primary.member if self._primary is not None else None

    @property
    def members(self) -> list[Member]:
        """Members whose session runs, in registration order."""
        return [c.member for c in self._candidates if c.running and not c.closed]

    @property
    def timeline(self) -> list[PrimaryTerm]:
        """Every primary term so far, in order."""
        return list(self._terms)

    @asynccontextmanager
    async def starting(self, member: Member) -> AsyncIterator[None]:
        """Register ``member`` and start its first session in the body, e.g.::

            async with election.starting(SupervisedConversation(supervisor, identity)):
                await supervisor.start(greeting=GREETING)

        Starts are serialised; a member that outranks the primary takes the designation
        (the old primary's session is replaced by a non-primary one before the body runs).
        """
        if self._closed:
            raise RuntimeError("the election is closed")
        async with self._lock:
            candidate = Candidate(member, next(self._order), running=True)
            self._candidates.append(candidate)
            self._watch(candidate)
            takes_over = self._best() is candidate
            if takes_over:
                await self._vacate(candidate, "outranks" if self._primary else "first")
                _livekit.set_primary(self._job_ctx, None)  # livekit hands it to the next start
            elif _livekit.primary_session(self._job_ctx) is None:
                _livekit.set_primary(self._job_ctx, self._placeholder_primary())
            try:
                yield
            except BaseException:
                self._drop(candidate)
                self._reconcile_soon()
                raise
            if takes_over and not self._designated(candidate):
                logger.error("new primary session did not take the designation")
        self._reconcile_soon()

    async def settled(self) -> None:
        """Wait until every pending handover is done (tests, shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def aclose(self) -> None:
        """Stop electing (the job is ending: closing sessions must not promote others)."""
        self._closed = True
        self._room.off("participant_connected", self._on_presence)
        self._room.off("participant_disconnected", self._on_presence)
        if self._task is not None:
            await utils.aio.cancel_and_wait(self._task)
        for candidate in self._candidates:
            self._unwatch(candidate)
        self._end_term(time.monotonic())

    # -- events ------------------------------------------------------------------------------

    def _watch(self, candidate: Candidate) -> None:
        def on_started(ev: Any) -> None:
            self._on_session_started(candidate, ev.session)

        def on_closed(_ev: Any) -> None:
            candidate.closed, candidate.running = True, False
            self._reconcile_soon()

        candidate.listeners = {"session_started": on_started, "closed": on_closed}
        for event, callback in candidate.listeners.items():
            candidate.member.on(event, callback)

    def _unwatch(self, candidate: Candidate) -> None:
        for event, callback in candidate.listeners.items():
            candidate.member.off(event, callback)
        candidate.listeners = {}

    def _on_presence(self, _participant: rtc.RemoteParticipant) -> None:
        self._reconcile_soon()

    def _on_session_started(self, candidate: Candidate, session: AgentSession) -> None:
        candidate.last_session = session
        if candidate is not self._primary:
            return
        self._seed_history(candidate, session)
        if self._terms and self._terms[-1].hosted_at is None and _livekit.has_session_host(session):
            self._terms[-1].hosted_at = time.monotonic()

    # -- reconciling -------------------------------------------------------------------------

    def _reconcile_soon(self) -> None:
        """Reconcile soon (in order, one at a time) after anything that may move the primary."""
        if self._closed:
            return
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._reconcile_loop(), name="election_reconcile")

    async def _reconcile_loop(self) -> None:
        while self._dirty and not self._closed:
            self._dirty = False
            async with self._lock:
                try:
                    await self._reconcile()
                except Exception:
                    logger.exception("primary handover failed")

    async def _reconcile(self) -> None:
        for candidate in [c for c in self._candidates if c.closed]:
            self._drop(candidate)
        desired = self._best()
        # a supervised restart hands the designation over by itself; mid-restart (no session
        # yet) its session_started brings us back here
        if desired is self._primary and (
            desired is None or desired.member.session is None or self._designated(desired)
        ):
            return
        await self._vacate(desired, self._reason(desired))
        if desired is not None:
            await self._promote(desired)

    async def _vacate(self, new: Candidate | None, reason: str) -> None:
        """End the current term and take the designation (and SessionHost) from the old
        primary: its running session is replaced by a non-primary one."""
        old, now = self._primary, time.monotonic()
        self._end_term(now)
        self._primary = new
        if new is not None:
            self._terms.append(PrimaryTerm(new.member.identity, new.role, reason, now))
        logger.info(
            "primary changing",
            reason=reason,
            old=identity_ref(old.member.identity) if old else None,
            new=identity_ref(new.member.identity) if new else None,
            new_role=new.role if new else None,
        )
        # nobody's next session is primary until the new primary's is
        _livekit.set_primary(self._job_ctx, self._placeholder_primary() if new else None)
        if old is not None and old is not new and old.running and not old.closed:
            previous = old.member.session
            await self._restart(old, "demoted")
            if previous is not None:
                self._carry(previous)
        elif old is not None and old.last_session is not None:
            self._carry(old.last_session)
        self.emit("primary_changed", self._terms[-1] if new else None)

    async def _promote(self, candidate: Candidate) -> None:
        """Replace the candidate's session with one started as the job's primary."""
        for _ in range(PROMOTE_ATTEMPTS):
            current = candidate.member.session
            # a restart hands the designation from the session it replaces to the new one
            _livekit.set_primary(self._job_ctx, current or self._placeholder_primary())
            await self._restart(candidate, "promoted")
            if candidate.closed or self._designated(candidate):
                return
        logger.error("member could not be promoted", attempts=PROMOTE_ATTEMPTS)

    async def _restart(self, candidate: Candidate, reason: str) -> None:
        try:
            session = await candidate.member.restart(reason)
        except Exception as exc:  # a closed conversation cannot restart: treat as gone
            logger.warning("member restart failed", reason=reason, error=repr(exc))
            session = None
        if session is None:
            candidate.closed, candidate.running = True, False

    # -- policy and bookkeeping --------------------------------------------------------------

    def _best(self) -> Candidate | None:
        running = [c for c in self._candidates if c.running and not c.closed]
        if not running:
            return None
        present = self._room.remote_participants
        return min(
            running, key=lambda c: (c.member.identity not in present, _RANK[c.role], c.order)
        )

    def _reason(self, desired: Candidate | None) -> str:
        old = self._primary
        if desired is None:
            return "no session runs"
        if old is desired:
            return "designation restored"
        if old is None or old.closed:
            return "primary closed"
        if old.member.identity not in self._room.remote_participants:
            return "primary participant left"
        return "outranked"

    def _designated(self, candidate: Candidate) -> bool:
        session = candidate.member.session
        return session is not None and _livekit.primary_session(self._job_ctx) is session

    def _drop(self, candidate: Candidate) -> None:
        candidate.running = False
        candidate.closed = True
        if candidate in self._candidates:
            self._candidates.remove(candidate)
        self._unwatch(candidate)

    def _end_term(self, now: float) -> None:
        if self._terms and self._terms[-1].ended_at is None:
            self._terms[-1].ended_at = now

    def _placeholder_primary(self) -> AgentSession:
        # a session that never starts: while it is "primary", every session starts without
        # a SessionHost and recording, so none can take them during a handover
        if self._placeholder is None:
            self._placeholder = AgentSession()
        return self._placeholder

    def _carry(self, session: AgentSession) -> None:
        for item in session.history.items:
            self._carried.setdefault(item.id, item)

    def _seed_history(self, candidate: Candidate, session: AgentSession) -> None:
        """Make the report of the new primary session cover what came before it."""
        items = candidate.member.conversation_items()
        if candidate.role == "listen-only":
            items = [*self._carried.values(), *items]
        present = {item.id for item in session.history.items}
        for item in items:
            if item.id not in present:
                present.add(item.id)
                session.history.insert(item.model_copy(deep=True))
