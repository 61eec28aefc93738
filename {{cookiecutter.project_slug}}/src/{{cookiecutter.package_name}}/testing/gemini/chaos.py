"""Seeded random faults for Gemini Live soak and chaos runs, and the complete-reply check.

- :class:`ServerChaos`: faults the local server makes (drops, mid-reply drops, goAway,
  refused and expired handles, ``resumable: false``, slow or missing setupComplete);
- :class:`ClientChaos`: faults a client can make against any endpoint (aborted websockets
  through ``ResumableRealtimeModel.drop_connections()``, a handle no server knows);
- :class:`DropPacer`: keeps the faults within a reconnect policy's drop budget, so a soak
  measures recovery rather than the budget that ends an accept-then-drop loop;
- :func:`replies_by_turn` / :func:`incomplete_replies`: every user turn must get its whole
  reply. A reply cut by a drop may arrive in parts (the cut part, then the rest): the
  assistant texts after a user turn, joined, are its reply.

Both injectors draw from the ``random.Random`` they are given, so a seed replays a run's
fault sequence (timing can still differ from run to run).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from ...resilience.gemini.resume import CONTINUE_PROMPT
from ...resilience.store import GeminiHandle
from .faults import Drop, GoAway, NoSetupComplete, RefuseHandle, ResumableFalse, SlowSetup
from .protocol import HistoryItem
from .server import LocalGeminiLiveServer, default_responder

if TYPE_CHECKING:
    from ...resilience.gemini._plugin import ResumableRealtimeModel
    from ...resilience.gemini.resume import ReconnectPolicy

__all__ = [
    "CLIENT_FAULTS",
    "SERVER_FAULTS",
    "ClientChaos",
    "DropPacer",
    "ServerChaos",
    "TurnReply",
    "incomplete_replies",
    "replies_by_turn",
    "reply_problem",
    "reply_settled",
    "scripted_answer",
]

SERVER_FAULTS: dict[str, int] = {
    "drop": 1,
    "drop_mid_reply": 1,
    "drop_chain": 4,
    "go_away_mid_reply": 0,
    "go_away_now": 0,
    "refuse": 1,
    "expire": 1,
    "not_resumable": 0,
    "slow_setup": 1,
    "drop_while_waiting": 1,
    "no_setup_complete": 1,
}
"""The local server's fault kinds, each with the most connection drops it can cause."""

CLIENT_FAULTS: dict[str, int] = {"drop": 1, "drop_while_waiting": 1, "bogus_handle": 1}
"""The kinds a client makes against any endpoint, with the drops each causes."""


class DropPacer:
    """Drops the faults caused recently, against a reconnect policy's drop budget.

    The handler gives up after ``max_drops`` drops within ``drop_window`` seconds (a server
    that accepts and then always drops). A fault is affordable while the drops it can cause,
    added to those of the last ``drop_window`` seconds (plus a slack, since the handler
    counts a drop when it sees it), stay ``headroom`` below the budget.
    """

    def __init__(
        self,
        max_drops: int,
        drop_window: float,
        *,
        headroom: int = 2,
        slack: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = max_drops - headroom
        self._window = drop_window + slack
        self._clock = clock
        self._spent: deque[float] = deque()

    @classmethod
    def for_policy(cls, policy: ReconnectPolicy) -> DropPacer:
        """A pacer for the drop budget of ``policy``."""
        return cls(policy.max_drops, policy.drop_window)

    def affords(self, drops: int) -> bool:
        """Whether a fault causing up to ``drops`` drops fits the budget now."""
        now = self._clock()
        while self._spent and now - self._spent[0] > self._window:
            self._spent.popleft()
        return drops == 0 or len(self._spent) + drops <= self._limit

    def spend(self, drops: int) -> None:
        """Note a fault that can cause up to ``drops`` drops."""
        self._spent.extend([self._clock()] * drops)


class _Chooser:
    """Picks fault kinds at random; one the pacer cannot afford now is held back (no fault
    this time), so pacing thins the drops without skewing the mix towards the others."""

    def __init__(self, rng: random.Random, kinds: dict[str, int], pacer: DropPacer | None):
        self._rng = rng
        self._kinds = kinds
        self._pacer = pacer
        self.counts: Counter[str] = Counter()
        """Faults made, by kind."""
        self.held_back = 0
        """Faults not made because they could have spent the drop budget."""

    def pick(self) -> str | None:
        kind = self._rng.choice(list(self._kinds))
        drops = self._kinds[kind]
        if self._pacer is not None:
            if not self._pacer.affords(drops):
                self.held_back += 1
                return None
            self._pacer.spend(drops)
        return kind


class ServerChaos:
    """Random faults on a :class:`LocalGeminiLiveServer`; ``counts`` tallies what fired."""

    def __init__(
        self,
        server: LocalGeminiLiveServer,
        rng: random.Random,
        *,
        pacer: DropPacer | None = None,
        kinds: Collection[str] = tuple(SERVER_FAULTS),
    ) -> None:
        self.server = server
        self._rng = rng
        self._chooser = _Chooser(rng, {k: SERVER_FAULTS[k] for k in kinds}, pacer)
        self.counts = self._chooser.counts

    @property
    def held_back(self) -> int:
        """Faults not made to stay within the drop budget."""
        return self._chooser.held_back

    async def inject(self) -> str | None:
        """Arm or inject one random fault; return its kind (None when none was made)."""
        srv, rng = self.server, self._rng
        kind = self._chooser.pick()
        live = bool(srv.connections) and srv.connections[-1].open
        if kind == "drop_mid_reply":
            srv.arm(Drop(at="reply", after_chunks=rng.randint(1, 3)))
        elif kind == "go_away_mid_reply":
            srv.arm(GoAway(time_left=2.0, at="reply", after_chunks=rng.randint(1, 3)))
        elif kind == "not_resumable":
            srv.arm(ResumableFalse(count=rng.randint(1, 4)))
        elif kind == "drop_while_waiting":
            srv.inject_later(Drop(), delay=rng.uniform(0.0, 0.02))
        elif kind is not None and live:
            await self._on_live_connection(kind)
        else:
            kind = None  # nothing live to fault: the connection is between its drop and setup
        if kind is not None:
            self.counts[kind] += 1
        return kind

    async def _on_live_connection(self, kind: str) -> None:
        srv, rng = self.server, self._rng
        if kind == "drop_chain":
            srv.arm(*[Drop(at="setup")] * rng.randint(1, 3))
        elif kind == "refuse":
            srv.arm(RefuseHandle(code=rng.choice([1007, 1008, 1011])))
        elif kind == "expire":
            srv.forget_handles()
        elif kind == "slow_setup":
            srv.arm(SlowSetup(delay=0.05))
        elif kind == "no_setup_complete":
            srv.arm(NoSetupComplete())
        # the connection may be mid-setup or closing: then the drop is skipped (what was
        # armed above still fires at the next setup)
        with contextlib.suppress(RuntimeError, ConnectionClosed):
            await srv.inject(GoAway(time_left=2.0) if kind == "go_away_now" else Drop())


class ClientChaos:
    """Random faults made from the client side, for any Live-protocol endpoint.

    ``models`` returns the resumable models in use (a supervisor restart adds one): every
    live websocket of theirs is aborted, as a network drop does. ``bogus_handle`` makes the
    next reconnect present a handle no server issued (fresh, so the handler tries it): the
    endpoint must refuse it and the handler replay the history on a fresh session.
    """

    def __init__(
        self,
        models: Callable[[], Sequence[ResumableRealtimeModel]],
        rng: random.Random,
        *,
        pacer: DropPacer | None = None,
    ) -> None:
        self._models = models
        self._rng = rng
        self._chooser = _Chooser(rng, dict(CLIENT_FAULTS), pacer)
        self.counts = self._chooser.counts
        self._later: set[asyncio.Task[None]] = set()

    @property
    def held_back(self) -> int:
        """Faults not made to stay within the drop budget."""
        return self._chooser.held_back

    async def inject(self) -> str | None:
        """Make one random fault now (or, for ``drop_while_waiting``, in a moment)."""
        kind = self._chooser.pick()
        if kind == "drop_while_waiting":
            task = asyncio.create_task(self._drop_later(self._rng.uniform(0.0, 0.05)))
            self._later.add(task)
            task.add_done_callback(self._later.discard)
        elif kind is not None:
            if kind == "bogus_handle" and (models := self._models()):
                models[-1].resume.resume_from(GeminiHandle("bogus", (), time.time()))
            self.drop()
        if kind is not None:
            self.counts[kind] += 1
        return kind

    def drop(self) -> int:
        """Abort every live websocket of the models; return how many there were."""
        return sum(model.drop_connections() for model in self._models())

    async def _drop_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.drop()

    async def aclose(self) -> None:
        """Cancel the drops still scheduled."""
        for task in list(self._later):
            task.cancel()
        await asyncio.gather(*self._later, return_exceptions=True)


# -- every user turn gets a complete reply ----------------------------------------------------


@dataclass(frozen=True)
class TurnReply:
    """A user turn of a chat context and the assistant messages that followed it."""

    index: int
    """Position among the user turns (0 for the first)."""
    user: str
    parts: tuple[str, ...]
    """The assistant texts up to the next user turn, in order."""
    interrupted: tuple[bool, ...]
    """For each part: whether the chat context marks it interrupted (cut)."""

    @property
    def text(self) -> str:
        """The reply as the user got it: the parts joined."""
        return "".join(self.parts)


def replies_by_turn(
    items: Iterable[Any], *, ignore: Collection[str] = (CONTINUE_PROMPT,)
) -> list[TurnReply]:
    """The user turns of chat items (a ``ChatContext``'s ``.items``) with their replies.

    Messages whose text is in ``ignore`` (the handler's re-ask for a cut reply) are left
    out; assistant messages before the first user turn (a greeting) belong to no turn.
    """
    turns: list[tuple[str, list[str], list[bool]]] = []
    for item in items:
        if getattr(item, "type", None) != "message":
            continue
        text = item.text_content or ""
        if not text or text in ignore:
            continue
        if item.role == "user":
            turns.append((text, [], []))
        elif item.role == "assistant" and turns:
            turns[-1][1].append(text)
            turns[-1][2].append(bool(getattr(item, "interrupted", False)))
    return [TurnReply(n, user, tuple(p), tuple(i)) for n, (user, p, i) in enumerate(turns)]


def scripted_answer(user_text: str) -> str:
    """What the local server's :func:`~.server.default_responder` answers to ``user_text``."""
    return default_responder([HistoryItem("user", user_text, "client_content", 0)])


def reply_problem(turn: TurnReply, answer: Callable[[str], str] | None) -> str | None:
    """Why ``turn``'s reply is not complete, or None when it is.

    With ``answer`` (the full reply a user text must get) the joined parts must equal it.
    Without (an endpoint whose answers are unknown), only the shape can be judged: some
    reply came, no more than one part of it is whole (not given twice), and when a cut part
    was followed by its rest, the rest was not cut too. A lone cut part is not judged here:
    its rest may have been empty (a drop just before the end); whether every cut reply was
    continued is the handler's ``replies_cut`` / ``replies_continued``.
    """
    if not turn.parts:
        return "no reply"
    if answer is not None:
        wanted = answer(turn.user)
        if turn.text == wanted:
            return None
        return f"got {_clip(turn.text)} in {len(turn.parts)} part(s), not {_clip(wanted)}"
    if (whole := turn.interrupted.count(False)) > 1:
        return f"answered {whole} times: {_clip(turn.text)}"
    if len(turn.parts) > 1 and turn.interrupted[-1]:
        return f"its rest was cut too: {_clip(turn.text)}"
    return None


def incomplete_replies(
    items: Iterable[Any],
    answer: Callable[[str], str] | None = scripted_answer,
    *,
    ignore: Collection[str] = (CONTINUE_PROMPT,),
) -> list[str]:
    """One line per user turn whose reply is missing, cut or wrong (empty when all hold).

    ``items``: a chat context's items. ``answer``: the full reply for a user text
    (:func:`scripted_answer` for the local server); None checks only what any endpoint
    shows (see :func:`reply_problem`).
    """
    return [
        f"turn {turn.index} {_clip(turn.user)}: {problem}"
        for turn in replies_by_turn(items, ignore=ignore)
        if (problem := reply_problem(turn, answer)) is not None
    ]


async def reply_settled(
    items: Callable[[], Iterable[Any]],
    index: int,
    answer: Callable[[str], str] | None = scripted_answer,
    *,
    grace: float = 2.0,
    give_up_after: float = 30.0,
    ignore: Collection[str] = (CONTINUE_PROMPT,),
) -> TurnReply | None:
    """Wait until user turn ``index`` of ``items()`` has its complete reply, or a reply that
    stopped changing ``grace`` seconds ago (a cut that is never completed); None when the
    turn never showed up within ``give_up_after`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    seen: tuple[str, ...] = ()
    changed = loop.time()
    turn: TurnReply | None = None
    while loop.time() < deadline:
        turns = replies_by_turn(items(), ignore=ignore)
        turn = turns[index] if len(turns) > index else None
        if turn is not None:
            if reply_problem(turn, answer) is None:
                return turn
            if turn.parts != seen:
                seen, changed = turn.parts, loop.time()
            elif seen and loop.time() - changed >= grace:
                return turn
        await asyncio.sleep(0.01)
    return turn


def _clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
