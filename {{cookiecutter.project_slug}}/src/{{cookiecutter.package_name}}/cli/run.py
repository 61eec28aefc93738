"""The commands that run the worker: `dev`, `start`, `console` and `download-files`.

Each validates the settings, checks the services they point at (``preflight``: one line per
problem, before anything registers), then hands over to livekit's supported entry point
(`python -m livekit.agents`). Only livekit imports ``worker.py``, in this process and in every
job process: the commands find its file and pass it on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import LogLevel, fail, fail_all, log_level_problem, settings_or_exit

if TYPE_CHECKING:
    from ..settings import Settings
    from ._checks import CheckResult


def dev(log_level: LogLevel = "DEBUG") -> None:
    """Run the worker against LIVEKIT_URL with readable logs (development)."""
    _run_worker(dev=True, log_level=log_level, extra=[])


def start(
    log_level: LogLevel = "INFO",
    log_format: Annotated[
        str, typer.Option(help="json (default, for log collectors) or colored.")
    ] = "json",
) -> None:
    """Run the worker in production mode (JSON logs, graceful drain)."""
    if log_format not in ("json", "colored"):
        raise fail(f"--log-format must be json or colored, not {log_format!r}", 2)
    _run_worker(dev=False, log_level=log_level, extra=["--log-format", log_format])


def console(
    connect_addr: Annotated[
        str | None,
        typer.Option(help="host:port of the LiveKit CLI's console server (set by `lk`)."),
    ] = None,
    record: Annotated[
        bool, typer.Option(help="Record the session to console-recordings/.")
    ] = False,
) -> None:
    """Talk to the agent in your terminal, through the LiveKit CLI (`lk agent console`)."""
    if not connect_addr:
        raise fail(
            "console is driven by the LiveKit CLI: run `lk agent console` in this folder "
            "(it starts this command with --connect-addr); for an offline text run use "
            "`python agent.py simulate`",
            2,
        )
    settings_or_exit(models=True)
    argv = ["console", _worker_file(), "--connect-addr", connect_addr]
    if record:
        argv.append("--record")
    raise typer.Exit(run_livekit(argv))


def download_files() -> None:
    """Download the model files the plugins need (run once, e.g. in the Docker build)."""
    settings_or_exit()  # like every command: a bad setting is one line, found now
    raise typer.Exit(run_livekit(["download-files"]))


def _run_worker(*, dev: bool, log_level: str, extra: list[str]) -> None:
    fail_all(log_level_problem(log_level))
    settings = settings_or_exit(livekit=True, models=True)
    if settings.metrics_port is not None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # before prometheus_client is imported, so this process's metrics are summed too
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lkagent-metrics-")
    results = asyncio.run(preflight(settings, dev=dev))
    for result in results:
        if result.skipped:  # follows from a failure shown on its own line
            continue
        if result.ok:  # a warning: it starts anyway
            typer.secho(f"warning: {result.name}: {result.detail}", fg="yellow", err=True)
            continue
        typer.secho(f"error: {result.name}: {result.detail}", fg=typer.colors.RED, err=True)
        if result.fix:
            typer.echo(f"  fix: {result.fix}", err=True)
    if not all(result.ok for result in results):
        raise typer.Exit(1)
    argv = ["start", _worker_file(), "--log-level", log_level.upper(), *extra]
    if dev:
        argv.append("--dev")
    raise typer.Exit(run_livekit(argv))


async def preflight(settings: Settings, *, dev: bool = False) -> list[CheckResult]:
    """The checks a worker must pass before it registers: the failed ones, and the warnings."""
    from ._checks import (
        check_metrics_port,
        check_redis,
        check_session_db,
        check_worker_port,
        probe_livekit,
    )
    from ._model_keys import check_model_keys

    probe, keys, redis = await asyncio.gather(
        probe_livekit(settings), check_model_keys(settings), check_redis(settings)
    )
    results = [
        check_worker_port(settings, dev=dev),
        check_metrics_port(settings),
        check_session_db(settings),
        redis,
        probe.server,
        probe.keys,
        *keys,
    ]
    return [r for r in results if not r.ok or r.warning]


def _worker_file() -> str:
    # found, not imported: livekit imports it in the worker (and every job process)
    spec = importlib.util.find_spec("..worker", __package__)
    assert spec is not None and spec.origin is not None
    return spec.origin


def run_livekit(argv: list[str]) -> int:
    """Run livekit's entry point in this process; non-zero if the worker failed."""
    from livekit.agents.__main__ import main as livekit_main

    failure = _WorkerFailureWatch()
    logging.getLogger("livekit.agents").addHandler(failure)
    try:
        code = livekit_main(argv)
    finally:
        logging.getLogger("livekit.agents").removeHandler(failure)
    # livekit logs "worker failed" and still returns 0 after its connection retries run out
    return 1 if failure.failed else code


class _WorkerFailureWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "worker failed":
            self.failed = True
