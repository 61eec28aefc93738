"""The command line behind `python agent.py ...` and the project's console script.

`dev`, `start`, `console` and `download-files` validate the settings, then hand over to
livekit's supported entry point (`python -m livekit.agents`). `doctor`, `token` and
`simulate` are this project's own. A problem the user can fix (a bad flag, a bad setting, a
service down) is one line on stderr and a non-zero exit, never a usage box or a traceback.
Importing this module (and `--help`) loads no livekit code: each command imports what it runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .session_commands import sessions_app, transcript
from .settings import Settings, SettingsError, load_settings


class _OneLineErrors(TyperGroup):
    """Bad flags, unknown commands and invalid settings are one line each and exit 2."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        quiet_dev_key_warning()
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except SettingsError as exc:  # read by a module a command imports
            print_settings_problems(exc.problems)
            code = 2
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            code = 1
        except Exception as exc:
            if not _is_click_error(exc):
                raise
            if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help
                typer.secho(f"error: {_usage_line(exc)}", fg=typer.colors.RED, err=True)
            code = exc.exit_code  # type: ignore[attr-defined]
        else:
            code = result if isinstance(result, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _is_click_error(exc: Exception) -> bool:
    # typer >= 0.16 vendors click, older ones use it: recognise either by its shape
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def _usage_line(exc: Exception) -> str:
    message = exc.format_message().rstrip(".")  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None)
    return f"{message} (see `{command} --help`)" if command else message


def quiet_dev_key_warning() -> None:
    """Silence PyJWT's InsecureKeyLengthWarning, printed for every token signed with a secret
    under 32 bytes (as `livekit-server --dev`'s `secret` is): `token`, `dev`, `start` and
    `doctor` say it once instead (checks.SHORT_SECRET_NOTE)."""
    warnings.filterwarnings(
        "ignore", message=r"The HMAC key is \d+ bytes long", category=UserWarning
    )


app = typer.Typer(
    cls=_OneLineErrors,
    help="{{ cookiecutter.project_name }}: a LiveKit voice agent worker.",
    no_args_is_help=True,
    add_completion=False,
    # tracebacks with locals would print keys and tokens
    pretty_exceptions_show_locals=False,
)

# the scenario names, without importing livekit before a command needs it
SCENARIO_NAMES = (
    "basic", "refresh", "restart", "multi", "gemini-faults", "redis-outage", "crash",
)  # fmt: skip

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LogLevel = Annotated[
    str,
    typer.Option("--log-level", envvar="LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error line and return the exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def fail_all(problems: Iterable[str], code: int = 2) -> None:
    """Print one error line per problem and exit ``code``; nothing when there are none."""
    problems = list(problems)
    for problem in problems:
        typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(code)


def log_level_problem(value: str) -> list[str]:
    """The problem with a --log-level (or LOG_LEVEL) value, if any."""
    if value.upper() in LOG_LEVELS:
        return []
    return [f"--log-level (or LOG_LEVEL) must be one of {', '.join(LOG_LEVELS)}, not {value!r}"]


def print_settings_problems(problems: Iterable[str]) -> None:
    """One line per settings problem, then where to look."""
    for problem in problems:
        typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    typer.echo("See .env.example for every setting; `doctor` checks them all.", err=True)


def settings_or_exit(*, livekit: bool = False, models: bool = False) -> Settings:
    """Load the settings and check what the command needs; exit 2 with one line per problem.

    Also keys this process's identity hash (logs, events) from them.
    """
    from .log import configure_identity_hash

    try:
        settings = load_settings().require(livekit=livekit, models=models)
    except SettingsError as exc:
        print_settings_problems(exc.problems)
        raise typer.Exit(2) from None
    configure_identity_hash(settings)
    return settings


def load_server() -> Any:
    """The worker's AgentServer, `agent.server`, loaded on first use (it imports livekit and
    the model plugins). Invalid settings are one line each and exit 2, as in every command."""
    quiet_dev_key_warning()
    try:
        from .worker import server
    except SettingsError as exc:
        print_settings_problems(exc.problems)
        raise SystemExit(2) from None
    return server


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


def _worker_file() -> str:
    # found, not imported: livekit imports it in the worker (and every job process)
    import importlib.util

    spec = importlib.util.find_spec(f"{__package__}.worker")
    assert spec is not None and spec.origin is not None
    return spec.origin


def _run_worker(*, dev: bool, log_level: str, extra: list[str]) -> None:
    fail_all(log_level_problem(log_level))
    settings = settings_or_exit(livekit=True, models=True)
    if settings.metrics_port is not None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # before prometheus_client is imported, so this process's metrics are summed too
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lkagent-metrics-")
    from .checks import preflight

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


@app.command()
def dev(log_level: LogLevel = "DEBUG") -> None:
    """Run the worker against LIVEKIT_URL with readable logs (development)."""
    _run_worker(dev=True, log_level=log_level, extra=[])


@app.command()
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


@app.command()
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


@app.command("download-files")
def download_files() -> None:
    """Download the model files the plugins need (run once, e.g. in the Docker build)."""
    raise typer.Exit(run_livekit(["download-files"]))


@app.command()
def doctor() -> None:
    """Check every setting and service, say how to fix what fails; exit 1 on a failure."""
    from .checks import load_settings_for_doctor, run_doctor

    settings, results, invalid = load_settings_for_doctor()
    if settings is not None:
        results += asyncio.run(run_doctor(settings, invalid))
    colours = {"OK": "green", "WARN": "yellow", "FAIL": "red", "SKIP": "bright_black"}
    for result in results:
        typer.secho(f"{result.label:<5}", fg=colours[result.label], nl=False)
        typer.echo(f" {result.name}: {result.detail}")
        if result.fix and result.label != "OK":
            typer.echo(f"      fix: {result.fix}")
    counts = {label: sum(r.label == label for r in results) for label in colours}
    typer.echo(
        f"doctor: {counts['FAIL']} failed, {counts['WARN']} warning(s), "
        f"{counts['SKIP']} skipped, {counts['OK']} ok"
    )
    raise typer.Exit(1 if counts["FAIL"] else 0)


@app.command()
def token(
    identity: Annotated[str, typer.Option(help="The participant identity the token grants.")],
    room: Annotated[str, typer.Option(help="The room to join.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    ttl_minutes: Annotated[int, typer.Option(min=1, max=24 * 60, help="Validity.")] = 60,
) -> None:
    """Mint a join token (identity set server-side) and print a link to try the agent."""
    from .checks import SHORT_SECRET_NOTE, short_secret
    from .tokens import mint_join_token, try_links

    settings = settings_or_exit(livekit=True)
    try:
        jwt = mint_join_token(
            settings, identity=identity, room=room, name=name, ttl_minutes=ttl_minutes
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    typer.echo(jwt)
    for label, link in try_links(settings, jwt):
        typer.echo(f"{label}: {link}", err=True)
    if short_secret(settings):
        typer.secho(f"note: {SHORT_SECRET_NOTE}", fg="yellow", err=True)


DEFAULT_SIMULATE_LOG = Path(".data") / "simulate.log"


@app.command()
def simulate(
    scenario: Annotated[
        str, typer.Option(help="What the scripted user does: " + ", ".join(SCENARIO_NAMES))
    ] = "basic",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the raw observations to this file.")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="memory or redis (REDIS_URL, else a local redis-server). "
            "Default: redis when REDIS_URL is set."
        ),
    ] = None,
    allow_remote_redis: Annotated[
        bool,
        typer.Option(
            help="Let simulate write its test conversations to a REDIS_URL on another host "
            "(under a key prefix of its own)."
        ),
    ] = False,
    gemini_url: Annotated[
        str | None,
        typer.Option(
            "--gemini-url",
            help="Live-protocol endpoint for Gemini scenarios (gemini-faults); "
            "default: a local Gemini Live server started for the run.",
        ),
    ] = None,
    log_level: LogLevel = "WARNING",
    log_file: Annotated[
        str,
        typer.Option(
            help="Where the logs go (JSON lines, overwritten each run); - for stderr.",
        ),
    ] = str(DEFAULT_SIMULATE_LOG),
) -> None:
    """Run the real job offline: a scripted user in a simulated room, scripted models.

    Prints the conversation as a frontend shows it on stdout (logs go to --log-file);
    exits 1 when an invariant breaks.
    """
    from .simulate_command import flag_problems, run_simulation, simulate_logs

    fail_all(flag_problems(scenario, json_path, store, gemini_url, log_level, log_file))
    settings = settings_or_exit()
    with simulate_logs(log_file, log_level.upper()):
        run_simulation(settings, scenario, json_path, store, allow_remote_redis, gemini_url)


app.add_typer(sessions_app, name="sessions")
app.command()(transcript)


def main() -> None:
    """Console-script entry point."""
    app(prog_name=Path(sys.argv[0]).name if sys.argv else None)
