"""cruft checks and updates a baked project against the template's next git commit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEMPLATE, run

# What a template is: its options, its hooks and the project folder.
TEMPLATE_PARTS = ("cookiecutter.json", "hooks", "{{cookiecutter.project_slug}}")
NEW_LINE = "Updated from the template with cruft."


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit as a test user, whatever the machine's git configuration says."""
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Template Tests\n\temail = tests@example.com\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(cwd: Path, *args: str) -> str:
    return run(["git", *args], cwd=cwd).stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def copy_template(dest: Path) -> Path:
    """A copy of the template as it is in the working tree, committed or not."""
    dest.mkdir()
    for part in TEMPLATE_PARTS:
        source = TEMPLATE / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / part)
    return dest


def cruft(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cruft", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cruft_updates_a_project_to_the_next_template_commit(tmp_path: Path, git_env: None) -> None:
    template = copy_template(tmp_path / "template")
    git(template, "init", "-q")
    first = commit_all(template, "template v1")

    # as the README does: a relative template path, from inside the template
    out = tmp_path / "out"
    bake = [sys.executable, "-m", "cookiecutter", ".", "--no-input", "-f", "-o", str(out)]
    run([*bake, "session_store=redis", "include_dockerfile=false"], cwd=template)
    project = out / "voice-agent"
    state = json.loads((project / ".cruft.json").read_text())
    assert state["template"] == str(template.resolve())
    assert state["commit"] == first
    assert state["context"]["cookiecutter"]["session_store"] == "redis"
    assert not (project / ".cookiecutter.json").exists()

    # the stored answers render the project it was baked as, file for file
    same = cruft(project, "diff", "--exit-code")
    assert same.returncode == 0 and not same.stdout.strip(), same.stdout + same.stderr

    git(project, "init", "-q")
    # the project's own change, which the update must keep
    readme = project / "README.md"
    readme.write_text(readme.read_text().replace("# Voice Agent", "# Front desk", 1))
    commit_all(project, "generated, then renamed")

    passed = cruft(project, "check")
    assert passed.returncode == 0, passed.stdout + passed.stderr

    template_readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    template_readme.write_text(template_readme.read_text() + f"\n{NEW_LINE}\n")
    second = commit_all(template, "template v2: one more README line")

    outdated = cruft(project, "check")
    assert outdated.returncode == 1
    assert "out of date" in outdated.stdout

    updated = cruft(project, "update", "-y")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    text = readme.read_text()
    assert NEW_LINE in text
    assert text.startswith("# Front desk")
    assert not list(project.rglob("*.rej"))
    # the answers still hold: no Dockerfile comes back, compose.yaml stays
    assert not (project / "Dockerfile").exists()
    assert (project / "compose.yaml").is_file()
    assert json.loads((project / ".cruft.json").read_text())["commit"] == second
    changed = git(project, "diff", "--name-only", "HEAD").splitlines()
    assert sorted(changed) == [".cruft.json", "README.md"]

    again = cruft(project, "check")
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_template_outside_git_is_named_in_the_cruft_file(tmp_path: Path) -> None:
    template = copy_template(tmp_path / "template")
    out = tmp_path / "out"
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "cookiecutter", str(template), "--no-input", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    project = out / "voice-agent"
    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] is None
    assert "not found in a git checkout" in state["note"]

    check = cruft(project, "check")
    assert check.returncode != 0
    assert "Unable to initialize the cookiecutter" in check.stderr
