"""Checks of the services the settings point at, for `doctor` and before a worker starts.

Each check returns a `CheckResult`: what was checked, OK / WARN / FAIL / SKIP, and how to fix
it. WARN passed with a caveat the user should know (a key that could only be checked for
presence, a development secret); SKIP could not run because something it needs failed. No
check raises: a service that is down, or answers like something else, is a result.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from livekit.protocol.models import Room

    from ..settings import Settings

TIMEOUT_S = 5.0

# HMAC secrets shorter than this draw PyJWT's InsecureKeyLengthWarning (RFC 7518 3.2)
SECURE_SECRET_BYTES = 32
SHORT_SECRET_NOTE = (
    f"LIVEKIT_API_SECRET is shorter than {SECURE_SECRET_BYTES} bytes: fine for "
    "livekit-server --dev, use a long secret in production"
)
# what LiveKit waits after a room's last participant left before closing it, unless the
# token (or CreateRoom) that made the room set departure_timeout
LIVEKIT_DEPARTURE_TIMEOUT_S = 20
LIVEKIT_URL_FIX = (
    "set LIVEKIT_URL to your LiveKit server: wss://<project>.livekit.cloud, or "
    "ws://localhost:7880 for `livekit-server --dev`"
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check; ``fix`` says what to do when it did not simply pass."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False
    """Passed, with a caveat (shown as WARN; never fails a command)."""
    skipped: bool = False
    """Could not run because another check failed (shown as SKIP; ``ok`` is false)."""

    @property
    def label(self) -> str:
        """OK, WARN, FAIL or SKIP."""
        if self.skipped:
            return "SKIP"
        if not self.ok:
            return "FAIL"
        return "WARN" if self.warning else "OK"


def skip(name: str, why: str) -> CheckResult:
    """A check that could not run because ``why`` (another check failed)."""
    return CheckResult(name, False, f"skipped: {why}", skipped=True)


def livekit_http_url(ws_url: str) -> str:
    """The HTTP(S) URL of a LiveKit server given its ws(s):// URL."""
    parsed = urlparse(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parsed.scheme, parsed.scheme)
    return parsed._replace(scheme=scheme).geturl()


# -- LiveKit -------------------------------------------------------------------------------

LIVEKIT_SERVER = "LiveKit server"
LIVEKIT_KEYS = "LiveKit API key and secret"
ROOMS = "rooms outlive SESSION_RETENTION_S"
LIST_ROOMS_PATH = "/twirp/livekit.RoomService/ListRooms"


@dataclass(frozen=True)
class LiveKitProbe:
    """What one call to the server's RoomService.ListRooms showed."""

    server: CheckResult
    keys: CheckResult
    rooms: list[Room] | None = None
    """The open rooms, when the keys were accepted."""


async def probe_livekit(settings: Settings) -> LiveKitProbe:
    """Ask LIVEKIT_URL's Twirp API for its rooms with a token signed by the key and secret.

    A LiveKit server answers 200 with protobuf (or 401 for keys of another project); any
    other HTTP server answers something else (404, an HTML page), so it is not taken for one.
    """
    import aiohttp
    from livekit import api

    if not settings.livekit_url:
        why = "LIVEKIT_URL is not set"
        return LiveKitProbe(skip(LIVEKIT_SERVER, why), skip(LIVEKIT_KEYS, why))
    url = livekit_http_url(settings.livekit_url)
    secret = settings.livekit_api_secret
    has_keys = bool(settings.livekit_api_key and secret)
    # without keys a throwaway pair still shows whether a LiveKit server answers (401)
    token = api.AccessToken(
        settings.livekit_api_key if has_keys else "doctor",
        secret.get_secret_value() if has_keys and secret else secrets.token_hex(32),
    )
    jwt = token.with_grants(api.VideoGrants(room_list=True)).to_jwt()
    try:
        status, kind, body = await _list_rooms(url, jwt)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        server = CheckResult(
            LIVEKIT_SERVER,
            False,
            f"cannot reach {url}: {reason(exc)}",
            "check LIVEKIT_URL and your network; for a local server run `livekit-server --dev`",
        )
        return LiveKitProbe(server, skip(LIVEKIT_KEYS, "the server cannot be reached"))
    answered = CheckResult(LIVEKIT_SERVER, True, f"{url}: its RoomService answered")
    if status == 200 and kind == "application/protobuf":
        rooms = _rooms(body)
        if rooms is not None:
            return LiveKitProbe(answered, _accepted_keys(settings), rooms)
    if status in (401, 403):
        if not has_keys:
            why = "LIVEKIT_API_KEY or _SECRET not set"
            return LiveKitProbe(answered, skip(LIVEKIT_KEYS, why))
        keys = CheckResult(
            LIVEKIT_KEYS,
            False,
            f"the server refused them (HTTP {status}: {_error_message(body)})",
            "check LIVEKIT_API_KEY and LIVEKIT_API_SECRET belong to the project of LIVEKIT_URL",
        )
        return LiveKitProbe(answered, keys)
    server = _not_livekit(url, status, kind, body)
    return LiveKitProbe(server, skip(LIVEKIT_KEYS, "no LiveKit server at LIVEKIT_URL"))


async def _list_rooms(url: str, jwt: str) -> tuple[int, str, bytes]:
    """POST RoomService.ListRooms: the status, content type and body of the answer."""
    import aiohttp
    from livekit.protocol import room as room_pb

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http,
        http.post(
            url.rstrip("/") + LIST_ROOMS_PATH,
            data=room_pb.ListRoomsRequest().SerializeToString(),
            headers={"Authorization": f"Bearer {jwt}", "Content-Type": "application/protobuf"},
        ) as response,
    ):
        return response.status, response.content_type, await response.read()


def _rooms(body: bytes) -> list[Room] | None:
    """The rooms of a ListRoomsResponse; None when the body is not one."""
    from livekit.protocol import room as room_pb

    try:
        return list(room_pb.ListRoomsResponse.FromString(body).rooms)
    except Exception:  # protobuf's DecodeError; anything unparsable is not LiveKit
        return None


def _not_livekit(url: str, status: int, kind: str, body: bytes) -> CheckResult:
    """What an answer that is neither rooms nor a refusal says about LIVEKIT_URL."""
    answered = f"HTTP {status} ({kind or 'no content type'})"
    if status >= 500 and _twirp_error(body):
        return CheckResult(
            LIVEKIT_SERVER,
            False,
            f"{url}: the LiveKit server failed (HTTP {status}: {_error_message(body)})",
            "check the server's health",
        )
    if status in (502, 503, 504):
        return CheckResult(
            LIVEKIT_SERVER,
            False,
            f"{url} answered {answered}: a proxy whose LiveKit server is down, or not LiveKit",
            f"check the server behind the proxy; or {LIVEKIT_URL_FIX}",
        )
    return CheckResult(
        LIVEKIT_SERVER,
        False,
        f"{url} is not a LiveKit server: its RoomService API answered {answered}",
        LIVEKIT_URL_FIX,
    )


def _accepted_keys(settings: Settings) -> CheckResult:
    if short_secret(settings):
        return CheckResult(LIVEKIT_KEYS, True, f"accepted; {SHORT_SECRET_NOTE}", warning=True)
    return CheckResult(LIVEKIT_KEYS, True, "accepted by the server")


def short_secret(settings: Settings) -> bool:
    """LIVEKIT_API_SECRET is set and shorter than HS256 wants (the `--dev` server's is)."""
    secret = settings.livekit_api_secret
    return secret is not None and len(secret.get_secret_value().encode()) < SECURE_SECRET_BYTES


def check_rooms_outlive_retention(settings: Settings, rooms: list[Room] | None) -> CheckResult:
    """Whether a room waits SESSION_RETENTION_S for a participant who dropped off.

    The room's departure timeout comes from the token (or CreateRoom) that made it, which
    doctor cannot see; it can only look at the rooms open now."""
    retention = math.ceil(settings.session_retention_s)
    fix = (
        f"mint join tokens with api.RoomConfiguration(departure_timeout={retention}) in "
        "AccessToken.with_room_config, as `python agent.py token` does"
    )
    if retention <= LIVEKIT_DEPARTURE_TIMEOUT_S:
        return CheckResult(
            ROOMS, True, f"LiveKit's default ({LIVEKIT_DEPARTURE_TIMEOUT_S} s) is enough"
        )
    reported = [r for r in rooms or [] if r.departure_timeout > 0]
    early = [r for r in reported if r.departure_timeout < retention]
    if early:
        names = ", ".join(f"{r.name!r} ({r.departure_timeout} s)" for r in early[:3])
        return CheckResult(
            ROOMS,
            False,
            f"{len(early)} open room(s) close sooner than {retention} s after their last "
            f"participant left: {names}",
            fix,
        )
    seen = f"{len(reported)} open room(s) wait long enough; " if reported else ""
    return CheckResult(
        ROOMS,
        True,
        f"{seen}rooms close {LIVEKIT_DEPARTURE_TIMEOUT_S} s after their last participant left "
        "unless their token sets departure_timeout; doctor cannot see how your backend mints "
        "tokens",
        fix,
        warning=True,
    )


# -- local services ------------------------------------------------------------------------


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
            return CheckResult(name, False, f"{module}: {reason(exc)}", "run `uv sync`")
    return CheckResult(name, True, ", ".join(modules))


REDIS = "Redis reachable"


async def check_redis(settings: Settings) -> CheckResult:
    if not settings.redis_url:
        return CheckResult(REDIS, True, "REDIS_URL not set: sessions stay on this host (SQLite)")
    import redis.exceptions

    from ..resilience.store.redis import connect
    from ..resilience.store.redis_url import scrub

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
            REDIS,
            False,
            f"PING failed: {scrub(reason(exc), settings.redis_url)}",
            "check REDIS_URL (and that the server runs), or unset it to keep sessions in a "
            "SQLite file on this host",
        )
    finally:
        await client.aclose()
    return CheckResult(REDIS, True, "PING answered")


def check_session_db(settings: Settings) -> CheckResult:
    """Without Redis: the SQLite file every worker on this host shares can be used."""
    name = "session database usable"
    if settings.redis_url:
        return CheckResult(name, True, "REDIS_URL is set: sessions are kept in Redis")
    if settings.session_db_path == ":memory:":
        return CheckResult(name, True, "SESSION_DB_PATH=:memory: (each process its own)")
    from ..resilience.store.file import DatabaseFileError, SqliteDatabase

    try:
        database = SqliteDatabase(settings.session_db_path)
    except DatabaseFileError as exc:
        return CheckResult(
            name,
            False,
            str(exc),
            "fix the permissions, or point SESSION_DB_PATH at a writable file of its own",
        )
    database.close()
    return CheckResult(name, True, f"{database.path}, shared by every worker on this host")


# livekit-agents' own port for the worker's HTTP server in `start` when none is set
START_PORT = 8081


def check_worker_port(settings: Settings, *, dev: bool) -> CheckResult:
    """The worker's HTTP server can bind its address (a second worker on a host cannot)."""
    name = "worker HTTP port free"
    port = settings.worker_port if settings.worker_port is not None else (0 if dev else START_PORT)
    host = settings.worker_host or "0.0.0.0"
    if port == 0:
        return CheckResult(name, True, "any free port")
    if busy := _cannot_listen(host, port):
        return CheckResult(
            name,
            False,
            f"{busy}; another worker on this host?",
            "set WORKER_PORT=0 (any free port) or another free port, or WORKER_HOST",
        )
    chosen = "" if settings.worker_port is not None else " (`start`'s; `dev` takes any free port)"
    return CheckResult(name, True, f"{host}:{port}{chosen}")


def check_metrics_port(settings: Settings) -> CheckResult:
    """The metrics endpoint (METRICS_PORT) can bind its address, as the worker's does."""
    name = "metrics port free"
    host, port = settings.worker_host or "0.0.0.0", settings.metrics_port
    if port is None:
        return CheckResult(name, True, "none needed: METRICS_PORT is unset")
    if port == 0:
        return CheckResult(name, True, "any free port")
    if busy := _cannot_listen(host, port):
        return CheckResult(
            name, False, f"{busy}; another worker on this host?", "set another METRICS_PORT"
        )
    return CheckResult(name, True, f"{host}:{port}")


def _cannot_listen(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now, or None when it could."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        return f"cannot listen on {host}:{port} ({exc.strerror or exc})"
    return None


def _twirp_error(body: bytes) -> bool:
    """The body is a Twirp error: JSON with a code and a message."""
    try:
        error = json.loads(body)
    except ValueError:
        return False
    return isinstance(error, dict) and "code" in error and "msg" in error


def _error_message(body: bytes) -> str:
    """The message of a Twirp error (JSON), or the start of a plain-text one."""
    text = body.decode("utf-8", "replace").strip()
    try:
        message = json.loads(text).get("msg")
    except (ValueError, AttributeError):
        message = None
    return str(message or text[:120] or "no message")


def reason(exc: BaseException) -> str:
    """An exception in a few words: its type and message (a connection error: the address
    and what the OS said, without aiohttp's SSL context repr)."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if error.errno and error.errno > 0 and not isinstance(error, socket.gaierror):
            why = os.strerror(error.errno)  # "Connection refused", not asyncio's wording
        else:
            why = error.strerror or str(error)
        return f"cannot connect to {exc.host}:{exc.port} ({why})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
