"""One pooled redis-py asyncio client from a URL, and what counts as Redis not answering.

The URL forms (``REDIS_URL``: one server, Cluster, Sentinel) are in redis_url.py.

Timeouts are short and a failed command is retried once at once (a pooled connection broken by
a server restart) and then reported, so the store can switch to memory instead of stalling.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions as rex
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from .base import InvalidInputError, StoreUnavailableError
from .redis_url import check_redis_url, parse_sentinel, plain_url, redact_url

__all__ = ["UNAVAILABLE", "RedisRefusedError", "connect", "run_script"]


class RedisRefusedError(rex.RedisError):
    """Redis answered a command with an error of its own (out of memory, a busy script, no
    replicas): the store treats it like an outage, keeps the write queued and retries it."""


# Errors that mean "Redis cannot answer now" (down, restarting, loading, failing over, out of
# memory or otherwise refusing), as opposed to our own refusals (fencing, corrupt records).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    StoreUnavailableError,
    RedisRefusedError,
    rex.OutOfMemoryError,
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ReadOnlyError,
    rex.ClusterDownError,
    rex.TryAgainError,
    rex.RedisClusterException,
    OSError,
    TimeoutError,
)
# ...and, for a Lua script, any error reply (out of memory, a busy or failing script)
_SCRIPT_FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, rex.ResponseError)


async def run_script(script: Any, keys: list[str], args: list[Any], what: str) -> Any:
    """Run a Lua script; any Redis refusal or outage (script errors included: OOM...) becomes
    StoreUnavailableError saying ``what`` cannot be done (the room lease, the watch list)."""
    try:
        return await script(keys=keys, args=args)
    except _SCRIPT_FAILURES as exc:
        raise StoreUnavailableError(
            f"redis cannot answer ({type(exc).__name__}: {str(exc)[:120]}); {what}"
        ) from None


def connect(
    url: str,
    *,
    cluster: bool = False,
    socket_timeout: float = 2.0,
    connect_timeout: float = 1.0,
) -> Redis | RedisCluster:
    """Build the client for ``url`` (no I/O happens until the first command).

    Raises InvalidInputError, one line with the URL's secrets redacted, when it is malformed.
    """
    try:
        kind = check_redis_url(url, cluster=cluster)
    except InvalidInputError as exc:
        raise InvalidInputError(f"REDIS_URL is invalid: {exc} (got {redact_url(url)!r})") from None
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 1),
        "decode_responses": False,
    }
    scheme, _, rest = url.partition("://")
    if kind == "sentinel":
        return _sentinel(scheme.startswith("rediss"), rest, options)
    if kind == "cluster":
        options.pop("retry")  # the cluster client retries by itself across nodes
        return RedisCluster.from_url(plain_url(url), **options)
    return Redis.from_url(url, **options)


def _sentinel(tls: bool, rest: str, options: dict[str, Any]) -> Redis:
    parsed = parse_sentinel(rest)
    # the sentinels get the same short timeouts and single retry as the data nodes (redis-py's
    # default retries with backoff would stall a command ~8 s when no sentinel answers)
    sentinel_kwargs = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout", "retry")}
    if parsed.sentinel_password is not None:
        sentinel_kwargs["password"] = parsed.sentinel_password
    node = dict(options, ssl=tls)
    if parsed.username:
        node["username"] = parsed.username
    if parsed.password:
        node["password"] = parsed.password
    if parsed.db is not None:
        node["db"] = parsed.db
    manager = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs, **node)
    return manager.master_for(parsed.service)
