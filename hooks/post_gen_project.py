"""Prune files the chosen options do not use and record the answers.

Cookiecutter renders this file with the answers and runs it inside the new project.
Everything but the rendered literal at the bottom is plain Python, so tests import it
and call ``finish`` on a directory of their own.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

# Files that exist only for some answers: (path, keep it when this holds).
OPTIONAL_FILES = (
    ("Dockerfile", lambda a: a["include_dockerfile"]),
    (".dockerignore", lambda a: a["include_dockerfile"]),
    ("compose.yaml", lambda a: a["session_store"] == "redis"),
)

# Answers that only say where cookiecutter ran; they would leak local paths.
MACHINE_LOCAL_KEYS = ("_output_dir", "_repo_dir", "_checkout")

ANSWERS_FILE = ".cookiecutter.json"


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
CACHE_DIRS = ("__pycache__", ".pytest_cache", ".ruff_cache")


def remove_caches(project: Path) -> None:
    """Remove tool caches copied from a working copy of the template."""
    for name in CACHE_DIRS:
        for path in sorted(project.rglob(name), reverse=True):
            shutil.rmtree(path, ignore_errors=True)


def write_answers(project: Path, answers: dict[str, object]) -> Path:
    """Write the answers file that lets tools like cruft update the project later."""
    kept = {k: v for k, v in answers.items() if k not in MACHINE_LOCAL_KEYS}
    path = project / ANSWERS_FILE
    path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def finish(project: Path, answers: dict[str, object]) -> None:
    remove_caches(project)
    prune(project, answers)
    write_answers(project, answers)


if __name__ == "__main__":
    finish(Path.cwd(), json.loads({{cookiecutter | jsonify | tojson}}))  # noqa: F821
    sys.exit(0)
