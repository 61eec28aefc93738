"""The deep run: install a baked project with uv and run its own test suite."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import bake, run

pytestmark = pytest.mark.deep

# the default answers run as the generated CI workflow runs them (test_ship.py)
DEEP = {
    "redis-multi": {"session_store": "redis", "room_mode": "multi-participant"},
}


@pytest.mark.parametrize("answers", DEEP.values(), ids=DEEP.keys())
def test_generated_suite_passes(tmp_path: Path, answers: dict[str, object]) -> None:
    uv = shutil.which("uv")
    assert uv, "uv is needed for the deep run (.ci/run installs it)"
    project = bake(tmp_path, **answers)
    env_python = os.environ.get("UV_PYTHON")
    sync = [uv, "sync", "--quiet"] + (["--python", env_python] if env_python else [])
    run(sync, cwd=project)
    proc = run([uv, "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project)
    assert " passed" in proc.stdout
    # the README's first command: simulate on the embedded defaults
    run([uv, "run", "--no-sync", "python", "agent.py", "simulate"], cwd=project)
