"""Bake a curated list of option combinations and check what comes out.

Options only change defaults and prune files, so every value appears once and the pairs that
interact (session store x room mode) appear together, instead of all 72 combinations.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import DEFAULTS, bake, run
from cookiecutter.exceptions import FailedHookException

# readable id -> the answers that differ from the defaults (cookiecutter.json: the first choice)
COMBINATIONS: dict[str, dict[str, object]] = {
    "default": {},
    "sqlite-multi": {"room_mode": "multi-participant"},
    "redis-one-to-one": {"session_store": "redis"},
    "redis-multi": {"session_store": "redis", "room_mode": "multi-participant"},
    "openai-realtime-py312": {"model_stack": "openai-realtime", "python_version": "3.12"},
    "openai-pipeline-py313": {"model_stack": "openai-pipeline", "python_version": "3.13"},
    "no-docker-no-license": {"include_dockerfile": False, "license": "none"},
    "custom-names-every-other-answer": {
        "project_name": "Front Desk Bot",
        "agent_name": "front-desk",
        "model_stack": "openai-pipeline",
        "session_store": "redis",
        "room_mode": "multi-participant",
        "python_version": "3.12",
        "include_dockerfile": False,
        "license": "none",
    },
}


def answer(answers: dict[str, object], key: str) -> object:
    """The answer baked for ``key``: given, else the template's default."""
    default = DEFAULTS[key][0] if isinstance(DEFAULTS[key], list) else DEFAULTS[key]
    return answers.get(key, default)


def test_combinations_cover_every_answer() -> None:
    """A new option or choice needs a combination: every value and store x room pair bakes."""
    for key, default in DEFAULTS.items():
        if key.startswith("_") or not isinstance(default, list | bool):
            continue
        choices = {True, False} if isinstance(default, bool) else set(default)
        assert {answer(a, key) for a in COMBINATIONS.values()} == choices, key
    pairs = {(answer(a, "session_store"), answer(a, "room_mode")) for a in COMBINATIONS.values()}
    assert len(pairs) == len(DEFAULTS["session_store"]) * len(DEFAULTS["room_mode"])


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
    "src/{pkg}/cli/__init__.py",
    "src/{pkg}/simulation/__init__.py",
    "src/{pkg}/testing/__init__.py",
    "tests/conftest.py",
    "tests/test_assistant.py",
]


@pytest.mark.parametrize("answers", COMBINATIONS.values(), ids=COMBINATIONS.keys())
def test_bake(tmp_path: Path, answers: dict[str, object], ruff: str) -> None:
    project = bake(tmp_path, **answers)
    pkg = project.name.replace("-", "_")
    docker, store = answer(answers, "include_dockerfile"), answer(answers, "session_store")

    for rel in ALWAYS:
        assert (project / rel.format(pkg=pkg)).is_file(), f"{rel} missing"
    assert (project / "Dockerfile").exists() is docker
    assert (project / ".dockerignore").exists() is docker
    assert (project / "compose.yaml").exists() is (store == "redis")
    assert (project / "LICENSE").exists() is (answer(answers, "license") != "none")

    for path in project.rglob("*"):
        if path.is_file() and path.suffix != ".wav":  # the recorded apology is binary
            text = path.read_text(encoding="utf-8")
            assert not LEFTOVER.search(text), f"template syntax left in {path.relative_to(project)}"

    ignored = (project / ".gitignore").read_text().splitlines()
    assert ".env.*" in ignored and "!.env.example" in ignored  # .env.local never committed

    env = (project / ".env.example").read_text()
    assert f"MODEL_STACK={answer(answers, 'model_stack')}" in env
    assert ("\nREDIS_URL=" in env) is (store == "redis")
    assert (project / ".python-version").read_text().strip() == answer(answers, "python_version")

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
