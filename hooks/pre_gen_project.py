"""Reject bad cookiecutter answers before anything is written.

Cookiecutter renders this file with the answers, then runs it. Everything but the
rendered literal at the bottom is plain Python, so tests import it and call
``validate`` directly. Each problem is one line that says what to change.
"""

from __future__ import annotations

import json
import keyword
import re
import sys

MODEL_STACKS = ("gemini-live", "openai-realtime", "openai-pipeline")
SESSION_STORES = ("sqlite", "redis")
ROOM_MODES = ("one-to-one", "multi-participant")
PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
# The first is the default; "none" generates no LICENSE file.
LICENSES = ("MIT", "none")

MAX_NAME_LENGTH = 50
# The package name appears in import lines; longer ones would not fit the line length.
MAX_PACKAGE_LENGTH = 40
SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Names that would shadow a module the worker imports.
RESERVED_PACKAGES = {"livekit", "typer", "structlog", "redis", "pydantic", "agent", "test", "tests"}


def validate(answers: dict[str, object]) -> list[str]:
    """Return one message per problem in ``answers`` (empty when all is well)."""
    problems: list[str] = []
    slug = str(answers.get("project_slug", ""))
    package = str(answers.get("package_name", ""))
    agent_name = str(answers.get("agent_name", ""))

    name = str(answers.get("project_name", ""))
    if not name.strip() or len(name) > MAX_NAME_LENGTH:
        problems.append(
            f"project_name must be 1 to {MAX_NAME_LENGTH} characters (it names the project "
            "in code and docs)"
        )
    if not SLUG_RE.match(slug) or len(slug) > MAX_PACKAGE_LENGTH:
        problems.append(
            f"project_slug {slug!r} is not a valid project name: use up to {MAX_PACKAGE_LENGTH} "
            "lowercase letters, digits and single hyphens, starting with a letter "
            "(e.g. 'voice-agent')"
        )
    if not PACKAGE_RE.match(package) or keyword.iskeyword(package):
        problems.append(
            f"package_name {package!r} is not a Python identifier: use lowercase letters, digits "
            "and underscores, starting with a letter (e.g. 'voice_agent')"
        )
    elif len(package) > MAX_PACKAGE_LENGTH:
        problems.append(f"package_name must be at most {MAX_PACKAGE_LENGTH} characters")
    elif package in RESERVED_PACKAGES:
        problems.append(
            f"package_name {package!r} would shadow a module the worker imports: pick another"
        )
    if agent_name and not AGENT_NAME_RE.match(agent_name):
        problems.append(
            f"agent_name {agent_name!r} is not valid: use up to 64 letters, digits, '-' or '_', "
            "or leave it empty for automatic dispatch"
        )

    for key, allowed in (
        ("model_stack", MODEL_STACKS),
        ("session_store", SESSION_STORES),
        ("room_mode", ROOM_MODES),
        ("python_version", PYTHON_VERSIONS),
    ):
        value = answers.get(key)
        if value not in allowed:
            problems.append(f"{key} {value!r} is not supported: choose one of {', '.join(allowed)}")

    if not isinstance(answers.get("include_dockerfile"), bool):
        problems.append("include_dockerfile must be true or false (a JSON boolean)")
    # Answers recorded before the option existed mean the default, which those projects got.
    license_name = answers.get("license", LICENSES[0])
    if license_name not in LICENSES:
        problems.append(
            f"license {license_name!r} is not supported: choose one of {', '.join(LICENSES)}"
        )
    return problems


def main(answers: dict[str, object]) -> int:
    problems = validate(answers)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(json.loads({{cookiecutter | jsonify | tojson}})))  # noqa: F821
