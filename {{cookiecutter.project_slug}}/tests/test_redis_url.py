"""REDIS_URL: every documented form validates and reaches the right client; no message ever
shows a secret of the URL."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis, RedisCluster
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.cli._checks import check_redis
from {{ cookiecutter.package_name }}.resilience.store import (
    InvalidInputError,
    open_store,
)
from {{ cookiecutter.package_name }}.resilience.store.redis import connect
from {{ cookiecutter.package_name }}.resilience.store.redis_url import redact_url
from {{ cookiecutter.package_name }}.settings import SettingsError, load_settings
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

PASSWORD = "pw-Zebra-7731"
SENTINEL_PASSWORD = "sp-Walrus-4409"


@pytest.mark.parametrize(
    ("url", "cluster", "client"),
    [
        ("redis://localhost:6379/0", False, Redis),
        ("rediss://user:pw@cache.example:6380/1", False, Redis),
        ("unix:///run/redis.sock", False, Redis),
        ("redis+cluster://127.0.0.1:7000", False, RedisCluster),
        ("rediss+cluster://user:pw@node.example:7000", False, RedisCluster),
        ("redis://127.0.0.1:7000", True, RedisCluster),
        ("redis+sentinel://h1:26379,h2/voice-agent/2?sentinel_password=x", False, Redis),
    ],
)
def test_documented_forms_pass_validation_and_pick_their_client(
    monkeypatch: pytest.MonkeyPatch, url: str, cluster: bool, client: type
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("REDIS_CLUSTER", str(cluster).lower())
    settings = load_settings()
    assert settings.redis_url == url
    made = connect(settings.redis_url, cluster=settings.redis_cluster)
    assert type(made) is client


BAD_URLS = [
    # the scheme is wrong: the message must still hide both passwords
    f"redis+sentinal://user:{PASSWORD}@h:26379/svc?sentinel_password={SENTINEL_PASSWORD}",
    f"http://user:{PASSWORD}@cache:6379?sentinel_password={SENTINEL_PASSWORD}",
    f"sentinel://h:26379/svc?sentinel_password={SENTINEL_PASSWORD}",  # wrong scheme, no @
    f"redis+sentinel://:{PASSWORD}@h:notaport/svc?sentinel_password={SENTINEL_PASSWORD}",
    f"redis+sentinel://:{PASSWORD}@h:26379/svc/db?sentinel_password={SENTINEL_PASSWORD}",
    f"redis+sentinel://:{PASSWORD}@h:26379?sentinel_password={SENTINEL_PASSWORD}",
    f"redis://:{PASSWORD}@cache:99999/0",
    f"redis://:{PASSWORD}@cache:port{PASSWORD}/0",
    f"{PASSWORD}@cache:6379",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_url_is_one_line_that_hides_every_secret(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(SettingsError) as settings_error:
        load_settings()
    with pytest.raises(InvalidInputError) as connect_error:
        connect(url)
    for text in (str(settings_error.value), str(connect_error.value)):
        assert text.startswith("REDIS_URL is invalid: ")
        assert "\n" not in text
        assert PASSWORD not in text and SENTINEL_PASSWORD not in text
    result = CliRunner().invoke(app, ["sessions", "list"])
    assert result.exit_code == 2
    assert PASSWORD not in result.output and SENTINEL_PASSWORD not in result.output


def test_cluster_flag_cannot_be_combined_with_sentinel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis+sentinel://:{PASSWORD}@h:26379/svc")
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    with pytest.raises(SettingsError) as exc:
        load_settings()
    (problem,) = exc.value.problems
    assert problem.startswith("REDIS_CLUSTER is invalid: REDIS_CLUSTER=true needs a redis://")
    assert PASSWORD not in problem


def test_redacted_url_keeps_what_helps_and_drops_what_is_secret() -> None:
    assert redact_url(f"redis://u:{PASSWORD}@h:6379/0") == "redis://***@h:6379/0"
    assert (
        redact_url(f"redis+sentinel://h1,h2/s?sentinel_password={SENTINEL_PASSWORD}&db=1")
        == "redis+sentinel://h1,h2/s?sentinel_password=***&db=1"
    )
    assert PASSWORD not in redact_url(f"redis://u:a/{PASSWORD}?x@h:6379")  # '/' in a password


def test_a_real_cluster_through_redis_cluster_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-node Redis Cluster (redis-server --cluster-enabled yes): validation, the store,
    doctor and the operator commands all take the documented redis+cluster:// URL."""
    with RedisServer(cluster=True) as server:
        assert server.url.startswith("redis+cluster://")
        monkeypatch.setenv("REDIS_URL", server.url)
        settings = load_settings()

        async def write() -> None:
            store = open_store(redis_url=settings.redis_url)
            await store.join("room-c", "cleo", "s1")
            await store.append("room-c", "cleo", items=[{"id": "i1", "text": "hi"}])
            await store.aclose()

        asyncio.run(write())
        assert asyncio.run(check_redis(settings)).ok
        listed = CliRunner().invoke(app, ["sessions", "list"], env={"COLUMNS": "200"})
        assert listed.exit_code == 0, listed.output
        assert "1 sessions" in listed.stdout and "cleo" in listed.stdout
        purged = CliRunner().invoke(app, ["sessions", "purge", "--room", "room-c", "--yes"])
        assert purged.exit_code == 0, purged.output
        assert "deleted 1 session(s)" in purged.stdout
