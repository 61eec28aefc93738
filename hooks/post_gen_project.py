"""Prune files the chosen options do not use and record the answers for cruft.

Cookiecutter renders this file with the answers and runs it inside the new project.
Everything but the rendered literal at the bottom is plain Python, so tests import it
and call ``finish`` on a directory of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from cookiecutter.config import BUILTIN_ABBREVIATIONS, get_user_config
from cookiecutter.exceptions import CookiecutterException
from cookiecutter.repository import expand_abbreviations, is_repo_url

# Files that exist only for some answers: (path, keep it when this holds).
OPTIONAL_FILES = (
    ("Dockerfile", lambda a: a["include_dockerfile"]),
    (".dockerignore", lambda a: a["include_dockerfile"]),
    ("compose.yaml", lambda a: a["session_store"] == "redis"),
    # answers recorded before the option existed got the MIT file
    ("LICENSE", lambda a: a.get("license", "MIT") != "none"),
)

# Answers that only say where cookiecutter ran; they would leak local paths.
MACHINE_LOCAL_KEYS = ("_output_dir", "_repo_dir", "_checkout")

# cruft reads the template's location, its commit and the answers from this file.
CRUFT_FILE = ".cruft.json"
# Paths a template update never writes: the project's secrets, data and lock file.
CRUFT_SKIP = (".env", ".env.local", ".data/", "uv.lock")


def prune(project: Path, answers: dict[str, object]) -> list[str]:
    """Remove the files the answers do not use; return their paths."""
    removed = []
    for rel, keep in OPTIONAL_FILES:
        path = project / rel
        if keep(answers) or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(rel)
    return removed


# Caches a developer's tools may have left in the template folder; never part of a project.
CACHE_DIRS = ("__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache")


def remove_caches(project: Path) -> None:
    """Remove tool caches copied from a working copy of the template."""
    for name in CACHE_DIRS:
        for path in sorted(project.rglob(name), reverse=True):
            shutil.rmtree(path, ignore_errors=True)


class TemplateSource(NamedTuple):
    """Where cruft finds the template again, and the commit a project was generated from."""

    location: str  # a git URL or an absolute path: what cruft clones
    commit: str | None  # None when the template was not committed to git
    directory: str | None = None  # the template's folder inside its repository
    note: str | None = None  # why commit is None, and what to do


def template_dir(repo_dir: str) -> Path | None:
    """The absolute template directory cookiecutter generated from, or None when not found."""
    if not repo_dir:
        return None
    path = Path(repo_dir)
    if path.is_absolute():
        candidates = [path]
    else:
        # A relative template ("." in the README) is relative to where cookiecutter started,
        # and this hook runs elsewhere (in the project). Cookiecutter runs hooks from inside
        # the template directory, so its process (our parent) works there: Linux shows that
        # in /proc. Elsewhere the shell's $PWD is where cookiecutter started.
        candidates = [Path(f"/proc/{os.getppid()}/cwd")]
        if os.environ.get("PWD"):
            candidates.append(Path(os.environ["PWD"]) / path)
    for candidate in candidates:
        if (candidate / "cookiecutter.json").is_file():
            return candidate.resolve()
    return None


def git_commit(directory: Path) -> tuple[Path, str] | None:
    """The repository root and HEAD commit when the template in ``directory`` is committed."""
    try:
        lines = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        # a template copied into some other repository is not that repository's template
        subprocess.run(
            ["git", "-C", str(directory), "cat-file", "-e", "HEAD:./cookiecutter.json"],
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(lines[0]), lines[1]


def abbreviations() -> dict[str, str]:
    """The template abbreviations cookiecutter expanded (gh:, gl:, bb: and the user's own)."""
    try:
        return get_user_config()["abbreviations"]
    except CookiecutterException:
        return BUILTIN_ABBREVIATIONS


def locate_template(answers: dict[str, object]) -> TemplateSource:
    """Find the template this project came from, as cruft needs it to check and update."""
    typed = str(answers.get("_template", ""))
    url = expand_abbreviations(typed, abbreviations())
    local = template_dir(str(answers.get("_repo_dir", "")))
    found = git_commit(local) if local else None
    if local is None or found is None:
        where = str(local or typed)
        return TemplateSource(
            location=where,
            commit=None,
            note=(
                f"The template ({where}) was not found in a git checkout when this project was "
                "generated, so cruft cannot check or update it: set template to the "
                "template's git URL and commit to the template commit it was generated from."
            ),
        )
    root, commit = found
    directory = local.relative_to(root.resolve()).as_posix()
    return TemplateSource(
        # a remote template was cloned into a cache; cruft clones the URL itself
        location=url if is_repo_url(url) else str(root),
        commit=commit,
        directory=None if directory == "." else directory,
    )


def write_answers(project: Path, answers: dict[str, object]) -> Path | None:
    """Write ``.cruft.json``: the template, its commit and the answers, for cruft.

    ``cruft create`` and ``cruft update`` render the template themselves (their answers carry
    ``_commit``) and write that file on their own, so then nothing is written here.
    """
    if "_commit" in answers:
        return None
    source = locate_template(answers)
    context = {k: v for k, v in answers.items() if k not in MACHINE_LOCAL_KEYS}
    context.update(_template=source.location, _commit=source.commit)
    state: dict[str, object] = {
        "template": source.location,
        "commit": source.commit,
        "checkout": answers.get("_checkout"),
        "context": {"cookiecutter": context},
        "directory": source.directory,
        "skip": list(CRUFT_SKIP),
    }
    if source.note:
        state["note"] = source.note
    path = project / CRUFT_FILE
    # cruft's own layout, so its rewrites after an update change only what changed
    text = json.dumps(state, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def finish(project: Path, answers: dict[str, object]) -> None:
    remove_caches(project)
    prune(project, answers)
    write_answers(project, answers)


if __name__ == "__main__":
    finish(Path.cwd(), json.loads({{cookiecutter | jsonify | tojson}}))  # noqa: F821
    sys.exit(0)
