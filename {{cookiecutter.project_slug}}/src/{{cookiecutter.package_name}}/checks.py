"""Checks of the settings and the services they point at, for `doctor` and start-up.

Each check returns a `CheckResult` saying what was checked, whether it passed, and how
to fix it when it did not. No check raises.
"""

from __future__ import annotations

import importlib
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import aiohttp

from .settings import Settings

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check; ``fix`` says what to do when ``ok`` is false."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def livekit_http_url(ws_url: str) -> str:
    """The HTTP(S) URL of a LiveKit server given its ws(s):// URL."""
    parsed = urlparse(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parsed.scheme, parsed.scheme)
    return parsed._replace(scheme=scheme).geturl()


async def check_livekit_reachable(settings: Settings) -> CheckResult:
    name = "LiveKit server reachable"
    if not settings.livekit_url:
        return CheckResult(name, False, "LIVEKIT_URL is not set", "set LIVEKIT_URL in .env.local")
    url = livekit_http_url(settings.livekit_url)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http,
            http.get(url) as response,
        ):
            status = response.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return CheckResult(
            name,
            False,
            f"cannot reach {url}: {_reason(exc)}",
            "check LIVEKIT_URL and your network; for a local server run `livekit-server --dev`",
        )
    if status >= 500:
        return CheckResult(
            name, False, f"{url} answered HTTP {status}", "check the server's health"
        )
    return CheckResult(name, True, f"{url} answered HTTP {status}")


async def check_livekit_credentials(settings: Settings) -> CheckResult:
    from livekit import api

    name = "LiveKit API key and secret"
    if not (settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret):
        return CheckResult(
            name,
            False,
            "LIVEKIT_URL, LIVEKIT_API_KEY or LIVEKIT_API_SECRET is not set",
            "copy them from your LiveKit project settings into .env.local",
        )
    lk = api.LiveKitAPI(
        livekit_http_url(settings.livekit_url),
        settings.livekit_api_key,
        settings.livekit_api_secret.get_secret_value(),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
    )
    try:
        await lk.room.list_rooms(api.ListRoomsRequest())
    except api.TwirpError as exc:
        return CheckResult(
            name,
            False,
            f"the server refused them ({exc.code}: {exc.message})",
            "check LIVEKIT_API_KEY and LIVEKIT_API_SECRET belong to the project of LIVEKIT_URL",
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return CheckResult(name, False, f"request failed: {_reason(exc)}", "check LIVEKIT_URL")
    finally:
        await lk.aclose()
    return CheckResult(name, True, "accepted by the server")


def check_model_keys(settings: Settings) -> CheckResult:
    name = f"model keys for {settings.model_stack}"
    problems = settings.model_problems()
    if problems:
        variable, _, fix = problems[0].partition(": ")
        return CheckResult(name, False, variable, fix)
    return CheckResult(name, True, "present")


def check_plugins(settings: Settings) -> CheckResult:
    name = "model plugins installed"
    modules = {
        "gemini-live": ["livekit.plugins.google"],
        "openai-realtime": ["livekit.plugins.openai"],
        "openai-pipeline": ["livekit.plugins.openai", "livekit.plugins.silero"],
    }[settings.model_stack]
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken install can raise anything at import
            return CheckResult(name, False, f"{module}: {_reason(exc)}", "run `uv sync`")
    return CheckResult(name, True, ", ".join(modules))


async def check_redis(settings: Settings) -> CheckResult:
    name = "Redis reachable"
    if not settings.redis_url:
        return CheckResult(name, True, "REDIS_URL not set: sessions stay on this host (SQLite)")
    import redis.exceptions

    from .resilience.store.redis_client import connect
    from .resilience.store.redis_url import scrub

    # the client the worker uses: one server, Sentinel or Cluster, as the URL says
    client = connect(
        settings.redis_url,
        cluster=settings.redis_cluster,
        socket_timeout=TIMEOUT_S,
        connect_timeout=TIMEOUT_S,
    )
    try:
        await client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        return CheckResult(
            name,
            False,
            f"PING failed: {scrub(_reason(exc), settings.redis_url)}",
            "check REDIS_URL (and that the server runs), or unset it to keep sessions in a "
            "SQLite file on this host",
        )
    finally:
        await client.aclose()
    return CheckResult(name, True, "PING answered")


def check_session_db(settings: Settings) -> CheckResult:
    """Without Redis: the SQLite file every worker on this host shares can be used."""
    name = "session database usable"
    if settings.redis_url:
        return CheckResult(name, True, "REDIS_URL is set: sessions are kept in Redis")
    if settings.session_db_path == ":memory:":
        return CheckResult(name, True, "SESSION_DB_PATH=:memory: (each process its own)")
    from .resilience.store.sqlite_db import DatabaseFileError, SqliteDatabase

    try:
        database = SqliteDatabase(settings.session_db_path)
    except DatabaseFileError as exc:
        return CheckResult(name, False, str(exc))
    database.close()
    return CheckResult(name, True, f"{database.path}, shared by every worker on this host")


async def run_doctor(settings: Settings) -> list[CheckResult]:
    """Every check, in the order a user would fix them."""
    reachable = await check_livekit_reachable(settings)
    credentials = (
        await check_livekit_credentials(settings)
        if reachable.ok
        else CheckResult("LiveKit API key and secret", False, "skipped: server not reachable")
    )
    return [
        reachable,
        credentials,
        check_model_keys(settings),
        check_plugins(settings),
        await check_redis(settings),
        check_session_db(settings),
    ]


# livekit-agents' own port for the worker's HTTP server in `start` when none is set
START_PORT = 8081


def check_worker_port(settings: Settings, *, dev: bool) -> CheckResult:
    """The worker's HTTP server can bind its address (a second worker on a host cannot)."""
    name = "worker HTTP port free"
    port = settings.worker_port if settings.worker_port is not None else (0 if dev else START_PORT)
    host = settings.worker_host or "0.0.0.0"  # noqa: S104 - livekit binds all interfaces
    if port == 0:
        return CheckResult(name, True, "any free port")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        return CheckResult(
            name,
            False,
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); another worker on this host?",
            "set WORKER_PORT=0 (any free port) or another free port, or WORKER_HOST",
        )
    return CheckResult(name, True, f"{host}:{port}")


async def preflight(settings: Settings, *, dev: bool = False) -> list[CheckResult]:
    """The checks that must pass before a worker registers; the failed ones."""
    local = [check_worker_port(settings, dev=dev), check_session_db(settings)]
    if not all(result.ok for result in local):
        return [result for result in local if not result.ok]
    reachable = await check_livekit_reachable(settings)
    if not reachable.ok:
        return [reachable]
    credentials = await check_livekit_credentials(settings)
    return [] if credentials.ok else [credentials]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
