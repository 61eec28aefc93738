"""Follow one participant through leaves and returns, and decide when to welcome them back.

A participant's *visit* is one connection (its participant SID) in one job, so:
- a repeated or racing join event for the same connection is a DUPLICATE: no second welcome;
- a browser refresh, network drop or device switch is a new connection: RETURNING, welcome
  back once;
- a worker restart is a new job with the same connection: RETURNING too.
While the participant is away the job waits up to the retention period for them, then
ends; the store keeps their record for the same period, on its own clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from livekit import rtc

from ..log import get_logger, identity_ref
from .store import JoinKind, JoinOutcome, SessionRecord, SessionStore, StoreError

logger = get_logger(__name__)


def visit_id(participant: rtc.RemoteParticipant, job_id: str) -> str:
    """The store's session id for one connection of a participant in one job."""
    return f"{participant.sid}/{job_id}"


class ParticipantPresence:
    """Joins and leaves of one identity in a room, recorded in the store.

    After :meth:`follow`, ``on_return`` is called once per returning connection and
    ``on_gone`` when the participant stayed away longer than ``wait_s``.
    """

    def __init__(
        self,
        room: rtc.Room,
        store: SessionStore,
        identity: str,
        *,
        job_id: str,
        wait_s: float,
    ) -> None:
        self._room = room
        self._store = store
        self._identity = identity
        self._job_id = job_id
        self._wait_s = wait_s
        self._on_return: Callable[[JoinOutcome], None] | None = None
        self._on_gone: Callable[[], None] | None = None
        self._absence: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    def follow(
        self, *, on_return: Callable[[JoinOutcome], None], on_gone: Callable[[], None]
    ) -> None:
        """Start following leaves and returns (once the session can greet)."""
        self._on_return = on_return
        self._on_gone = on_gone
        self._room.on("participant_connected", self._on_connected)
        self._room.on("participant_disconnected", self._on_disconnected)

    async def join(
        self, participant: rtc.RemoteParticipant, *, answer_within: float | None = None
    ) -> JoinOutcome | None:
        """Record a connection; None when the store refused it (the call goes on as new).

        With ``answer_within``, a store that has not answered by then (a frozen server, a
        network that swallows packets) does not hold the participant up: they are served as
        new at once, and the outcome's ``settled`` brings the store's answer when it comes.
        """
        pending = asyncio.ensure_future(
            self._store.join(self._room.name, self._identity, visit_id(participant, self._job_id))
        )
        if answer_within is not None:
            await asyncio.wait({pending}, timeout=answer_within)
            if not pending.done():
                logger.warning(
                    "session store slow to answer; serving the participant as new for now",
                    participant=identity_ref(self._identity),
                    waited_s=answer_within,
                )
                return JoinOutcome(
                    JoinKind.NEW, SessionRecord.blank(self._room.name, self._identity), pending
                )
        try:
            outcome = await pending
        except StoreError as exc:
            logger.error(
                "participant join not recorded",
                participant=identity_ref(self._identity),
                error=str(exc),
            )
            return None
        logger.info(
            "participant recognised",
            participant=identity_ref(self._identity),
            kind=outcome.kind.value,
            reconnect_count=outcome.record.reconnect_count,
        )
        return outcome

    def close(self) -> None:
        """Stop following the participant (the job is ending)."""
        if self._on_return is not None:
            self._room.off("participant_connected", self._on_connected)
            self._room.off("participant_disconnected", self._on_disconnected)
        if self._absence is not None:
            self._absence.cancel()
        for task in self._tasks:
            task.cancel()

    async def leave_now(self, participant: rtc.RemoteParticipant) -> None:
        """Record the end of a connection; retention starts in the store."""
        try:
            await self._store.leave(
                self._room.name, self._identity, visit_id(participant, self._job_id)
            )
        except StoreError as exc:
            logger.error(
                "participant leave not recorded",
                participant=identity_ref(self._identity),
                error=str(exc),
            )

    def _on_connected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity != self._identity:
            return
        if self._absence is not None:
            self._absence.cancel()
            self._absence = None
        self._spawn(self._returned(participant))

    def _on_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity != self._identity:
            return
        self._spawn(self.leave_now(participant))
        if self._identity not in self._room.remote_participants and self._absence is None:
            self._absence = asyncio.get_running_loop().call_later(self._wait_s, self._gone)

    async def _returned(self, participant: rtc.RemoteParticipant) -> None:
        outcome = await self.join(participant)
        if outcome is not None and outcome.kind is JoinKind.RETURNING and self._on_return:
            self._on_return(outcome)

    def _gone(self) -> None:
        self._absence = None
        logger.info("participant did not return", participant=identity_ref(self._identity))
        if self._on_gone is not None:
            self._on_gone()

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
