"""The ``gemini-faults`` scenario: a Gemini Live conversation through drops, goAway and a
refused handle, with the real plugin and the resume handler, checked against the server.

Run it inside :func:`gemini_endpoint` (``simulate`` does): without a URL that starts a
:class:`LocalGeminiLiveServer` and the faults are injected there; with ``simulate
--gemini-url URL`` the scenario talks to that endpoint and makes the faults it can from the
client side (aborted websockets, a bogus handle); goAway needs the local server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from google.genai import types
from livekit.agents import llm

from ..assistant import GREETING, WELCOME_BACK
from ..models import ModelStack
from ..resilience.gemini import gemini_realtime_model
from ..resilience.gemini.resume import CONTINUE_PROMPT, GeminiResume
from ..resilience.store import GeminiHandle
from ..settings import Settings
from ..testing import ScriptedTTS
from ..testing.gemini.faults import Drop, GoAway, RefuseHandle, SlowSetup
from ..testing.gemini.protocol import HistoryItem
from ..testing.gemini.server import LocalGeminiLiveServer

if TYPE_CHECKING:
    from ..resilience.supervisor import SessionSupervisor
from .harness import Observations, Simulation
from .invariants import one_agent_audio_track, segments_finalised_once, turns_as_expected
from .scenarios import USER, scenario

REPLY_PLACEHOLDER = "."
LOCAL_API_KEY = "local-test-key"
TURNS = [
    "Hi, I'd like to book a table for Friday.",
    "Four people, around eight in the evening.",
    "One of us is allergic to peanuts.",
    "Can you repeat the booking back to me?",
    "Perfect, thank you.",
]


def server_conversation(
    history: Sequence[HistoryItem], *, ignore: Collection[str] = ()
) -> list[tuple[str, str]]:
    """What a Gemini server holds as (role, text): user and model turns, without livekit's
    ``.`` reply placeholder, the re-ask of a cut reply, tool calls and ``ignore``d texts
    (reply instructions sent as model turns); adjacent turns of one role are one turn, as
    Gemini's content format merges them."""
    return _merged(
        ("assistant" if item.role == "model" else "user", item.text)
        for item in history
        if item.role in ("user", "model")
        and item.source != "tool_call"
        and item.text not in ("", REPLY_PLACEHOLDER, CONTINUE_PROMPT)
        and item.text not in ignore
    )


def worker_conversation(
    chat_ctx: llm.ChatContext | Iterable[llm.ChatItem],
) -> list[tuple[str, str]]:
    """The worker's chat context as (role, text): user and assistant messages, adjacent ones
    of one role joined (a cut reply and its rest are one answer)."""
    items = chat_ctx.items if isinstance(chat_ctx, llm.ChatContext) else chat_ctx
    return _merged(
        (item.role, item.text_content or "")
        for item in items
        if item.type == "message" and item.role in ("user", "assistant") and item.text_content
    )


def _merged(turns: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    for role, text in turns:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + text)
        else:
            merged.append((role, text))
    return merged


_LOCAL: LocalGeminiLiveServer | None = None


@contextlib.asynccontextmanager
async def gemini_endpoint(settings: Settings, url: str | None = None) -> AsyncIterator[Settings]:
    """Settings pointing at ``url``, or at a local Live server started for the run."""
    global _LOCAL
    if url:
        yield settings.model_copy(update={"gemini_base_url": url})
        return
    async with LocalGeminiLiveServer(chunk_delay=0.01) as srv:
        _LOCAL = srv
        try:
            yield settings.model_copy(update={"gemini_base_url": srv.base_url})
        finally:
            _LOCAL = None


class GeminiDrill:
    """The endpoint, model and handler one ``gemini-faults`` run uses."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        local = _LOCAL if _LOCAL is not None else None
        self.server = local if local and settings.gemini_base_url == local.base_url else None
        self.models: list = []

    @property
    def resume(self) -> GeminiResume:
        """The handler the job bound the current model to (run_job's, for this conversation)."""
        if not self.models:
            raise RuntimeError("the drill's model stack was never built")
        return self.models[-1].resume

    def stack(self) -> ModelStack:
        """A model stack on the real plugin with the resume handler (called per session)."""
        if self.server is not None:
            options, api_key = self.server.http_options(), LOCAL_API_KEY
        else:
            options = types.HttpOptions(base_url=self.settings.gemini_base_url)
            key = self.settings.google_api_key
            api_key = key.get_secret_value() if key is not None else LOCAL_API_KEY
        model = gemini_realtime_model(
            model=self.settings.gemini_model,
            api_key=api_key,
            http_options=options,
            modalities=[types.Modality.TEXT],
        )
        self.models.append(model)
        return ModelStack(name="gemini-live", llm=model, tts=ScriptedTTS())

    async def drop(self, *, refuse: bool = False) -> None:
        """A drop: on the local server, or by aborting the client's websocket."""
        if self.server is not None:
            if refuse:
                self.server.arm(RefuseHandle())
            await self.server.inject(Drop())
            return
        if refuse:  # a handle no server knows: refused like an expired one
            self.resume.resume_from(GeminiHandle("bogus-expired-handle", (), 0.0))
        for model in self.models:
            model.drop_connections()


_DRILL: GeminiDrill | None = None


def drill_models(settings: Settings) -> Callable[[], ModelStack]:
    """A Gemini scenario's ``models=``: a new :class:`GeminiDrill`, its stack per session."""
    global _DRILL
    _DRILL = GeminiDrill(settings)
    return _DRILL.stack


def current_drill(scenario: str) -> GeminiDrill:
    """The drill ``drill_models`` made for this run; RuntimeError outside ``simulate``."""
    if _DRILL is None:
        raise RuntimeError(f"{scenario} needs its model stack (run it through simulate)")
    return _DRILL


def _checks(obs: Observations, sim: Simulation) -> list[str]:
    return [
        *one_agent_audio_track(obs),
        *segments_finalised_once(obs),
        *turns_as_expected(obs, sim.expected_roles),
        *sim.timings.get("gemini_violations", []),
    ]


@scenario(
    "gemini-faults",
    summary="a Gemini Live call through drops, goAway and a refused handle; nothing lost",
    models=drill_models,
    checks=_checks,
    prepare=lambda settings, gemini_url=None, **_: gemini_endpoint(
        settings.model_copy(update={"room_mode": "one-to-one"}), gemini_url
    ),
)
async def gemini_faults(sim: Simulation) -> None:
    drill = current_drill("gemini-faults")
    if drill.server is None and not drill.settings.gemini_base_url:
        raise RuntimeError("gemini-faults needs an endpoint: run it inside gemini_endpoint()")
    await sim.join(USER, name="Simulated User")
    sim.expect_agent_turn("greeting")
    await sim.wait_for_agent_replies(1)
    await sim.say(USER, TURNS[0])
    sim.progress("the connection drops")
    await drill.drop()
    await sim.say(USER, TURNS[1])
    if drill.server is not None:
        sim.progress("goAway arrives mid-reply")
        drill.server.arm(GoAway(time_left=5.0, at="reply", after_chunks=1))
    await sim.say(USER, TURNS[2])
    sim.progress("the handle is refused on the next reconnect")
    await drill.drop(refuse=True)
    await sim.say(USER, TURNS[3])
    if drill.server is not None:
        sim.progress("the user speaks while the connection is down")
        drill.server.arm(SlowSetup(delay=0.3))
        await drill.drop()
    await sim.say(USER, TURNS[4])
    sim.timings["gemini"] = {
        k: v for k, v in vars(drill.resume.metrics).items() if not isinstance(v, list)
    }
    sim.timings["gemini_violations"] = await _violations(drill, sim)


async def unlike_the_worker(srv: LocalGeminiLiveServer, supervisor: SessionSupervisor) -> list[str]:
    """Nothing once the server holds the worker's conversation (greetings aside), else how
    they differ. The last reply reaches the chat context once its playout ends: look for 5 s."""

    def held() -> list[tuple[str, str]]:
        return server_conversation(srv.history(), ignore={GREETING, WELCOME_BACK})

    for _ in range(100):
        if held() == worker_conversation(supervisor.chat_ctx()):
            return []
        await asyncio.sleep(0.05)
    worker = worker_conversation(supervisor.chat_ctx())
    return [f"the server holds {len(held())} turns, the worker {len(worker)}"]


async def _violations(drill: GeminiDrill, sim: Simulation) -> list[str]:
    found = []
    metrics = drill.resume.metrics
    if metrics.exhausted or metrics.reconnects < 2:
        found.append(f"expected reconnects and no spent budget, saw {metrics}")
    if drill.server is not None and (supervisor := sim.supervisor) is not None:
        found += await unlike_the_worker(drill.server, supervisor)
        cut = [
            c.index
            for c in drill.server.connections
            if c.go_away_sent_at is not None and not all(r.completed for r in c.replies)
        ]
        if cut:
            found.append(f"goAway cut a reply on connection(s) {cut}")
    return found
