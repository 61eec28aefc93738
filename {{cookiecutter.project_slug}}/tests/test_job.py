"""A full job on the simulated room, through the worker's real composition root."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from pathlib import Path

import pytest
from livekit.agents.utils import is_given
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.models import build_models, modules_to_preload
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import (
    SCENARIOS,
    Simulation,
    run_scenario,
)
from {{ cookiecutter.package_name }}.simulation.harness import within
from {{ cookiecutter.package_name }}.simulation.scenarios import BASIC_TURNS
from {{ cookiecutter.package_name }}.testing import RedisServer, ScriptedLLM


async def test_participant_is_greeted_once_and_three_turns_are_answered() -> None:
    basic = SCENARIOS["basic"]
    lines: list[str] = []
    obs = await run_scenario(
        "basic", basic.run, settings=load_settings(), llm=basic.scripted_llm(), printer=lines.append
    )
    assert obs.violations == []

    transcript = [(s["role"], s["text"]) for s in obs.segments if s["final"]]
    assert transcript == [
        ("agent", basic.replies[0]),
        *[
            pair
            for question, answer in zip(BASIC_TURNS, basic.replies[1:], strict=True)
            for pair in (("user", question), ("agent", answer))
        ],
    ]
    agent_tracks = [t for t in obs.tracks if t["participant_identity"] == "agent"]
    assert len(agent_tracks) == 1
    assert {s["track_id"] for s in obs.segments if s["role"] == "agent"} == {agent_tracks[0]["sid"]}
    # the model answered each turn seeing every earlier one
    last_request = [(i["role"], i["text"]) for i in obs.model_requests[-1] if i["role"] != "system"]
    assert [text for role, text in last_request if role == "user"] == BASIC_TURNS
    # progress was printed as it happened, in conversation order
    assert lines[-1] == f"[agent] {basic.replies[-1]}"


async def test_a_second_greeting_breaks_the_invariants() -> None:
    """The checks can fail: an agent that speaks twice before the user is caught."""

    async def greets_twice(sim: Simulation) -> None:
        await sim.join("user-1")
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        assert sim.session is not None
        sim.session.generate_reply(instructions="greet again")
        await sim.wait_for_agent_replies(2)

    obs = await run_scenario(
        "twice",
        greets_twice,
        settings=load_settings(),
        llm=ScriptedLLM(["Hello!", "Hello again!"]),
        printer=lambda _: None,
    )
    assert obs.violations == ["expected turns agent, saw agent/agent"]


async def test_the_job_warns_when_its_room_closes_before_the_retention(
    caplog: pytest.LogCaptureFixture,
) -> None:
    basic = SCENARIOS["basic"]
    with caplog.at_level(logging.WARNING):
        obs = await run_scenario(
            "basic", basic.run, settings=load_settings(), llm=basic.scripted_llm(),
            printer=lambda _: None, departure_timeout=20,
        )  # fmt: skip
    assert obs.violations == []
    # a room made without our token: the server's default departure timeout, 20 s < 300 s
    (warning,) = [r for r in caplog.records if "closes sooner" in r.getMessage()]
    assert "departure_timeout" in warning.getMessage()


def test_simulate_command_prints_the_conversation_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    result = CliRunner().invoke(app, ["simulate", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "[user-1] Hi, can you hear me?" in result.stdout
    assert "ok: basic kept every invariant" in result.stdout
    data = json.loads(out.read_text())
    assert data["ok"] is True
    assert len({t["sid"] for t in data["tracks"]}) == 1
    assert all(set(s) >= {"segment_id", "final", "track_id", "text"} for s in data["segments"])
    assert data["timings"]["turns_s"] and data["timings"]["total_s"] > 0


def test_two_simulate_runs_on_one_redis_never_share_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with RedisServer() as server:
        monkeypatch.setenv("REDIS_URL", server.url)
        for scenario in ("restart", "restart", "refresh", "refresh"):
            result = CliRunner().invoke(app, ["simulate", "--scenario", scenario])
            assert result.exit_code == 0, result.output
            assert "under the Redis key prefix lkagent-sim-" in result.stdout
        with server.client() as admin:
            assert not admin.keys("{lkagent:*")  # nothing under a deployment's own prefix


def test_simulate_refuses_a_redis_on_another_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@redis.prod.example.com:6379/0")
    result = CliRunner().invoke(app, ["simulate"])
    assert result.exit_code == 2
    assert "redis.prod.example.com, not this machine" in result.stderr
    assert "--allow-remote-redis" in result.stderr and "s3cret" not in result.output


def test_simulate_rejects_an_unknown_scenario() -> None:
    result = CliRunner().invoke(app, ["simulate", "--scenario", "nope"])
    assert result.exit_code == 2
    assert "--scenario must be one of" in result.stderr


@pytest.mark.parametrize("stack", ["gemini-live", "openai-realtime", "openai-pipeline"])
def test_every_model_stack_builds_offline(monkeypatch: pytest.MonkeyPatch, stack: str) -> None:
    monkeypatch.setenv("MODEL_STACK", stack)
    monkeypatch.setenv("GOOGLE_API_KEY", "g")
    monkeypatch.setenv("OPENAI_API_KEY", "o")
    monkeypatch.setenv("GEMINI_BASE_URL", "https://127.0.0.1:8443/")
    settings = load_settings()
    models = build_models(settings)
    assert models.name == stack
    # what the worker's process pool preloads for this stack exists and is what it imports
    preload = modules_to_preload(settings)
    assert preload and all(importlib.import_module(name) for name in preload)
    assert (models.stt is None) is (stack != "openai-pipeline")
    if stack == "gemini-live":
        from {{ cookiecutter.package_name }}.resilience.gemini._plugin import (
            ResumableRealtimeModel,
        )

        assert isinstance(models.llm, ResumableRealtimeModel)
        options = models.llm._opts.http_options
        assert is_given(options) and options.base_url == "https://127.0.0.1:8443"


def test_the_help_lists_every_registered_scenario() -> None:
    from {{ cookiecutter.package_name }}.cli.simulate import SCENARIO_NAMES

    # crash runs real worker processes instead of the in-process harness (scenario_crash.py)
    assert set(SCENARIO_NAMES) == {*SCENARIOS, "crash"}


async def test_a_stuck_step_is_given_up_and_says_where_it_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A simulation whose scenario or teardown never ends fails in bounded time, and the log
    names the await each task is stuck in (``run_scenario`` bounds its steps with it)."""
    never = asyncio.Event()

    async def waits_for_good() -> None:
        await never.wait()

    assert await within(asyncio.sleep(0, "done"), 1, "a quick step") == "done"
    with pytest.raises(TimeoutError, match="the stuck step did not finish in 0 s"):
        await within(waits_for_good(), 0.05, "the stuck step")
    (record,) = [r for r in caplog.records if "did not finish" in r.getMessage()]
    assert "waits_for_good:" in record.getMessage() and record.levelname == "ERROR"
