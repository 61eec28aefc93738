"""``REDIS_URL``: its forms, checked without connecting, and shown without its secrets.

* ``redis://[user:password@]host:6379/0`` and ``rediss://...`` (TLS): one server.
* ``redis+cluster://host:7000`` / ``rediss+cluster://...``, or a ``redis://`` URL with
  ``REDIS_CLUSTER=true``: Redis Cluster, discovered from that node.
* ``redis+sentinel://[user:password@]host1:26379,host2:26379/service_name[/db]`` and
  ``rediss+sentinel://...`` (TLS to the data nodes): Sentinel finds the current primary of
  ``service_name``. The password is the data nodes'; ``?sentinel_password=...`` sets the
  sentinels' own if they need one. Default sentinel port: 26379.

No message built here holds a secret of the URL: ``redact_url`` replaces the user info and
secret query values by ``***``, and ``scrub`` removes them from text another library wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from redis.connection import parse_url

from .base import InvalidInputError, StoreUnavailableError

__all__ = [
    "SentinelURL",
    "check_redis_url",
    "parse_sentinel",
    "redact_url",
    "scrub",
    "unreachable",
]

Kind = Literal["server", "cluster", "sentinel"]

_KINDS: dict[str, Kind] = {
    "redis": "server",
    "rediss": "server",
    "unix": "server",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
}
_USAGE = (
    "must be a Redis URL such as redis://localhost:6379/0, rediss://..., "
    "redis+cluster://host:7000 or redis+sentinel://host1:26379,host2:26379/service_name; "
    "unset it for the in-memory store"
)
# query parameters whose values are secrets
_SECRET_PARAM = re.compile(r"pass|secret|token|auth|key", re.IGNORECASE)


def check_redis_url(url: str, *, cluster: bool = False) -> Kind:
    """Which client ``url`` needs ("server", "cluster" or "sentinel"), checked offline.

    ``cluster``: REDIS_CLUSTER=true. Raises InvalidInputError saying what is wrong, its
    message free of the URL's secrets.
    """
    scheme, sep, rest = url.partition("://")
    kind = _KINDS.get(scheme) if sep and rest else None
    if kind is None:
        raise InvalidInputError(_USAGE)
    if cluster and (kind == "sentinel" or scheme == "unix"):
        raise InvalidInputError(
            f"REDIS_CLUSTER=true needs a redis:// or rediss:// URL, not {scheme}://; "
            "unset REDIS_CLUSTER or change REDIS_URL"
        )
    try:
        if kind == "sentinel":
            parse_sentinel(rest)
        else:
            parse_url(plain_url(url))
    except ValueError as exc:  # InvalidInputError too: scrubbed either way
        raise InvalidInputError(scrub(str(exc), url)) from None
    return "cluster" if cluster else kind


def plain_url(url: str) -> str:
    """The URL redis-py reads: ``redis+cluster://...`` becomes ``redis://...``."""
    scheme, sep, rest = url.partition("://")
    return scheme.split("+")[0] + sep + rest


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """The parts of a ``redis+sentinel://`` URL (after the scheme)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int | None
    username: str
    password: str
    sentinel_password: str | None


def parse_sentinel(rest: str) -> SentinelURL:
    """Parse what follows ``redis+sentinel://``; InvalidInputError when malformed."""
    parts = urlsplit("redis://" + rest)
    creds, _, hosts = parts.netloc.rpartition("@")
    username, _, password = creds.partition(":")
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
            "a redis+sentinel URL needs hosts and a service: "
            "redis+sentinel://host1:26379,host2:26379/service_name[/db]"
        )
    db = None
    if len(path) > 1:
        if not path[1].isdigit():
            raise InvalidInputError("the database after the sentinel service must be a number")
        db = int(path[1])
    query = parse_qs(parts.query)
    return SentinelURL(
        sentinels=tuple(sentinels),
        service=path[0],
        db=db,
        username=unquote(username),
        password=unquote(password),
        sentinel_password=query["sentinel_password"][0] if "sentinel_password" in query else None,
    )


def redact_url(url: str) -> str:
    """``url`` fit for a message: user info and secret query values replaced by ``***``.

    Everything before the last ``@`` goes, even where a password holds ``/`` or ``?``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    address, q, query = rest.partition("?")
    if q:
        query = "&".join(_redact_param(param) for param in query.split("&"))
    # and a secret repeated elsewhere in the URL (a typo can put one anywhere)
    return scrub(scheme + sep + address + q + query, url)


def _redact_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    return f"{name}=***" if eq and _SECRET_PARAM.search(name) else param


def _secrets(url: str) -> list[str]:
    """Every secret a URL holds, raw and decoded, longest first."""
    _, sep, rest = url.partition("://")
    rest = rest if sep else url
    found: list[str] = []
    if "@" in rest:
        creds = rest.rpartition("@")[0]
        found += [creds, creds.partition(":")[2]]  # user:password, and the password alone
    for param in rest.partition("?")[2].split("&"):
        name, eq, value = param.partition("=")
        if eq and _SECRET_PARAM.search(name):
            found.append(value)
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """``text`` with every secret of ``url`` replaced by ``***`` (for errors redis-py wrote)."""
    for secret in _secrets(url) if url else ():
        text = text.replace(secret, "***")
    return text


def unreachable(url: str | None, exc: BaseException) -> StoreUnavailableError:
    """The one-line error for a Redis that cannot answer; the URL's secrets never in it."""
    lines = str(exc).strip().splitlines()
    # redis-py appends a client's whole repr to some errors ("No master found for 's' : <...>")
    detail = (lines[0] if lines else type(exc).__name__).split(" : <", 1)[0][:300]
    where = f"redis at {redact_url(url)}" if url else "redis"
    return StoreUnavailableError(scrub(f"{where} is unreachable: {detail}", url))
