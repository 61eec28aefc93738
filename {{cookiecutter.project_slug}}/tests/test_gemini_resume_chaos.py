"""Chaos: a 200-turn conversation through 100+ seeded random faults on the local server.

The real plugin, with the handler's connection loop, in a real AgentSession. After every
turn (and so after every reconnect) the server's conversation must equal the worker's
chat context; the session never closes with an error; goAway never cuts a reply.
"""

from __future__ import annotations

import contextlib
import random

from google.genai import types
from livekit.agents import Agent, AgentSession, RunResult
from livekit.agents.voice.events import CloseEvent
from websockets.exceptions import ConnectionClosed

from {{ cookiecutter.package_name }}.resilience.gemini import gemini_realtime_model
from {{ cookiecutter.package_name }}.resilience.gemini.resume import (
    GeminiResume,
    ReconnectedEvent,
    ReconnectPolicy,
)
from {{ cookiecutter.package_name }}.simulation.scenario_gemini import (
    server_conversation,
    worker_conversation,
)
from {{ cookiecutter.package_name }}.testing.gemini.faults import (
    Drop,
    GoAway,
    NoSetupComplete,
    RefuseHandle,
    ResumableFalse,
    SlowSetup,
)
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    LocalGeminiLiveServer,
)

TURNS = 200
SEED = 20240611
# a fault every other turn is far denser than any real server's drops: the drop budget (which
# ends an accept-then-drop loop, tested in test_gemini_resume.py) is out of this test's way
POLICY = ReconnectPolicy(
    max_attempts=6,
    backoff_base=0.01,
    backoff_max=0.05,
    setup_timeout=0.4,
    go_away_margin=0.5,
    max_drops=10_000,
)


async def inject_fault(srv: LocalGeminiLiveServer, rng: random.Random) -> str:
    """Arm or inject one random fault; return its name."""
    kind = rng.choice(
        [
            "drop",
            "drop_mid_reply",
            "drop_chain",
            "go_away_mid_reply",
            "go_away_now",
            "refuse",
            "expire",
            "not_resumable",
            "slow_setup",
            "drop_while_waiting",
            "no_setup_complete",
        ]
    )
    live = bool(srv.connections) and srv.connections[-1].open
    if kind == "drop_mid_reply":
        srv.arm(Drop(at="reply", after_chunks=rng.randint(1, 3)))
    elif kind == "go_away_mid_reply":
        srv.arm(GoAway(time_left=2.0, at="reply", after_chunks=rng.randint(1, 3)))
    elif kind == "not_resumable":
        srv.arm(ResumableFalse(count=rng.randint(1, 4)))
    elif kind == "drop_while_waiting":
        srv.inject_later(Drop(), delay=rng.uniform(0.0, 0.02))
    elif live:
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
        # the connection may be mid-setup or closing: then this fault is skipped
        with contextlib.suppress(RuntimeError, ConnectionClosed):
            await srv.inject(GoAway(time_left=2.0) if kind == "go_away_now" else Drop())
    return kind


async def test_two_hundred_turns_through_a_hundred_faults() -> None:
    rng = random.Random(SEED)
    async with LocalGeminiLiveServer(chunks=4, chunk_delay=0.002) as srv:
        resume = GeminiResume(policy=POLICY)
        reconnects: list[ReconnectedEvent] = []
        resume.on("reconnected", reconnects.append)
        model = gemini_realtime_model(
            resume,
            api_key="local-test-key",
            http_options=srv.http_options(),
            modalities=[types.Modality.TEXT],
        )
        session: AgentSession = AgentSession(llm=model)
        closes: list[CloseEvent] = []
        session.on("close", closes.append)
        agent = Agent(instructions="You are a test agent.")
        await session.start(agent)
        answered = 0
        for turn in range(TURNS):
            if rng.random() < 0.6:
                await inject_fault(srv, rng)
            text = f"turn {turn} " + " ".join(rng.choice("abcdefgh") for _ in range(6))
            result: RunResult = await session.run(user_input=text)
            answered += any(e.type == "message" for e in result.events)
            await srv.wait_for(
                lambda: server_conversation(srv.history()) == worker_conversation(agent.chat_ctx),
                give_up_after=5,
                what=f"the server to hold the worker's conversation after turn {turn}",
            )
        await session.aclose()

    assert len(srv.fault_log) >= 100, f"only {len(srv.fault_log)} faults fired"
    assert not [c for c in closes if c.error is not None], "no fatal close"
    assert resume.metrics.exhausted == 0 and len(reconnects) >= 50
    assert answered == TURNS
    for conn in srv.connections:
        if conn.go_away_sent_at is not None and conn.closed_by == "client":
            assert all(r.completed for r in conn.replies), "goAway cut a reply"
    resumed = [r for r in reconnects if r.resumed]
    assert resumed and any(not r.resumed for r in reconnects), "both paths were taken"
