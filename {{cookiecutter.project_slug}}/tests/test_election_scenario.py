"""The ``multi`` scenario through the simulate harness: three participants, the primary's
participant leaves, the designation moves without a gap or an overlap.

``run_job`` gains its multi-participant wiring from the lead; until then this test runs the
harness with ``multi_participant_job`` below, the wiring proposed for ``run_job`` (the same
parts, the same order), so the scenario and its checks are proven now.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from livekit.agents import room_io

from {{ cookiecutter.package_name }}.assistant import GREETING, Assistant
from {{ cookiecutter.package_name }}.resilience.election import (
    SessionElection,
    SupervisedConversation,
)
from {{ cookiecutter.package_name }}.resilience.supervisor import SessionSupervisor
from {{ cookiecutter.package_name }}.resilience.transcribers import (
    TranscriberPool,
    listen_only_stt,
)
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import (
    SCENARIOS,
    harness,
    run_scenario,
    scenario_multi,  # registers the scenario
)


@dataclass
class MultiConversation:
    supervisor: SessionSupervisor
    election: SessionElection
    pool: TranscriberPool

    @property
    def session(self):  # noqa: ANN201
        return self.supervisor.session

    async def aclose(self, reason: str = "job ended") -> None:
        await self.election.aclose()
        await self.pool.aclose()
        await self.supervisor.aclose(reason)


async def multi_participant_job(ctx, *, settings, models, store=None) -> MultiConversation:  # noqa: ANN001
    """The wiring proposed for run_job when ROOM_MODE=multi-participant."""
    await ctx.connect()
    election = SessionElection(ctx)
    participant = await ctx.wait_for_participant()
    stack = models()
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    pool = TranscriberPool(
        ctx.room,
        stt_factory=lambda: listen_only_stt(
            models().stt, openai_api_key=key, model=settings.openai_stt_model
        ),
        vad=stack.vad,
        election=election,
        job_ctx=ctx,
    )
    supervisor = SessionSupervisor(
        ctx.room,
        participant.identity,
        models=models,
        agent_factory=lambda chat_ctx: Assistant(chat_ctx=chat_ctx),
        job_ctx=ctx,
        room_options=room_io.RoomOptions(close_on_disconnect=False),
    )
    async with election.starting(SupervisedConversation(supervisor, participant.identity)):
        await supervisor.start(greeting=GREETING)
    pool.follow()
    return MultiConversation(supervisor, election, pool)


async def test_multi_scenario_hands_the_primary_over_without_gap_or_overlap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(harness, "run_job", multi_participant_job)
    chosen = SCENARIOS["multi"]
    settings = load_settings(room_mode="multi-participant")
    lines: list[str] = []
    observations = await run_scenario(
        "multi",
        chosen.run,
        settings=settings,
        llm=chosen.scripted_llm(),
        models=chosen.models(settings) if chosen.models else None,
        checks=chosen.checks,
        printer=lines.append,
    )
    assert observations.violations == []
    terms = observations.timings["primary_timeline"]
    assert [t["role"] for t in terms] == ["conversational", "listen-only"]
    assert terms[1]["reason"] == "primary participant left"
    assert all(t["hosted_at"] is not None for t in terms)


def test_the_checks_catch_a_gap_and_a_misattributed_line() -> None:
    from {{ cookiecutter.package_name }}.simulation.harness import Observations

    class Sim:
        timeline = [
            {"started_at": 0.0, "ended_at": 1.0, "role": "conversational"},
            {"started_at": 1.5, "ended_at": None, "role": "listen-only"},
        ]
        primary_identities = ["alice", "bob"]

    obs = Observations(scenario="multi")
    obs.segments = [
        {"source": "transcription", "role": "user", "speaker": "carol", "final": True,
         "text": scenario_multi.LINES["bob"][0]},
    ]  # fmt: skip
    problems = scenario_multi.check_multi(obs, Sim())  # type: ignore[arg-type]
    assert any("gap or an overlap" in p for p in problems)
    assert any("attributed to someone" in p for p in problems)
    assert any("never reached the transcript" in p for p in problems)
