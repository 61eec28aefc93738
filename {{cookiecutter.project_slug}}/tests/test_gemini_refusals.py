"""Refusals before setupComplete: what no retry changes is not retried; the rest is.

Close codes and reasons are the ones public threads show Gemini Live closing with (1007 "API
key not valid", "API key expired", "User location is not supported", "Request contains an
invalid argument"; 1008 "Requested entity was not found", an unknown model; 1011 "Internal
error occurred", a spent quota). Real AgentSession, the plugin with the handler's loop, the
local Live server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gemini_helpers import ask, connected
from google.genai import types
from livekit.agents import Agent, AgentSession

from {{ cookiecutter.package_name }}.resilience.gemini import gemini_realtime_model
from {{ cookiecutter.package_name }}.resilience.gemini.connection_loop import (
    ModelRefusedError,
    refusal_kind,
)
from {{ cookiecutter.package_name }}.resilience.gemini.resume import (
    ExhaustedEvent,
    GeminiResume,
    ReconnectPolicy,
)
from {{ cookiecutter.package_name }}.testing.gemini.faults import Drop, RefuseSetup
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    LocalGeminiLiveServer,
)

FAST = ReconnectPolicy(backoff_base=0.01, backoff_max=0.05, setup_timeout=1.0)
KEY_INVALID = "API key not valid. Please pass a valid API key."
KEY_EXPIRED = "API key expired. Please renew the API key."
LOCATION = "User location is not supported for the API use."
INVALID_ARGUMENT = "Request contains an invalid argument."
NOT_FOUND = "Requested entity was not found."
NO_MODEL = (
    "models/gemini-made-up is not found for API version v1beta, or is not supported for "
    "bidiGenerateContent."
)
QUOTA = "You exceeded your current quota, please check your plan and billing details."
INTERNAL = "Internal error occurred."


@pytest.mark.parametrize(
    ("code", "reason", "resuming", "kind"),
    [
        (1007, KEY_INVALID, False, "permanent"),
        (1007, KEY_INVALID, True, "permanent"),  # not taken for a refused handle
        (1007, KEY_EXPIRED, True, "permanent"),
        (1007, LOCATION, False, "permanent"),
        (1011, QUOTA, False, "permanent"),
        (1008, NO_MODEL, False, "permanent"),
        (1007, INVALID_ARGUMENT, False, "permanent"),  # the same setup fails the same way
        (1007, INVALID_ARGUMENT, True, "handle"),  # maybe only the handle: try fresh
        (1008, NOT_FOUND, True, "handle"),
        (1008, NOT_FOUND, False, "permanent"),
        (1011, INTERNAL, True, "handle"),
        (1011, INTERNAL, False, "transient"),
        (1006, "Abnormal closure.", False, "transient"),
        (1001, "", True, "transient"),
    ],
)
def test_a_refusal_is_classified_by_code_reason_and_handle(
    code: int, reason: str, resuming: bool, kind: str
) -> None:
    assert refusal_kind(code, reason, resuming=resuming) == kind


@pytest.fixture
async def srv() -> AsyncIterator[LocalGeminiLiveServer]:
    async with LocalGeminiLiveServer(api_key="the-right-key", chunk_delay=0.005) as server:
        yield server


async def talk(
    srv: LocalGeminiLiveServer, key: str, exhausted: list[ExhaustedEvent]
) -> tuple[AgentSession, GeminiResume]:
    resume = GeminiResume(policy=FAST, on_exhausted=exhausted.append)
    model = gemini_realtime_model(
        resume, api_key=key, http_options=srv.http_options(), modalities=[types.Modality.TEXT]
    )
    session: AgentSession = AgentSession(llm=model)
    await session.start(Agent(instructions="You are a test agent."))
    return session, resume


async def test_a_wrong_key_is_refused_once_and_never_retried(srv: LocalGeminiLiveServer) -> None:
    exhausted: list[ExhaustedEvent] = []
    session, resume = await talk(srv, "AIza-made-up", exhausted)
    try:
        await srv.wait_for(lambda: srv.connections and not srv.connections[0].open)
        for _ in range(50):  # the hook runs once the close is read
            if exhausted:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # time for a retry, which must not come
    finally:
        await session.aclose()
    assert len(srv.connections) == 1, "a refused key is not retried"
    assert srv.connections[0].refused_with == 1007
    assert len(exhausted) == 1 and isinstance(exhausted[0].error, ModelRefusedError)
    assert "API key not valid" in str(exhausted[0].error)
    assert resume.metrics.refusals == 1 and resume.metrics.failed_attempts == 0


@pytest.mark.parametrize("reason", [KEY_EXPIRED, LOCATION, NO_MODEL, QUOTA])
async def test_a_permanent_refusal_after_a_drop_spends_the_budget_at_once(
    srv: LocalGeminiLiveServer, reason: str
) -> None:
    exhausted: list[ExhaustedEvent] = []
    session, resume = await talk(srv, "the-right-key", exhausted)
    try:
        assert await ask(session, "first") == "reply to: first"
        srv.arm(RefuseSetup(code=1011 if reason == QUOTA else 1007, reason=reason))
        await srv.inject(Drop())
        await srv.wait_for(lambda: len(srv.connections) == 2 and not srv.connections[1].open)
        for _ in range(50):
            if exhausted:
                break
            await asyncio.sleep(0.01)
    finally:
        await session.aclose()
    assert len(srv.connections) == 2
    assert len(exhausted) == 1 and isinstance(exhausted[0].error, ModelRefusedError)
    assert resume.metrics.handle_refusals == 0, "a key problem is not a refused handle"


@pytest.mark.parametrize(
    ("code", "reason"), [(1008, NOT_FOUND), (1007, INVALID_ARGUMENT), (1011, INTERNAL)]
)
async def test_a_refused_handle_is_retried_fresh_and_the_call_goes_on(
    srv: LocalGeminiLiveServer, code: int, reason: str
) -> None:
    exhausted: list[ExhaustedEvent] = []
    session, resume = await talk(srv, "the-right-key", exhausted)
    try:
        assert await ask(session, "first") == "reply to: first"
        srv.arm(RefuseSetup(code=code, reason=reason))
        await srv.inject(Drop())
        await connected(srv, 3)
        assert await ask(session, "second") == "reply to: second"
    finally:
        await session.aclose()
    refused, fresh = srv.connections[1], srv.connections[2]
    assert refused.refused_with == code and refused.handle is not None
    assert fresh.handle is None, "the fresh session replays instead"
    assert resume.metrics.handle_refusals == 1 and not exhausted


async def test_an_internal_error_before_setup_of_a_fresh_session_is_retried(
    srv: LocalGeminiLiveServer,
) -> None:
    exhausted: list[ExhaustedEvent] = []
    srv.arm(RefuseSetup(code=1011, reason=INTERNAL))
    session, resume = await talk(srv, "the-right-key", exhausted)
    try:
        assert await ask(session, "first") == "reply to: first"
    finally:
        await session.aclose()
    assert srv.connections[0].refused_with == 1011 and srv.connections[1].setup_complete_after
    assert resume.metrics.failed_attempts == 1 and not exhausted
