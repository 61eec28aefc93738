"""`simulate --scenario gemini-soak`: a Gemini Live call through seeded random faults, run as
a user runs it, with its invariants and figures on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app

AGENT_PY = Path(__file__).resolve().parents[1] / "agent.py"


def test_a_twenty_turn_soak_keeps_every_invariant_and_prints_its_figures(
    tmp_path: Path,
) -> None:
    observations = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(AGENT_PY), "simulate", "--scenario", "gemini-soak",
         "--turns", "20", "--seed", "1", "--json", str(observations),
         "--log-file", str(tmp_path / "soak.log")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "  .. seed 1, 20 turns, the local Live server (repeat with --seed 1)" in lines
    assert len([line for line in lines if line.startswith("[user-1] turn ")]) == 20
    for shown in (
        "  ..   every user turn gets a complete reply: held",
        "  ..   no session restart, reconnect budget never spent: held",
        "  ..   the server holds the worker's conversation: held",
    ):
        assert shown in lines
    figures = "\n".join(lines[lines.index("  .. figures:") :])
    for name in ("faults", "reconnects", "resumed", "replayed", "downtime median", "p95"):
        assert name in figures
    assert "  ..   replies completed 20/20 (" in figures
    assert lines[-1] == "ok: gemini-soak kept every invariant"

    soak = json.loads(observations.read_text())["timings"]["gemini_soak"]
    assert soak["seed"] == 1 and soak["turns"] == 20 and soak["replies_complete"] == 20
    assert sum(soak["faults"].values()) >= 5 and soak["reconnects"] >= 3
    downtime = soak["downtime_ms"]
    assert downtime["max"] >= downtime["p95"] >= downtime["median"] > 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--scenario", "basic", "--turns", "5"], "--turns only applies to --scenario gemini-soak"),
        (["--seed", "3"], "--seed only applies to --scenario gemini-soak, not 'basic'"),
        (["--scenario", "gemini-soak", "--turns", "0"], "--turns must be at least 1, not 0"),
    ],
)
def test_soak_flags_are_checked_before_anything_runs(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, ["simulate", *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert expected in result.stderr
