"""The hooks are plain modules: test their logic without baking."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

HOOKS = Path(__file__).resolve().parents[1] / "hooks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pre = load("pre_gen_project")
post = load("post_gen_project")

GOOD = {
    "project_name": "Voice Agent",
    "project_slug": "voice-agent",
    "package_name": "voice_agent",
    "agent_name": "",
    "model_stack": "gemini-live",
    "session_store": "sqlite",
    "room_mode": "one-to-one",
    "python_version": "3.11",
    "include_dockerfile": True,
}


def test_defaults_are_valid() -> None:
    assert pre.validate(GOOD) == []


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("project_slug", "Voice Agent", "project_slug"),
        ("project_slug", "9lives", "project_slug"),
        ("project_slug", "a--b", "project_slug"),
        ("project_slug", "a" * 41, "project_slug"),
        ("package_name", "a" * 41, "package_name"),
        ("project_name", "x" * 51, "project_name"),
        ("project_name", "  ", "project_name"),
        ("package_name", "voice-agent", "not a Python identifier"),
        ("package_name", "class", "not a Python identifier"),
        ("package_name", "livekit", "shadow"),
        ("agent_name", "my agent", "agent_name"),
        ("agent_name", "x" * 65, "agent_name"),
        ("model_stack", "claude-live", "model_stack"),
        ("session_store", "postgres", "session_store"),
        ("room_mode", "broadcast", "room_mode"),
        ("python_version", "3.10", "python_version"),
        ("include_dockerfile", "yes", "include_dockerfile"),
    ],
)
def test_bad_answers_are_named(key: str, value: object, says: str) -> None:
    problems = pre.validate({**GOOD, key: value})
    assert len(problems) == 1
    assert says in problems[0]
    assert "\n" not in problems[0]


def test_main_prints_one_line_per_problem_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code = pre.main({**GOOD, "package_name": "1x", "model_stack": "nope"})
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 2
    assert all(line.startswith("error: ") for line in err)


def test_post_gen_prunes_docker_files_and_writes_answers(tmp_path: Path) -> None:
    for name in ("Dockerfile", ".dockerignore", "compose.yaml", "agent.py"):
        (tmp_path / name).write_text("x")
    answers = {**GOOD, "include_dockerfile": False, "_output_dir": "/home/me", "_template": "gh:x"}
    post.finish(tmp_path, answers)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cruft.json", "agent.py"]
    state = json.loads((tmp_path / ".cruft.json").read_text())
    saved = state["context"]["cookiecutter"]
    assert saved["include_dockerfile"] is False
    assert "_output_dir" not in saved
    assert ".env.local" in state["skip"] and "uv.lock" in state["skip"]
    # no template directory to read a commit from: cruft is told, and so is the reader
    assert state["commit"] is None
    assert "not found in a git checkout" in state["note"]


def git_template(repo: Path, subdir: str = ".") -> Path:
    """A git repository with a committed cookiecutter.json in ``subdir``; that folder."""
    template = repo / subdir
    template.mkdir(parents=True, exist_ok=True)
    (template / "cookiecutter.json").write_text("{}")
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], [*ident, "commit", "-q", "-m", "v1"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    return template


def head(repo: Path) -> str:
    cmd = ["git", "-C", str(repo), "rev-parse", "HEAD"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_cruft_file_names_a_local_template_and_its_commit(tmp_path: Path) -> None:
    template = git_template(tmp_path / "tpl")
    post.write_answers(tmp_path, {**GOOD, "_template": "../tpl", "_repo_dir": str(template)})
    state = json.loads((tmp_path / ".cruft.json").read_text())
    assert state["template"] == str(template.resolve())
    assert state["commit"] == head(template)
    assert state["directory"] is None and "note" not in state
    assert state["context"]["cookiecutter"]["_template"] == state["template"]
    assert "_repo_dir" not in state["context"]["cookiecutter"]


def test_cruft_file_names_a_remote_template_by_url_and_its_folder(tmp_path: Path) -> None:
    repo = tmp_path / "cache" / "agent-template"  # where cookiecutter cloned it
    template = git_template(repo, "templates/voice")
    answers = {**GOOD, "_template": "gh:acme/agent-template", "_repo_dir": str(template)}
    post.write_answers(tmp_path, {**answers, "_checkout": "v2"})
    state = json.loads((tmp_path / ".cruft.json").read_text())
    assert state["template"] == "https://github.com/acme/agent-template.git"
    assert state["commit"] == head(repo)
    assert state["checkout"] == "v2"
    assert state["directory"] == "templates/voice"


def test_a_template_not_committed_to_its_repository_has_no_commit(tmp_path: Path) -> None:
    git_template(tmp_path)
    copied = tmp_path / "downloads" / "tpl"  # inside a git repository, but not its template
    copied.mkdir(parents=True)
    (copied / "cookiecutter.json").write_text("{}")
    post.write_answers(tmp_path, {**GOOD, "_template": str(copied), "_repo_dir": str(copied)})
    state = json.loads((tmp_path / ".cruft.json").read_text())
    assert state["commit"] is None
    assert str(copied) in state["note"]


def test_cruft_writes_its_own_file_when_it_renders(tmp_path: Path) -> None:
    # cruft create and cruft update render with _commit and write .cruft.json themselves
    assert post.write_answers(tmp_path, {**GOOD, "_template": "/t", "_commit": "abc"}) is None
    assert not (tmp_path / ".cruft.json").exists()


def test_post_gen_keeps_compose_for_redis(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text("x")
    post.finish(tmp_path, {**GOOD, "session_store": "redis"})
    assert (tmp_path / "compose.yaml").exists()


def test_post_gen_removes_tool_caches(tmp_path: Path) -> None:
    cache = tmp_path / "src" / "pkg" / "__pycache__"
    cache.mkdir(parents=True)
    (cache / "mod.cpython-311.pyc").write_bytes(b"\x8b")
    post.finish(tmp_path, GOOD)
    assert not cache.exists()
    assert (tmp_path / "src" / "pkg").is_dir()
