"""Bake every supported option combination and check what comes out."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from conftest import DEFAULTS, bake, run
from cookiecutter.exceptions import FailedHookException

OPTIONS = {
    "model_stack": DEFAULTS["model_stack"],
    "session_store": DEFAULTS["session_store"],
    "room_mode": DEFAULTS["room_mode"],
    "python_version": DEFAULTS["python_version"],
    "include_dockerfile": [True, False],
}
COMBINATIONS = [
    dict(zip(OPTIONS, values, strict=True)) for values in itertools.product(*OPTIONS.values())
]


def combo_id(answers: dict[str, object]) -> str:
    docker = "docker" if answers["include_dockerfile"] else "nodocker"
    return "-".join(
        [str(answers[k]) for k in ("model_stack", "session_store", "room_mode")]
        + [f"py{answers['python_version']}", docker]
    )


LEFTOVER = re.compile(r"\{\{\s*cookiecutter\.|\{%|\{#|cookiecutter\.(project|package)_")
ALWAYS = [
    "agent.py",
    "pyproject.toml",
    "README.md",
    "AGENTS.md",
    ".env.example",
    ".gitignore",
    ".cruft.json",
    ".python-version",
    "src/{pkg}/__init__.py",
    "src/{pkg}/settings.py",
    "src/{pkg}/log.py",
    "src/{pkg}/assistant.py",
    "src/{pkg}/models.py",
    "src/{pkg}/worker.py",
    "src/{pkg}/cli.py",
    "src/{pkg}/simulation/__init__.py",
    "src/{pkg}/testing/__init__.py",
    "tests/conftest.py",
]


@pytest.mark.parametrize("answers", COMBINATIONS, ids=combo_id)
def test_bake(tmp_path: Path, answers: dict[str, object], ruff: str) -> None:
    project = bake(tmp_path, **answers)
    pkg = "voice_agent"

    for rel in ALWAYS:
        assert (project / rel.format(pkg=pkg)).is_file(), f"{rel} missing"
    assert (project / "Dockerfile").exists() is answers["include_dockerfile"]
    assert (project / ".dockerignore").exists() is answers["include_dockerfile"]
    assert (project / "compose.yaml").exists() is (answers["session_store"] == "redis")

    for path in project.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not LEFTOVER.search(text), f"template syntax left in {path.relative_to(project)}"

    ignored = (project / ".gitignore").read_text().splitlines()
    assert ".env.*" in ignored and "!.env.example" in ignored  # .env.local never committed

    env = (project / ".env.example").read_text()
    assert f"MODEL_STACK={answers['model_stack']}" in env
    assert ("\nREDIS_URL=" in env) is (answers["session_store"] == "redis")
    assert (project / ".python-version").read_text().strip() == answers["python_version"]

    run([ruff, "check", "--no-cache", "."], cwd=project)
    run([ruff, "format", "--check", "--no-cache", "."], cwd=project)


def test_custom_names_flow_everywhere(tmp_path: Path, ruff: str) -> None:
    """The longest names the hook accepts still give a project that lints and formats clean."""
    long_name = "Front Desk Bot " + "x" * 25  # a 40-character slug and package
    project = bake(tmp_path, project_name="Front Desk Bot", agent_name="front-desk")
    assert project.name == "front-desk-bot"
    assert (project / "src/front_desk_bot/worker.py").is_file()
    assert "from front_desk_bot.cli import main" in (project / "agent.py").read_text()
    assert 'front-desk-bot = "front_desk_bot.cli:main"' in (project / "pyproject.toml").read_text()
    assert 'default="front-desk",' in (project / "src/front_desk_bot/settings.py").read_text()
    run([ruff, "check", "--no-cache", "."], cwd=project)
    run([ruff, "format", "--check", "--no-cache", "."], cwd=project)

    longest = bake(tmp_path / "long", project_name=long_name, agent_name="a" * 64)
    assert longest.name == "front-desk-bot-" + "x" * 25
    run([ruff, "check", "--no-cache", "."], cwd=longest)
    run([ruff, "format", "--check", "--no-cache", "."], cwd=longest)


@pytest.mark.parametrize(
    "answers",
    [
        {"project_slug": "Not A Slug"},
        {"package_name": "3d_agent"},
        {"agent_name": "has spaces"},
    ],
    ids=["bad-slug", "bad-package", "bad-agent-name"],
)
def test_bad_answers_fail_in_pre_gen_hook(tmp_path: Path, answers: dict[str, object]) -> None:
    with pytest.raises(FailedHookException):
        bake(tmp_path, **answers)
    assert list(tmp_path.iterdir()) == []
