"""The deep run: install a baked project with uv and run its own test suite and benchmarks."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import TEMPLATE, bake, run

pytestmark = pytest.mark.deep

# the default answers run as the generated CI workflow runs them (test_ship.py)
DEEP = {
    "redis-multi": {"session_store": "redis", "room_mode": "multi-participant"},
}
# every benchmark the template ships, found when the tests are collected
BENCHMARKS = sorted(
    path.name for path in (TEMPLATE / "{{cookiecutter.project_slug}}/benchmarks").glob("bench_*.py")
)


@pytest.mark.parametrize("answers", DEEP.values(), ids=DEEP.keys())
def test_generated_suite_passes(tmp_path: Path, answers: dict[str, object]) -> None:
    uv = shutil.which("uv")
    assert uv, "uv is needed for the deep run (.ci/run installs it)"
    project = bake(tmp_path, **answers)
    env_python = os.environ.get("UV_PYTHON")
    sync = [uv, "sync", "--quiet"] + (["--python", env_python] if env_python else [])
    run(sync, cwd=project)
    # each generated test has its own timeout (pytest-timeout), so a hang fails that test with
    # its traceback; this bound is for the whole suite (about 7 min on a 2-core machine)
    suite = [uv, "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15"]
    proc = run(suite, cwd=project, timeout=1800)
    assert " passed" in proc.stdout
    # the README's first command: simulate on the embedded defaults
    run([uv, "run", "--no-sync", "python", "agent.py", "simulate"], cwd=project)


@pytest.fixture(scope="module")
def synced_default_bake(default_bake: Path) -> Path:
    """The default bake (shared with test_ship.py's CI run), its environment installed."""
    run(["uv", "sync", "--locked", "--quiet"], cwd=default_bake)
    return default_bake


@pytest.mark.parametrize("script", BENCHMARKS, ids=[name[:-3] for name in BENCHMARKS])
def test_benchmark_runs_quick(synced_default_bake: Path, script: str) -> None:
    """Each benchmark's ``--quick`` run: the same code paths in seconds, figures printed."""
    command = ["uv", "run", "--no-sync", "python", f"benchmarks/{script}", "--quick"]
    proc = run(command, cwd=synced_default_bake, timeout=300)
    assert re.search(r"\d\.\d", proc.stdout), f"{script} printed no figures:\n{proc.stdout}"
