"""Bake helpers shared by the template tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
DEFAULTS = json.loads((TEMPLATE / "cookiecutter.json").read_text())


def bake(tmp_path: Path, **answers: object) -> Path:
    """Generate a project from the template with ``answers``; return its directory."""
    out = cookiecutter(
        str(TEMPLATE),
        no_input=True,
        extra_context=answers,
        output_dir=str(tmp_path),
        overwrite_if_exists=False,
    )
    return Path(out)


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it does not exit 0."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{' '.join(cmd)} did not finish in {timeout:.0f} s in {cwd}\n"
            f"--- stdout ---\n{_tail(exc.stdout)}\n--- stderr ---\n{_tail(exc.stderr)}"
        )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode} in {cwd}\n"
            f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}"
        )
    return proc


def _tail(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    return (output or "")[-8000:]


@pytest.fixture(scope="session")
def default_bake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default answers, baked once for the deep tests that share it, with the uv.lock the
    README says to commit (each test syncs it as it needs)."""
    project = bake(tmp_path_factory.mktemp("default-bake"))
    run(["uv", "lock", "--quiet"], cwd=project)
    return project


@pytest.fixture(scope="session")
def ruff() -> str:
    path = shutil.which("ruff")
    if path is None:
        pytest.fail("ruff is not installed in the template's dev environment: run `uv sync`")
    return path
