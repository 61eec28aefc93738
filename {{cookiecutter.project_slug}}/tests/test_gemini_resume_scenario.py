"""The ``gemini-faults`` scenario through the worker's real job wiring and the real plugin."""

from __future__ import annotations

from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import (
    run_scenario,
    scenario_gemini,
)
from {{ cookiecutter.package_name }}.simulation.scenarios import SCENARIOS


async def test_gemini_faults_scenario_keeps_every_invariant() -> None:
    chosen = SCENARIOS["gemini-faults"]
    assert chosen.models is not None
    lines: list[str] = []
    async with scenario_gemini.gemini_endpoint(load_settings()) as settings:
        obs = await run_scenario(
            chosen.name,
            chosen.run,
            settings=settings,
            llm=chosen.scripted_llm(),
            models=chosen.models(settings),
            checks=chosen.checks,
            printer=lines.append,
        )
    assert obs.violations == []
    metrics = obs.timings["gemini"]
    assert metrics["reconnects"] >= 4 and metrics["handle_refusals"] == 1
    assert metrics["go_aways"] == 1 and metrics["exhausted"] == 0
    said = [s["text"] for s in obs.segments if s["final"] and s["role"] == "user"]
    assert said == scenario_gemini.TURNS
