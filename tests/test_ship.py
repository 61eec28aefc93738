"""What a generated project ships with: its Dockerfile, its CI workflow and its LICENSE.

No container engine runs here, so the Dockerfile is replayed step by step
(``dockerfile_replay``): as root until its USER step and as that unprivileged uid after it, in
a directory per stage. The CI workflow's commands are the README's, and they run in a bake.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import TEMPLATE, bake, run
from dockerfile_replay import DockerIgnore, Replay, ReplayError, StepFailed, parse

# The README's commands, in the order CI runs them.
CI_COMMANDS = [
    "uv sync --locked",
    "uv run ruff check .",
    "uv run ruff format --check .",
    "uv run mypy",
    "uv run pytest",
]
NOBODY = 65534


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(name, TEMPLATE / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def can_switch_users() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


needs_root = pytest.mark.skipif(
    not can_switch_users(), reason="replaying USER steps needs root and setpriv"
)


def as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(prefix + argv, capture_output=True, text=True)


def python_for_everyone(version: str) -> str | None:
    """An interpreter of ``version`` that an unprivileged user can run (the image's Python)."""
    for directory in ("/usr/local/bin", "/usr/bin"):
        path = f"{directory}/python{version}"
        if os.path.exists(path) and as_nobody([path, "-c", "pass"]).returncode == 0:
            return path
    return None


@pytest.fixture
def image_base() -> Iterator[Path]:
    """A directory for the stages' roots that every uid can traverse (tmp_path is root's)."""
    base = Path(tempfile.mkdtemp(prefix="dockerfile-replay-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def base_env(**extra: str) -> dict[str, str]:
    """The base images' environment: this machine's tools, root's caches."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    # how this machine reaches the package index: uv's settings, proxies, certificates
    network = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR")
    for key, value in os.environ.items():
        if (key.startswith("UV_") and key != "UV_PYTHON") or key.upper() in network:
            env[key] = value
    return {**env, **extra}


def stages(dockerfile: Path) -> list[list]:
    """The Dockerfile's instructions, one list per FROM."""
    result: list[list] = []
    for ins in parse(dockerfile.read_text()):
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


# --- LICENSE ----------------------------------------------------------------------------------


def test_license_is_mit_by_default(tmp_path: Path) -> None:
    project = bake(tmp_path, project_name="Front Desk")
    text = (project / "LICENSE").read_text()
    year = datetime.datetime.now(datetime.UTC).year
    assert text.startswith("MIT License\n")
    assert f"Copyright (c) {year} The Front Desk authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_license_none_generates_no_license_file(tmp_path: Path) -> None:
    project = bake(tmp_path, license="none")
    assert not (project / "LICENSE").exists()
    assert (project / "README.md").is_file()


def test_unknown_license_is_one_line_from_pre_gen_hook() -> None:
    # cookiecutter refuses an unknown choice itself; answers replayed from a file reach the hook
    problems = load_hook("pre_gen_project").validate({"license": "GPL-3.0"})
    assert [p for p in problems if p.startswith("license")] == [
        "license 'GPL-3.0' is not supported: choose one of MIT, none"
    ]


def test_post_gen_hook_prunes_license_only_for_none(tmp_path: Path) -> None:
    post = load_hook("post_gen_project")
    answers = {"include_dockerfile": True, "session_store": "sqlite"}
    for license_name, kept in (("MIT", True), ("none", False)):
        (tmp_path / "LICENSE").write_text("x")
        post.prune(tmp_path, {**answers, "license": license_name})
        assert (tmp_path / "LICENSE").exists() is kept


# --- CI workflow ------------------------------------------------------------------------------


@pytest.mark.parametrize("docker", [True, False], ids=["docker", "nodocker"])
def test_ci_workflow_runs_the_readme_commands(tmp_path: Path, docker: bool) -> None:
    project = bake(tmp_path, include_dockerfile=docker)
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"push", "pull_request"}

    steps = workflow["jobs"]["test"]["steps"]
    uses = [s["uses"].split("@")[0] for s in steps if "uses" in s]
    assert uses == ["actions/checkout", "astral-sh/setup-uv"]
    assert [s["run"] for s in steps if "run" in s] == CI_COMMANDS

    assert ("image" in workflow["jobs"]) is docker
    if docker:
        image_runs = [s["run"] for s in workflow["jobs"]["image"]["steps"] if "run" in s]
        assert image_runs == ["docker build --tag voice-agent ."]

    readme = (project / "README.md").read_text()
    for command in CI_COMMANDS:
        assert f"`{command}`" in readme, f"the README does not show {command!r}"
    assert "Commit `uv.lock`" in readme


def test_gitignore_lets_uv_lock_be_committed(tmp_path: Path) -> None:
    project = bake(tmp_path)
    run(["git", "init", "-q"], cwd=project)
    check = ["git", "check-ignore", "-q"]
    assert subprocess.run([*check, ".env.local"], cwd=project).returncode == 0  # the check works
    assert subprocess.run([*check, "uv.lock"], cwd=project).returncode == 1


@pytest.mark.deep
def test_ci_commands_pass_in_a_bake(default_bake: Path) -> None:
    """The workflow's `run:` commands, in order, as GitHub runs them, with a committed lock:
    the default answers' deep run (test_deep.py runs the other combination and the benchmarks
    in this bake)."""
    project = default_bake
    job = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())["jobs"]["test"]
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    for step in job["steps"]:
        if "run" in step:
            proc = subprocess.run(
                ["bash", "-e", "-c", step["run"]],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            assert proc.returncode == 0, (
                f"{step['run']}\n{proc.stdout[-6000:]}{proc.stderr[-3000:]}"
            )
    # the README's first command: simulate on the embedded defaults
    run(["uv", "run", "--no-sync", "python", "agent.py", "simulate"], cwd=project)


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_builds_locked_and_runs_unprivileged(tmp_path: Path) -> None:
    project = bake(tmp_path)
    build, runtime = stages(project / "Dockerfile")
    build_runs = [i.args for i in build if i.keyword == "RUN"]
    assert any("uv sync --locked --no-dev" in r for r in build_runs)

    keywords = [i.keyword for i in runtime]
    user_at = keywords.index("USER")
    assert runtime[user_at].args not in ("root", "0")
    download = next(n for n, i in enumerate(runtime) if "download-files" in i.args)
    assert user_at < download < keywords.index("CMD")
    # the runtime image has no uv: nothing there may call it
    assert not [i for i in runtime if "uv " in i.args or '"uv"' in i.args]

    ignore = DockerIgnore(project)
    for kept in ("uv.lock", "pyproject.toml", "README.md", "agent.py", "src/voice_agent/worker.py"):
        assert not ignore.excluded(kept), f"{kept} must reach the image"
    for dropped in (".venv/bin/python", ".env.local", ".data/sessions.sqlite3", ".git/HEAD"):
        assert ignore.excluded(dropped), f"{dropped} must stay out of the image"
    assert ignore.excluded("src/voice_agent/__pycache__/worker.cpython-311.pyc")
    assert not ignore.excluded(".env.example")


def test_docker_build_stops_clearly_without_uv_lock(tmp_path: Path, image_base: Path) -> None:
    project = bake(tmp_path)
    assert not (project / "uv.lock").exists()
    replay = Replay(project / "Dockerfile", project, image_base, base_env())
    with pytest.raises(StepFailed) as failed:
        replay.run()
    assert "error: uv.lock is missing: run 'uv lock' and commit uv.lock" in failed.value.output
    assert not (replay.stages["build"].root / "app/.venv").exists()


@needs_root
def test_replay_refuses_a_user_step_that_writes_outside_its_own(
    tmp_path: Path, image_base: Path
) -> None:
    """The replay enforces the image's permissions, or it could prove nothing."""
    (tmp_path / "Dockerfile").write_text(
        "FROM debian AS runtime\n"
        "ARG UID=10001\n"
        'RUN useradd --create-home --uid "${UID}" appuser\n'
        "WORKDIR /app\n"
        "RUN mkdir .data && chown appuser:appuser .data\n"
        "USER appuser\n"
        "RUN touch .data/ok /home/appuser/ok\n"
        "RUN touch written-by-appuser\n"
    )
    replay = Replay(tmp_path / "Dockerfile", tmp_path, image_base, base_env())
    with pytest.raises(StepFailed) as failed:
        replay.run()
    assert "line 8" in str(failed.value)
    assert "Permission denied" in failed.value.output
    stage = replay.stages["runtime"]
    assert (stage.root / "app/.data/ok").stat().st_uid == 10001
    assert (stage.root / "home/appuser/ok").exists()


@pytest.mark.deep
@needs_root
def test_dockerfile_replays_as_its_unprivileged_user(tmp_path: Path, image_base: Path) -> None:
    project = bake(tmp_path)
    python = python_for_everyone("3.11")
    if python is None:
        pytest.skip("no Python 3.11 that an unprivileged user can run (/usr/bin, /usr/local/bin)")
    run(["uv", "lock", "--quiet"], cwd=project)  # what the README says to commit

    replay = Replay(project / "Dockerfile", project, image_base, base_env(UV_PYTHON=python))
    try:
        image = replay.run()
    except StepFailed as exc:
        pytest.fail(f"{exc}\n{exc.output[-6000:]}")
    assert image.name == "runtime"
    assert image.user.name == "appuser" and image.user.uid not in (0, NOBODY)

    downloads = next(out for ins, out in image.outputs if "download-files" in ins.args)
    assert "finished downloading files for livekit.plugins.silero" in downloads

    # the worker can change nothing under /app but its session directory
    app = image.root / "app"
    for directory, dirs, files in os.walk(app):
        if Path(directory) == app:
            dirs.remove(".data")
        for name in dirs + files:
            assert (Path(directory) / name).lstat().st_uid == 0, f"{name} is not root's"
    assert (app / ".data").stat().st_uid == image.user.uid

    def as_worker(*argv: str) -> subprocess.CompletedProcess[str]:
        return replay.execute(image, list(argv), timeout=300)

    # the image's command gets as far as the settings: one line, no traceback
    started = as_worker(*image.cmd)
    assert started.returncode == 2, started.stdout
    assert "LIVEKIT_URL" in started.stdout and "Traceback" not in started.stdout
    # the job code runs offline as the worker, without the dev dependencies
    simulated = as_worker("python", "agent.py", "simulate")
    assert simulated.returncode == 0, simulated.stdout[-4000:]
    assert "kept every invariant" in simulated.stdout
    no_dev = as_worker("python", "-c", "import pytest")
    assert "No module named 'pytest'" in no_dev.stdout


def test_replay_rejects_what_it_cannot_reproduce(tmp_path: Path, image_base: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM debian\nHEALTHCHECK CMD true\n")
    with pytest.raises(ReplayError, match="does not support HEALTHCHECK"):
        Replay(tmp_path / "Dockerfile", tmp_path, image_base, base_env()).run()
