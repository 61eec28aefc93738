"""Conversation summaries: the model's context stays within a budget, the transcript complete.

When the model's context passes a budget (``SUMMARY_MAX_TURNS`` messages, or
``SUMMARY_MAX_TOKENS`` estimated tokens), a background task asks a text model to fold the
older turns, and the previous summary, into one summary. The model then sees its
instructions, the summary and the last ``SUMMARY_KEEP_TURNS`` messages. People's transcript
(``transcript.history``, the stored transcript, the session's history) is never touched.

The summary is a chat message shaped like livekit's own (``ChatContext._summarize``: an
assistant message ``<chat_history_summary>...`` marked ``extra["is_summary"]``, which
livekit's task groups leave alone), naming the last item it covers (``extra["covers"]``).
It is appended to the stored conversation like any turn, with ``compact_through`` its
covered item (``ConversationRecorder``, resilience/returning.py): in the same atomic step the
store drops the items it stands for (their ids stay seen, they count as trimmed), so a long
conversation's record stays bounded. Every backend, fenced write, outage queue and ``sessions
export`` carry it, sealed with the rest and deduplicated by id, and a record written before
summaries has none and loads as before. A restore (``compact_stored``) and every session the
supervisor starts (``before_start``) send the compact form: the summary and the items after
the covered one (all the items left, once the store dropped it). The transcript is never
compacted.

Why not livekit's ``ChatContext._summarize``: it is private (an upgrade may change or drop
it), it rewrites a context in place (the turns said while the model summarises would have to
be merged back by guesswork), it keeps every earlier summary (the context grows by one per
pass), and it does not say which item it covered last, which a restore needs.

A summary never holds a reply up: the pass runs in the background, one at a time per
conversation, cancelled on close; a failure is one warning line, the context stays whole and
the next pass waits a backoff. The model is a stack built for the summariser (never the
instance a session uses: an API error on it would look like the session's model failing),
or ``SUMMARY_MODEL``; a realtime stack has no text model, so without ``SUMMARY_MODEL`` its
conversations are not summarised (one line says so, the first time the budget is passed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livekit.agents import AgentSession, APIConnectOptions, llm, utils

from .log import get_logger
from .resilience.backoff import Backoff

if TYPE_CHECKING:
    from .models import ModelStack
    from .resilience.events import SessionSpec
    from .settings import Settings

__all__ = [
    "SUMMARY_INSTRUCTIONS",
    "ConversationSummarizer",
    "SummaryBudget",
    "compact",
    "compact_stored",
    "is_summary",
    "stored_covers",
    "summary_message",
    "summary_model",
]

logger = get_logger(__name__)

SUMMARY_TAG = "chat_history_summary"
IS_SUMMARY = "is_summary"  # livekit's own mark (ChatContext._summarize)
COVERS = "covers"
SUMMARY_INSTRUCTIONS = """\
Fold the older part of a voice conversation into a short, faithful summary.

The conversation is XML: <user> is what the user said, <assistant> what the assistant said,
<function_call> an action the assistant took and <function_call_output> its result.
<previous_summary>, when present, summarises what came before: keep what still matters.

Keep the user's goals, constraints, decisions, preferences, names, facts learned (from action
results too, without mentioning the actions) and anything still pending. Leave out greetings
and filler. Write plain sentences, at most 250 words."""
# one request folds at most this much conversation (about 8k tokens); more takes several
CHUNK_CHARS = 32_000
RETRY = Backoff(base=30.0, cap=600.0)
# no retries inside a pass (livekit would log each): a failed pass is one line, then RETRY
ONE_TRY = APIConnectOptions(max_retry=0)
IDLE_WAIT_S = 30.0


@dataclass(frozen=True)
class SummaryBudget:
    """When to summarise: past ``max_turns`` messages (user and assistant) or ``max_tokens``
    estimated tokens (0: no such limit); a pass keeps the last ``keep_turns`` messages and
    runs only when it would fold at least ``keep_turns // 2`` of them (so big recent turns do
    not start a pass per message)."""

    max_turns: int = 200
    keep_turns: int = 40
    max_tokens: int = 32_000

    @classmethod
    def from_settings(cls, settings: Settings) -> SummaryBudget | None:
        """The configured budget; None when summaries are off (both limits 0)."""
        if not settings.summary_max_turns and not settings.summary_max_tokens:
            return None
        return cls(
            settings.summary_max_turns, settings.summary_keep_turns, settings.summary_max_tokens
        )

    def passed(self, items: Sequence[llm.ChatItem]) -> bool:
        """Whether ``items`` (a model's context) are over the budget."""
        if self.max_turns and sum(map(_is_turn, items)) > self.max_turns:
            return True
        return bool(self.max_tokens) and estimated_tokens(items) > self.max_tokens


def is_summary(item: llm.ChatItem) -> bool:
    """A summary message (ours or livekit's)."""
    return isinstance(item, llm.ChatMessage) and item.extra.get(IS_SUMMARY) is True


def _is_turn(item: llm.ChatItem) -> bool:
    return (
        isinstance(item, llm.ChatMessage)
        and item.role in ("user", "assistant")
        and not is_summary(item)
    )


def _is_conversation(item: llm.ChatItem) -> bool:
    """What a summary replaces: messages said and tool calls (not instructions or notes)."""
    if isinstance(item, llm.ChatMessage):
        return item.role in ("user", "assistant")
    return isinstance(item, llm.FunctionCall | llm.FunctionCallOutput)


def _text(item: llm.ChatItem) -> str:
    if isinstance(item, llm.ChatMessage):
        return "".join(c for c in item.content if isinstance(c, str))
    if isinstance(item, llm.FunctionCall):
        return item.arguments
    if isinstance(item, llm.FunctionCallOutput):
        return item.output
    return ""


def estimated_tokens(items: Sequence[llm.ChatItem]) -> int:
    """About four characters a token, as OpenAI's guidance for English has it."""
    return sum(len(_text(i)) for i in items) // 4


def summary_message(text: str, *, covers: str, created_at: float) -> llm.ChatMessage:
    """The summary as the model sees it and the store keeps it."""
    return llm.ChatMessage(
        id=utils.shortuuid("summary_"),
        role="assistant",
        content=[f"<{SUMMARY_TAG}>\n{text}\n</{SUMMARY_TAG}>"],
        extra={IS_SUMMARY: True, COVERS: covers},
        created_at=created_at,
    )


def _last_summary(items: Sequence[llm.ChatItem]) -> llm.ChatMessage | None:
    for item in reversed(items):
        if isinstance(item, llm.ChatMessage) and is_summary(item):
            return item
    return None


def summary_text(summary: llm.ChatMessage) -> str:
    """What a summary says, without its tag."""
    text = _text(summary).strip()
    return text.removeprefix(f"<{SUMMARY_TAG}>").removesuffix(f"</{SUMMARY_TAG}>").strip()


def _covered_end(items: Sequence[Any], covers: Any, item_id: Callable[[Any], Any]) -> int:
    """Index after the item ``covers`` names (searched from the end), or 0 when absent."""
    for n in range(len(items) - 1, -1, -1):
        if item_id(items[n]) == covers:
            return n + 1
    return 0


def compact(items: Sequence[llm.ChatItem], summary: llm.ChatMessage) -> list[llm.ChatItem]:
    """``items`` as the model sees them with ``summary``: instructions and notes where they
    were, the summary, then the conversation after the item it covers (all of it, earlier
    summaries aside, when that item is not there: nothing unsummarised is dropped)."""
    end = _covered_end(items, summary.extra.get(COVERS), lambda i: i.id)
    kept = [i for i in items[:end] if not _is_conversation(i)]
    rest = [i for i in items[end:] if not is_summary(i)]
    at = next((n for n, i in enumerate(rest) if _is_conversation(i)), len(rest))
    return [*kept, *rest[:at], summary, *rest[at:]]


def _stored_summary(item: Mapping[str, Any]) -> bool:
    extra = item.get("extra")
    return isinstance(extra, dict) and extra.get(IS_SUMMARY) is True


def stored_covers(item: Mapping[str, Any]) -> str | None:
    """The id a stored summary covers through (None: not a summary, or it names none)."""
    covers = item["extra"].get(COVERS) if _stored_summary(item) else None
    return covers if isinstance(covers, str) else None


def compact_stored(
    items: Sequence[Mapping[str, Any]],
) -> tuple[Mapping[str, Any] | None, Sequence[Mapping[str, Any]], bool]:
    """The newest stored summary, the stored items after the one it covers, and whether
    that item was found (then the summary stands for everything before it). Without a
    summary: None, every item, False."""
    for n in range(len(items) - 1, -1, -1):
        if _stored_summary(items[n]):
            summary = items[n]
            break
    else:
        return None, items, False
    covers = summary["extra"].get(COVERS)
    end = _covered_end(items[:n], covers, lambda i: i.get("id"))
    tail = [i for i in items[end:] if not _stored_summary(i)]
    return summary, tail, end > 0


def _xml(item: llm.ChatItem) -> str:
    if isinstance(item, llm.FunctionCall):
        return f'<function_call name="{item.name}">{item.arguments}</function_call>'
    if isinstance(item, llm.FunctionCallOutput):
        return f'<function_call_output name="{item.name}">{item.output}</function_call_output>'
    role = item.role if isinstance(item, llm.ChatMessage) else "note"
    return f"<{role}>{_text(item).strip()}</{role}>"


async def summarise(model: llm.LLM, previous: str | None, items: Sequence[llm.ChatItem]) -> str:
    """Fold ``items`` into ``previous`` (a summary, or None), ``CHUNK_CHARS`` at a time."""
    summary, chunk, size = previous, [], 0
    lines = [_xml(i) for i in items]
    for n, line in enumerate(lines):
        chunk.append(line)
        size += len(line)
        if size >= CHUNK_CHARS or n == len(lines) - 1:
            summary = await _fold(model, summary, "\n".join(chunk))
            chunk, size = [], 0
    return summary or ""


async def _fold(model: llm.LLM, previous: str | None, conversation: str) -> str:
    request = llm.ChatContext.empty()
    request.add_message(role="system", content=SUMMARY_INSTRUCTIONS)
    before = f"<previous_summary>{previous}</previous_summary>\n" if previous else ""
    request.add_message(role="user", content=f"{before}{conversation}")
    parts: list[str] = []
    async with model.chat(chat_ctx=request, conn_options=ONE_TRY) as stream:
        async for chunk in stream:
            if chunk.delta is not None and chunk.delta.content:
                parts.append(chunk.delta.content)
    text = "".join(parts).strip()
    if not text:
        raise ValueError("the model returned an empty summary")
    return text


def summary_model(settings: Settings, models: Callable[[], ModelStack]) -> llm.LLM | str:
    """The text model that writes summaries, or why there is none (one line)."""
    if settings.summary_model:
        provider, _, name = settings.summary_model.partition("/")
        key = settings.openai_api_key if provider == "openai" else settings.google_api_key
        if key is None:
            variable = "OPENAI_API_KEY" if provider == "openai" else "GOOGLE_API_KEY"
            return f"SUMMARY_MODEL={settings.summary_model} needs {variable}"
        if provider == "openai":
            from livekit.plugins import openai

            return openai.LLM(model=name, api_key=key.get_secret_value())
        from livekit.plugins import google

        return google.LLM(model=name, api_key=key.get_secret_value())
    stack = models()  # a stack of its own: its errors never reach a session's model
    if isinstance(stack.llm, llm.LLM):
        return stack.llm
    return (
        f"MODEL_STACK={stack.name} has no text model to summarise with; set SUMMARY_MODEL "
        "(e.g. google/gemini-2.5-flash or openai/gpt-4.1-mini)"
    )


SummaryModelSource = Callable[[], "llm.LLM | str"]


class ConversationSummarizer:
    """Keeps one conversation's model context within ``budget`` (None: never summarises).

    ``model`` gives the summarising model, or a line saying why there is none; it is called
    once, when the budget is first passed. ``on_summary`` gets each new summary (the
    conversation stores it). Wire ``attach`` to every session the supervisor starts and
    ``before_start`` to its ``before_start`` hook.
    """

    def __init__(
        self,
        budget: SummaryBudget | None,
        model: SummaryModelSource,
        *,
        on_summary: Callable[[llm.ChatMessage], None],
    ) -> None:
        self.budget = budget
        self._model_source = model
        self._model: llm.LLM | None = None
        self._on_summary = on_summary
        self._session: AgentSession | None = None
        self._summary: llm.ChatMessage | None = None
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._off = budget is None

    @property
    def summary(self) -> llm.ChatMessage | None:
        """The newest summary this conversation made (None before the first)."""
        return self._summary

    def attach(self, session: AgentSession) -> None:
        """Watch ``session`` (the current one) and summarise when its context passes the
        budget."""
        self._session = session
        if not self._off:
            session.on("conversation_item_added", lambda _ev: self._check(session))

    def before_start(self, spec: SessionSpec) -> None:
        """A session is about to start: it starts from the compact form of the context."""
        if self._summary is not None:
            spec.chat_ctx = llm.ChatContext(compact(spec.chat_ctx.items, self._summary))

    async def aclose(self) -> None:
        """Cancel a pass under way (what it stored stays)."""
        self._off = True
        if self._task is not None:
            await utils.aio.cancel_and_wait(self._task)

    def _check(self, session: AgentSession) -> None:
        budget = self.budget
        if self._off or budget is None or session is not self._session:
            return
        if (self._task is not None and not self._task.done()) or time.monotonic() < self._retry_at:
            return
        if budget.passed(session.current_agent.chat_ctx.items):
            self._task = asyncio.create_task(self._pass(session, budget), name="summarise")

    def _llm(self, session: AgentSession) -> llm.LLM | None:
        if self._model is None and not self._off:
            try:
                found = self._model_source()
            except Exception as exc:  # a plugin refusing its configuration
                found = f"the summary model could not be built: {exc}"
            if found is session.llm:
                found = (
                    "the stack's model is the one the session uses; summaries need one of their "
                    "own (a models factory that builds a new stack per call, or SUMMARY_MODEL)"
                )
            if isinstance(found, str):
                logger.info("conversation not summarised", reason=found)
                self._off = True
                return None
            self._model = found
        return self._model

    async def _pass(self, session: AgentSession, budget: SummaryBudget) -> None:
        try:
            await self._fold(session, budget)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the model, or giving the session its context, failed
            self._failures += 1
            delay = RETRY.delay(self._failures)
            self._retry_at = time.monotonic() + delay
            logger.warning(
                "conversation summary failed; the model keeps its whole context",
                error=str(exc)[:200] or type(exc).__name__,
                retry_in_s=round(delay),
            )
        else:
            self._failures = 0

    async def _fold(self, session: AgentSession, budget: SummaryBudget) -> None:
        """Fold all but the last ``keep_turns`` messages (after what the previous summary
        covers) into a new summary; store it and give it to the session."""
        items = list(session.current_agent.chat_ctx.items)
        turns = [n for n, i in enumerate(items) if _is_turn(i)]
        previous = self._summary or _last_summary(items)
        start = _covered_end(items, previous.extra.get(COVERS), lambda i: i.id) if previous else 0
        cut = turns[-budget.keep_turns] if len(turns) >= budget.keep_turns else 0
        head = [i for i in items[start:cut] if _is_conversation(i) and not is_summary(i)]
        if sum(map(_is_turn, head)) < max(1, budget.keep_turns // 2):
            return
        model = self._llm(session)
        if model is None:
            return
        text = await summarise(model, summary_text(previous) if previous else None, head)
        summary = summary_message(text, covers=head[-1].id, created_at=items[cut].created_at - 1e-6)
        self._summary = summary
        self._on_summary(summary)
        logger.info("conversation summarised", turns_folded=sum(map(_is_turn, head)))
        await self._apply(summary)

    async def _apply(self, summary: llm.ChatMessage) -> None:
        """Give the current session's model the compact context (a realtime model at its
        next idle point: new content would cut a reply it is giving)."""
        session = self._session
        if session is None:
            return
        if isinstance(session.llm, llm.RealtimeModel) and not await _idle(session):
            return  # the next session starts compact (before_start)
        if session is not self._session:
            return
        agent = session.current_agent
        items = agent.chat_ctx.items
        if any(i.id == summary.extra[COVERS] for i in items):
            # no await before update_chat_ctx adopts it: no turn is added in between
            await agent.update_chat_ctx(llm.ChatContext(compact(items, summary)))


async def _idle(session: AgentSession) -> bool:
    """Wait until the agent listens (False if it did not within ``IDLE_WAIT_S``)."""
    if session.agent_state in ("listening", "idle"):
        return True
    listening = asyncio.get_running_loop().create_future()

    def on_state(ev: Any) -> None:
        if ev.new_state in ("listening", "idle") and not listening.done():
            listening.set_result(None)

    session.on("agent_state_changed", on_state)
    try:
        await asyncio.wait_for(listening, IDLE_WAIT_S)
        return True
    except TimeoutError:
        return False
    finally:
        session.off("agent_state_changed", on_state)
