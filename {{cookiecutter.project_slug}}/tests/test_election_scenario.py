"""The ``multi`` scenario through the simulate harness and the real ``run_job``: three
participants, the primary's participant leaves, the designation moves without a gap or an
overlap, and everyone's lines are attributed to them.
"""

from __future__ import annotations

from types import SimpleNamespace

from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import (
    SCENARIOS,
    run_scenario,
    scenario_multi,  # registers the scenario
)


async def test_multi_scenario_hands_the_primary_over_without_gap_or_overlap() -> None:
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

    sim = SimpleNamespace(
        findings={
            "timeline": [
                {"started_at": 0.0, "ended_at": 1.0, "role": "conversational"},
                {"started_at": 1.5, "ended_at": None, "role": "listen-only"},
            ],
            "primary_identities": ["alice", "bob"],
        }
    )

    obs = Observations(scenario="multi")
    obs.segments = [
        {"source": "transcription", "role": "user", "speaker": "carol", "final": True,
         "text": scenario_multi.LINES["bob"][0]},
    ]  # fmt: skip
    problems = scenario_multi.check_multi(obs, sim)
    assert any("gap or an overlap" in p for p in problems)
    assert any("attributed to someone" in p for p in problems)
    assert any("never reached the transcript" in p for p in problems)
