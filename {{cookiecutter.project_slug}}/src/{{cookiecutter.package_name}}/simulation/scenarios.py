"""Scenarios for `simulate`: each drives the scripted user; add one with `@scenario`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from ..models import ModelStack
from ..settings import Settings
from ..testing import ScriptedLLM
from .harness import Observations, ScenarioFn, Simulation

ModelsFor = Callable[[Settings], Callable[[], ModelStack]]
Checks = Callable[[Observations, Simulation], list[str]]
Prepare = Callable[..., AbstractAsyncContextManager[Settings]]
"""``prepare(settings, gemini_url=...)``: the settings a scenario runs with, inside any
service it needs for the run (a local Gemini Live server, say)."""


def with_settings(**update: object) -> Prepare:
    """A ``prepare`` that only changes settings (``room_mode="multi-participant"``...)."""

    def prepare(settings: Settings, **_options: object) -> AbstractAsyncContextManager[Settings]:
        return contextlib.nullcontext(settings.model_copy(update=update))

    return prepare


class Scenario:
    """A named scenario: what the user does, and what the agent runs on.

    By default the agent runs on a scripted LLM that gives ``replies`` in order, and the
    conversation is checked with `check_conversation`. ``models`` builds another model
    stack from the settings (a real plugin against a local server); ``checks`` replaces
    the standard invariants (a room with several participants, say); ``prepare`` gives the
    settings and services the run needs.
    """

    def __init__(
        self,
        name: str,
        run: ScenarioFn,
        *,
        summary: str,
        replies: list[str] | None = None,
        models: ModelsFor | None = None,
        checks: Checks | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        self.name = name
        self.run = run
        self.summary = summary
        self.replies = replies or []
        self.models = models
        self.checks = checks
        # a scenario is one conversation unless it says otherwise
        self.prepare = prepare or with_settings(room_mode="one-to-one")

    def scripted_llm(self) -> ScriptedLLM:
        return ScriptedLLM(self.replies)


SCENARIOS: dict[str, Scenario] = {}

USER = "user-1"


def scenario(
    name: str,
    *,
    summary: str,
    replies: list[str] | None = None,
    models: ModelsFor | None = None,
    checks: Checks | None = None,
    prepare: Prepare | None = None,
) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register a scenario under ``name`` (see `Scenario` for the options)."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS[name] = Scenario(
            name,
            fn,
            summary=summary,
            replies=replies,
            models=models,
            checks=checks,
            prepare=prepare,
        )
        return fn

    return register


BASIC_TURNS = [
    "Hi, can you hear me?",
    "What can you help me with?",
    "Great, thanks. That's all for now.",
]


@scenario(
    "basic",
    summary="a participant joins, is greeted once and has three turns",
    replies=[
        "Hello! I'm your voice assistant. How can I help you today?",
        "Yes, I can hear you clearly.",
        "I can answer questions and tell you the time anywhere in the world.",
        "You're welcome. Have a great day!",
    ],
)
async def basic(sim: Simulation) -> None:
    await sim.join(USER, name="Simulated User")
    sim.expect_agent_turn("greeting")
    await sim.wait_for_agent_replies(1)
    sim.timings["greeting_s"] = sim.elapsed()
    for line in BASIC_TURNS:
        await sim.say(USER, line)


REFRESH_BEFORE = ["My name is Ada and I'm planning a trip to Lisbon.", "What should I pack?"]
REFRESH_AFTER = ["Sorry, my page reloaded. Where were we?"]


@scenario(
    "refresh",
    summary="the participant refreshes the page mid-conversation and comes back",
    replies=[
        "Hello! I'm your voice assistant. How can I help you today?",
        "Nice to meet you, Ada. Lisbon is lovely.",
        "Light layers and comfortable shoes for the hills.",
        "Welcome back, Ada! We were talking about your trip to Lisbon.",
        "You asked what to pack: light layers and comfortable shoes.",
    ],
)
async def refresh(sim: Simulation) -> None:
    await sim.join(USER, name="Simulated User")
    sim.expect_agent_turn("greeting")
    await sim.wait_for_agent_replies(1)
    for line in REFRESH_BEFORE:
        await sim.say(USER, line)
    await sim.leave(USER)
    before = sim.agent_replies()
    await sim.join(USER, name="Simulated User")
    sim.expect_agent_turn("welcome back")
    await sim.wait_for_agent_replies(before + 1)
    sim.timings["welcome_back_s"] = sim.elapsed()
    for line in REFRESH_AFTER:
        await sim.say(USER, line)
