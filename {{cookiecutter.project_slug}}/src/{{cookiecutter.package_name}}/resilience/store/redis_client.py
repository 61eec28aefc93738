"""One pooled redis-py asyncio client from a URL, and the key layout of a participant.

URL forms (``REDIS_URL``):

* ``redis://[user:password@]host:6379/0`` and ``rediss://...`` (TLS): one server.
* ``redis+cluster://host:7000`` / ``rediss+cluster://...``, or any ``redis://`` URL with
  ``cluster=True`` (``REDIS_CLUSTER=true``): Redis Cluster, discovered from that node.
* ``redis+sentinel://[user:password@]host1:26379,host2:26379/service_name[/db]`` and
  ``rediss+sentinel://...`` (TLS to the data nodes): Sentinel finds the current primary of
  ``service_name``. The password is the data nodes'; ``?sentinel_password=...`` sets the
  sentinels' own if they need one. Default sentinel port: 26379.

Timeouts are short and a failed command is retried once at once (a pooled connection broken by
a server restart) and then reported, so the store can switch to memory instead of stalling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.exceptions as rex
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from .base import InvalidInputError
from .records import participant_hash

__all__ = ["UNAVAILABLE", "ParticipantKeys", "connect", "participant_keys"]

# Errors that mean "Redis cannot answer now" (down, restarting, loading, failing over), as
# opposed to a refused or malformed command.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ReadOnlyError,
    rex.ClusterDownError,
    rex.TryAgainError,
    rex.RedisClusterException,
    OSError,
    TimeoutError,
)


_TAG = re.compile(r"\{[A-Za-z0-9_.-]{1,64}:[0-9a-f]{32}\}")


def connect(
    url: str,
    *,
    cluster: bool = False,
    socket_timeout: float = 2.0,
    connect_timeout: float = 1.0,
) -> Redis | RedisCluster:
    """Build the client for ``url`` (no I/O happens until the first command)."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 1),
        "decode_responses": False,
    }
    scheme, _, rest = url.partition("://")
    if not rest:
        raise InvalidInputError(f"REDIS_URL {_redact(url)!r} is not a URL like redis://host:6379")
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel(scheme.startswith("rediss"), rest, options)
    if scheme in ("redis+cluster", "rediss+cluster"):
        cluster, url = True, scheme.split("+")[0] + "://" + rest
    elif scheme not in ("redis", "rediss", "unix"):
        raise InvalidInputError(
            f"REDIS_URL scheme {scheme!r} is not supported; use redis://, rediss://, "
            "redis+cluster:// or redis+sentinel://"
        )
    if cluster:
        options.pop("retry")  # the cluster client retries by itself across nodes
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)


def _sentinel(tls: bool, rest: str, options: dict[str, Any]) -> Redis:
    parts = urlsplit("redis://" + rest)
    creds, _, hosts = parts.netloc.rpartition("@")
    username, _, password = creds.partition(":") if creds else ("", "", "")
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
        try:
            sentinels.append((name.strip("[]"), int(port)))
        except ValueError:
            raise InvalidInputError(f"sentinel address {host!r} has a bad port") from None
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path:
        raise InvalidInputError(
            "redis+sentinel URL needs hosts and a service: "
            "redis+sentinel://host1:26379,host2:26379/service_name[/db]"
        )
    query = parse_qs(parts.query)
    sentinel_kwargs = {"socket_timeout": options["socket_timeout"]}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][0]
    node = dict(options, ssl=tls)
    if username:
        node["username"] = unquote(username)
    if password:
        node["password"] = unquote(password)
    if len(path) > 1:
        node["db"] = int(path[1])
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **node)
    return manager.master_for(path[0])


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rpartition("@")[2] if "@" in rest else url


@dataclass(frozen=True, slots=True)
class ParticipantKeys:
    """The Redis keys of one participant; all share one hash tag, hence one Cluster slot."""

    tag: str
    record: str
    items: str
    transcript: str
    ids: str
    lease: str

    @property
    def data(self) -> list[str]:
        """The keys participant scripts take, in the order the scripts expect."""
        return [self.record, self.items, self.transcript, self.ids, self.lease]

    def quarantine(self, stamp: str) -> list[str]:
        """Names the record's keys move to when it is quarantined, plus a reason key."""
        base = self.tag + ":q" + stamp
        return [base + ":rec", base + ":items", base + ":seg", base + ":ids", base + ":why"]


def participant_keys(prefix: str, room: str, identity: str) -> ParticipantKeys:
    """Keys for (room, identity): a hash of both inside ``{...}``, so no name can collide."""
    tag = "{" + prefix + ":" + participant_hash(room, identity) + "}"
    return _keys(tag)


def keys_for_tag(tag: str) -> ParticipantKeys | None:
    """Keys for a hash tag found by SCAN; None unless it is exactly ``{prefix:<32 hex>}``."""
    if not _TAG.fullmatch(tag):
        return None
    return _keys(tag)


def _keys(tag: str) -> ParticipantKeys:
    return ParticipantKeys(tag, tag + ":r", tag + ":i", tag + ":t", tag + ":d", tag + ":l")
