"""One participant across connections and devices: who they are to the store, and what they
said.

Presence: a participant is known to the store by their conversation key (their identity, or
the user key their token carries: see ``devices``); a *visit* is one connection (its
participant SID) in one job, so
- a repeated or racing join event for the same connection is a DUPLICATE: no second welcome;
- a browser refresh, network drop or device switch is a new connection: RETURNING, welcome
  back once;
- a worker restart is a new job with the same connection: RETURNING too.
Another device with the same key joining takes the conversation over (``on_device``); when
the device in use leaves and another stays, the conversation moves to the one staying.
While the participant is away (no device left) the job waits up to the retention period for
them, then ends; the store keeps their record for the same period, on its own clock.

Persistence: `chat_ctx_from_record` rebuilds what the model should see from a stored record;
`ConversationRecorder` appends a live session's turns (messages, tool calls and their
outputs) and transcript segments to the store in order, off the call's hot path.
A store error never reaches the call: it is logged, and the Redis store queues writes
while Redis is down.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, llm, utils
from livekit.agents.voice.events import ConversationItemAddedEvent, FunctionToolsExecutedEvent
from pydantic import TypeAdapter

from ..log import get_logger, identity_ref
from ..summary import compact_stored, stored_covers
from .events import CONVERSATION_TYPES
from .store import JoinKind, JoinOutcome, SessionRecord, SessionStore, StoreError
from .transcript import KEPT_SEGMENTS, TranscriptSegment

logger = get_logger(__name__)


def visit_id(participant: rtc.RemoteParticipant, job_id: str) -> str:
    """The store's session id for one connection of a participant in one job."""
    return f"{participant.sid}/{job_id}"


class ParticipantPresence:
    """Joins and leaves of one participant in a room, recorded in the store.

    ``identity`` is the participant's key in the store; ``key_of`` gives a participant's key
    (default: their identity), so the devices that share it are this participant's.
    After :meth:`follow`, ``on_return`` is called once per returning connection,
    ``on_device`` with the identity of the device the conversation moves to, and
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
        key_of: Callable[[rtc.RemoteParticipant], str] | None = None,
    ) -> None:
        self._room = room
        self._store = store
        self._identity = identity
        self._job_id = job_id
        self._wait_s = wait_s
        self._on_return: Callable[[JoinOutcome], None] | None = None
        self._on_gone: Callable[[], None] | None = None
        self._on_device: Callable[[str], None] | None = None
        self._key_of = key_of or (lambda participant: participant.identity)
        # the participant's devices in the room (identities, the latest last), the one in use
        self._devices: dict[str, None] = {}
        self._in_use: str | None = None
        self._absence: asyncio.TimerHandle | None = None
        self._tasks = utils.aio.TaskSet()  # returns and leaves being recorded

    def follow(
        self,
        *,
        on_return: Callable[[JoinOutcome], None],
        on_gone: Callable[[], None],
        on_device: Callable[[str], None] | None = None,
    ) -> None:
        """Start following leaves and returns (once the session can greet)."""
        self._on_return = on_return
        self._on_gone = on_gone
        self._on_device = on_device
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
        self._register(participant.identity)
        # the transcript's newest lines only: what the conversation's log keeps
        pending = asyncio.ensure_future(
            self._store.join(
                self._room.name, self._identity, visit_id(participant, self._job_id),
                transcript_tail=KEPT_SEGMENTS,
            )
        )  # fmt: skip
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
        for task in self._tasks.tasks:
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

    def _register(self, identity: str) -> None:
        self._devices.pop(identity, None)
        self._devices[identity] = None
        if self._in_use is None:
            self._in_use = identity

    def _use(self, identity: str) -> None:
        """The conversation moves to ``identity`` (a no-op for the device in use)."""
        previous, self._in_use = self._in_use, identity
        if previous != identity and self._on_device is not None:
            self._on_device(identity)

    def _on_connected(self, participant: rtc.RemoteParticipant) -> None:
        if self._key_of(participant) != self._identity:
            return
        if self._absence is not None:
            self._absence.cancel()
            self._absence = None
        self._register(participant.identity)
        self._use(participant.identity)  # the device that joined last takes over
        self._spawn(self._returned(participant))

    def _on_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity not in self._devices:
            return
        # still here: a newer connection of the same identity came before this leave
        present = self._room.remote_participants
        self._devices = dict.fromkeys(i for i in self._devices if i in present)
        staying = next(reversed(self._devices), None)
        if staying is not None and self._in_use == participant.identity != staying:
            self._use(staying)
            self._spawn(self._hand_back(present[staying], participant))
            return
        self._spawn(self.leave_now(participant))
        if staying is None and self._absence is None:
            self._absence = asyncio.get_running_loop().call_later(self._wait_s, self._gone)

    async def _hand_back(
        self, staying: rtc.RemoteParticipant, departed: rtc.RemoteParticipant
    ) -> None:
        """The store's visit moves to the device staying before the one in use leaves (its
        leave is then a no-op), so retention never starts while the participant is here."""
        await self.join(staying)
        await self.leave_now(departed)

    async def _returned(self, participant: rtc.RemoteParticipant) -> None:
        outcome = await self.join(participant)
        if outcome is not None and outcome.kind is JoinKind.RETURNING and self._on_return:
            self._on_return(outcome)

    def _gone(self) -> None:
        self._absence = None
        logger.info("participant did not return", participant=identity_ref(self._identity))
        if self._on_gone is not None:
            self._on_gone()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.create_task(coro)


TRIMMED_HISTORY_NOTE = (
    "The {count} oldest items of this conversation were trimmed from storage; "
    "what follows is the rest."
)


def item_to_dict(item: llm.ChatItem) -> dict[str, Any]:
    """A chat item as stored: livekit's own JSON form, with its id and timestamp."""
    return llm.ChatContext(items=[item]).to_dict(exclude_timestamp=False)["items"][0]


def chat_ctx_from_record(record: SessionRecord) -> llm.ChatContext:
    """The conversation a record holds, as a chat context for a new Agent: with a summary
    (``summary.py``), the summary and the items after the last one it covers, so a long
    conversation restores in bounded size; people's transcript is not part of it.

    An item livekit cannot read (a record written by another version, a hand-edited one)
    is skipped with a warning naming its id; the rest of the conversation is kept.
    """
    summary, stored, covered = compact_stored(record.items)
    items: list[llm.ChatItem] = []
    # a summary whose covered item is gone stands for what the store dropped (compaction)
    if record.items_trimmed and not covered and summary is None:
        # the store keeps a bounded history (StorageLimits): say where the rest was
        items.append(
            llm.ChatMessage(
                role="system",
                content=[TRIMMED_HISTORY_NOTE.format(count=record.items_trimmed)],
                created_at=record.joined_at,
            )
        )
    wanted = [i for i in stored if i.get("type", "message") in CONVERSATION_TYPES]
    items += _chat_items([summary, *wanted] if summary is not None else wanted, record.identity)
    return llm.ChatContext(items=items)


@functools.cache
def _item_reader() -> TypeAdapter[list[llm.ChatItem]]:
    """What ``ChatContext.from_dict`` validates with, built once (building it costs about as
    much as reading 40 items)."""
    return TypeAdapter(list[llm.ChatItem])


def _chat_items(stored: Sequence[Mapping[str, Any]], identity: str) -> list[llm.ChatItem]:
    """Stored items as livekit's, all in one go (item by item it is ~60x slower); when one
    is unreadable, item by item, skipping each unreadable one with a warning."""
    read = _item_reader().validate_python
    try:
        return read([dict(i) for i in stored])
    except (ValueError, TypeError, KeyError):
        pass
    items: list[llm.ChatItem] = []
    for item in stored:
        try:
            items += read([dict(item)])
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning(
                "skipped unreadable stored chat item",
                item_id=item.get("id"),
                participant=identity_ref(identity),
                error=str(exc),
            )
    return items


def transcript_from_record(record: SessionRecord) -> list[TranscriptSegment]:
    """The transcript a record holds, for ``transcript.history``; unreadable entries skipped."""
    segments = []
    for stored in record.transcript:
        try:
            segments.append(TranscriptSegment.from_dict(stored))
        except ValueError as exc:
            logger.warning(
                "skipped unreadable stored transcript segment",
                segment_id=stored.get("id"),
                participant=identity_ref(record.identity),
                error=str(exc),
            )
    return segments


class ConversationRecorder:
    """Appends one participant's conversation to the store, in order, in the background.

    A summary (``summary.py``) is appended with ``compact_through`` its covered item: the
    store drops the items it stands for in the same step (the transcript stays whole)."""

    def __init__(self, store: SessionStore, room: str, identity: str) -> None:
        self._store = store
        self._room = room
        self._identity = identity
        self._queue: asyncio.Queue[tuple[list[dict], list[dict]] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._write_loop(), name="conversation_recorder")

    def attach(self, session: AgentSession) -> None:
        """Record every turn of ``session`` (call again for each new session)."""

        @session.on("conversation_item_added")
        def _on_item(event: ConversationItemAddedEvent) -> None:
            # livekit emits this for messages (tool calls come as function_tools_executed)
            if isinstance(event.item, llm.ChatMessage):
                self.add(items=[item_to_dict(event.item)])

        @session.on("function_tools_executed")
        def _on_tools(event: FunctionToolsExecutedEvent) -> None:
            calls: list[llm.ChatItem] = []
            for call, output in event.zipped():
                calls.append(call)
                if output is not None:
                    calls.append(output)
            self.add(items=[item_to_dict(i) for i in calls])

    def add(
        self,
        *,
        items: Sequence[Mapping[str, Any]] = (),
        transcript: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Queue items and transcript segments (dicts with an ``id``) for the store."""
        if items or transcript:
            self._queue.put_nowait(([dict(i) for i in items], [dict(t) for t in transcript]))

    async def flush(self) -> None:
        """Wait until everything queued so far has been handed to the store."""
        await self._queue.join()

    async def aclose(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put_nowait(None)
        await self._task

    async def _write_loop(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                if batch is None:
                    return
                items, transcript = batch
                covers = next(filter(None, map(stored_covers, items)), None)
                await self._store.append(
                    self._room, self._identity, items=items, transcript=transcript,
                    compact_through=covers,
                )  # fmt: skip
            except StoreError as exc:
                logger.error(
                    "conversation not saved",
                    participant=identity_ref(self._identity),
                    items=len(batch[0]) if batch else 0,
                    error=str(exc),
                )
            except Exception:
                logger.exception("conversation recorder failed on a write")
            finally:
                self._queue.task_done()
