"""`doctor`: every setting and every service it points at, one line each, with the fix.

Unlike the other commands, an invalid setting does not stop it: the variable is reported
(FAIL), set back to its default so the other checks still run, and the checks that need it
are skipped. The checks themselves are in ``_checks`` and ``_model_keys``; `dev` and `start`
run the same ones before a worker registers (``run.preflight``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

import typer

from ._checks import (
    LIVEKIT_KEYS,
    LIVEKIT_SERVER,
    REDIS,
    ROOMS,
    CheckResult,
    LiveKitProbe,
    check_metrics_port,
    check_plugins,
    check_redis,
    check_rooms_outlive_retention,
    check_session_db,
    check_worker_port,
    probe_livekit,
    skip,
)

if TYPE_CHECKING:
    from ..settings import Settings

COLOURS = {"OK": "green", "WARN": "yellow", "FAIL": "red", "SKIP": "bright_black"}


def doctor() -> None:
    """Check every setting and service, say how to fix what fails; exit 1 on a failure."""
    settings, results, invalid = load_settings_for_doctor()
    if settings is not None:
        results += asyncio.run(run_doctor(settings, invalid))
    for result in results:
        typer.secho(f"{result.label:<5}", fg=COLOURS[result.label], nl=False)
        typer.echo(f" {result.name}: {result.detail}")
        if result.fix and result.label != "OK":
            typer.echo(f"      fix: {result.fix}")
    counts = {label: sum(r.label == label for r in results) for label in COLOURS}
    typer.echo(
        f"doctor: {counts['FAIL']} failed, {counts['WARN']} warning(s), "
        f"{counts['SKIP']} skipped, {counts['OK']} ok"
    )
    raise typer.Exit(1 if counts["FAIL"] else 0)


def load_settings_for_doctor() -> tuple[Settings | None, list[CheckResult], set[str]]:
    """The settings, with every invalid variable reported and set back to its default so the
    other checks still run; also the invalid variables (checks that need one are skipped)."""
    from ..settings import Settings, SettingsError, load_settings

    results: list[CheckResult] = []
    invalid: set[str] = set()
    for _ in range(len(Settings.model_fields)):
        defaults = {name: Settings.model_fields[name].default for name in invalid}
        try:
            settings = load_settings(**defaults)
        except SettingsError as exc:
            found = {_variable(problem).lower() for problem in exc.problems} - invalid
            results += [_setting_failure(problem) for problem in exc.problems]
            if not found <= set(Settings.model_fields):
                return None, results, invalid  # a problem that names no single field
            invalid |= found
            continue
        problems = settings.livekit_problems()
        return settings, results + [_setting_failure(p) for p in problems], invalid
    return None, results, invalid


def _variable(problem: str) -> str:
    return problem.split(" ", 1)[0]


def _setting_failure(problem: str) -> CheckResult:
    what, missing, fix = problem.partition(" is not set: ")
    if missing:
        return CheckResult("settings", False, f"{what} is not set", fix)
    return CheckResult(
        "settings", False, problem, "correct it in .env.local or the environment (.env.example)"
    )


# a check that reads a variable is skipped while it is invalid (doctor reports it once)
NEEDS = {
    LIVEKIT_SERVER: ("livekit_url", "livekit_api_key", "livekit_api_secret"),
    REDIS: ("redis_url", "redis_cluster"),
}


async def run_doctor(settings: Settings, invalid: Iterable[str] = ()) -> list[CheckResult]:
    """Every check, in the order a user would fix them; ``invalid``: the variables that
    failed validation (``settings`` holds their defaults)."""
    from ._model_keys import check_model_keys

    def invalid_one(check: str) -> str | None:
        return next((v.upper() for v in NEEDS[check] if v in set(invalid)), None)

    async def livekit() -> LiveKitProbe:
        if bad := invalid_one(LIVEKIT_SERVER):
            why = f"{bad} is invalid"
            return LiveKitProbe(skip(LIVEKIT_SERVER, why), skip(LIVEKIT_KEYS, why))
        return await probe_livekit(settings)

    async def redis() -> CheckResult:
        if bad := invalid_one(REDIS):
            return skip(REDIS, f"{bad} is invalid")
        return await check_redis(settings)

    probe, keys, redis_result = await asyncio.gather(livekit(), check_model_keys(settings), redis())
    if probe.keys.ok or not settings.livekit_url:
        rooms = check_rooms_outlive_retention(settings, probe.rooms)
    else:
        rooms = skip(ROOMS, "the LiveKit server's rooms cannot be listed")
    port = check_worker_port(settings, dev=False)
    if not port.ok and settings.worker_port is None:
        # only `start` needs port 8081; `dev` takes any free port
        port = CheckResult(
            port.name, True, f"`start` would fail: {port.detail}", port.fix, warning=True
        )
    return [
        probe.server,
        probe.keys,
        rooms,
        *keys,
        check_plugins(settings),
        redis_result,
        check_session_db(settings),
        port,
        check_metrics_port(settings),
    ]
