"""`sessions list | show | purge | quarantine | restore` and `transcript` against a real Redis
server: what they print, their exit codes, and that reads never change what Redis holds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.backends import open_backends
from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.resilience.store import open_store
from {{ cookiecutter.package_name }}.resilience.store.redis import participant_keys
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import SCENARIOS, run_scenario
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer, free_port

runner = CliRunner()
KEY_1 = "k1:" + "A" * 43 + "="
KEY_2 = "k2:" + "B" * 43 + "="
WIDE = {"COLUMNS": "250"}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    with RedisServer() as server:
        monkeypatch.setenv("REDIS_URL", server.url)
        yield server


@pytest.fixture
def redis_url(server: RedisServer) -> str:
    return server.url


def snapshot(server: RedisServer) -> dict[bytes, tuple[bytes, bool]]:
    """Every key with its serialized value and whether it expires: what a read must not change."""
    with server.client() as admin:
        return {key: (admin.dump(key), admin.pttl(key) > 0) for key in admin.keys("*")}


async def _write(url: str, *participants: str, keys: str | None = KEY_1, room: str = "r1") -> None:
    store = open_store(redis_url=url, encryption_keys=keys)
    for n, identity in enumerate(participants):
        await store.join(room, identity, f"s{n}")
        await store.append(
            room,
            identity,
            items=[{"id": f"i{n}", "text": "hi"}],
            transcript=[{"id": f"t{n}", "speaker": identity, "text": f"words of {identity}"}],
        )
    await store.aclose()


async def _one_conversation(url: str) -> None:
    backends = open_backends(load_settings(redis_url=url))
    basic = SCENARIOS["basic"]
    try:
        obs = await run_scenario(
            "basic",
            basic.run,
            settings=backends.settings,
            llm=basic.scripted_llm(),
            backends=backends,
            printer=lambda _: None,
        )
    finally:
        await backends.aclose()
    assert obs.ok


def test_list_show_and_purge(redis_url: str) -> None:
    asyncio.run(_one_conversation(redis_url))

    listed = runner.invoke(app, ["sessions", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "1 sessions" in listed.stdout
    assert "user-1" in listed.stdout

    shown = runner.invoke(app, ["sessions", "show", "user-1", "--room", "sim-room"])
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert record["identity"] == "user-1"
    assert len(record["items"]) == 7  # greeting + three questions and answers

    missing = runner.invoke(app, ["sessions", "show", "nobody", "--room", "sim-room"])
    assert missing.exit_code == 1

    purged = runner.invoke(app, ["sessions", "purge", "--room", "sim-room", "--yes"])
    assert purged.exit_code == 0, purged.output
    assert "deleted 1 session(s)" in purged.stdout
    again = runner.invoke(app, ["sessions", "show", "user-1", "--room", "sim-room"])
    assert again.exit_code == 1


def test_purge_asks_before_deleting(redis_url: str) -> None:
    result = runner.invoke(app, ["sessions", "purge", "--room", "r"], input="n\n")
    assert result.exit_code == 1
    assert "Aborted" in result.output


def test_commands_say_the_memory_store_is_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSION_DB_PATH", ":memory:")  # the SQLite store: test_store_sqlite.py
    result = runner.invoke(app, ["sessions", "list"])
    assert result.exit_code == 0
    assert "REDIS_URL is not set" in result.stderr
    purge = runner.invoke(app, ["sessions", "purge", "--room", "r", "--yes"])
    assert purge.exit_code == 1 and "REDIS_URL is not set" in purge.stderr


def test_reads_without_the_key_leave_every_record_and_exit_1(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_write(server.url, "ann", "bob", "cy"))
    before = snapshot(server)

    listed = runner.invoke(app, ["sessions", "list"], env=WIDE)  # no SESSION_ENCRYPTION_KEYS
    assert listed.exit_code == 1
    assert listed.stderr.strip().splitlines() == [
        "error: 3 record(s) unreadable, left as they are: key 'k1' missing (3); "
        "add the missing keys to SESSION_ENCRYPTION_KEYS to read them"
    ]
    for command in (
        ["sessions", "show", "ann", "--room", "r1"],
        ["transcript", "ann", "--room", "r1"],
    ):
        shown = runner.invoke(app, command)
        assert shown.exit_code == 1
        assert "key id 'k1'" in shown.stderr and "SESSION_ENCRYPTION_KEYS" in shown.stderr
    monkeypatch.setenv("SESSION_ENCRYPTION_KEYS", KEY_2)  # the wrong key: still nothing moves
    assert runner.invoke(app, ["sessions", "list", "--room", "r1"]).exit_code == 1
    assert snapshot(server) == before  # nothing quarantined, rewritten or deleted

    monkeypatch.setenv("SESSION_ENCRYPTION_KEYS", f"{KEY_2},{KEY_1}")
    listed = runner.invoke(app, ["sessions", "list"], env=WIDE)
    assert listed.exit_code == 0, listed.output
    assert "3 sessions" in listed.stdout
    transcript = runner.invoke(app, ["transcript", "bob", "--room", "r1"])
    assert transcript.stdout == "[bob] words of bob\n"


def test_a_corrupt_record_is_reported_not_moved(server: RedisServer) -> None:
    asyncio.run(_write(server.url, "ann", "bob", keys=None))
    with server.client() as admin:
        admin.hset(participant_keys("lkagent", "r1", "bob").record, "meta", b"{not json")
    before = snapshot(server)
    listed = runner.invoke(app, ["sessions", "list"], env=WIDE)
    assert listed.exit_code == 1
    assert "1 sessions" in listed.stdout and "ann" in listed.stdout
    assert "1 record(s) unreadable, left as they are: corrupt (1)" in listed.stderr
    shown = runner.invoke(app, ["sessions", "show", "bob", "--room", "r1"])
    assert shown.exit_code == 1 and "meta: not valid JSON" in shown.stderr
    assert snapshot(server) == before


@pytest.mark.parametrize(
    "command",
    [
        ["sessions", "list"],
        ["sessions", "show", "ann", "--room", "r1"],
        ["sessions", "purge", "--room", "r1", "--yes"],
        ["sessions", "purge", "--room", "r1", "ann", "--yes"],
        ["sessions", "quarantine"],
        ["sessions", "restore", "{lkagent:" + "0" * 32 + "}:q0123"],
        ["transcript", "ann", "--room", "r1"],
        ["sessions", "export", "ann", "--room", "r1"],
        ["sessions", "stats"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_commands_exit_1_in_one_line_when_redis_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    port = free_port()
    monkeypatch.setenv("REDIS_URL", f"redis://agent:pw-Heron-5521@127.0.0.1:{port}/0")
    result = runner.invoke(app, command)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: redis at redis://***@127.0.0.1:{port}/0 is unreachable: ")
    assert "pw-Heron-5521" not in result.output
    assert "deleted" not in result.stdout and "sessions" not in result.stdout


def _quarantine_bob(server: RedisServer) -> str:
    """A worker finds bob's record corrupt and moves it aside; returns the quarantine key."""

    async def run() -> None:
        store = open_store(redis_url=server.url, retention=120)
        assert await store.load("r1", "bob") is None
        await store.aclose()

    with server.client() as admin:
        admin.hset(participant_keys("lkagent", "r1", "bob").record, "meta", b"{not json")
    asyncio.run(run())
    with server.client() as admin:
        (note,) = admin.keys("{lkagent:*}:q*:why")
    return note.decode().removesuffix(":why")


def test_quarantine_is_listed_restored_and_purged(server: RedisServer) -> None:
    asyncio.run(_write(server.url, "ann", "bob", keys=None))
    key = _quarantine_bob(server)

    listed = runner.invoke(app, ["sessions", "quarantine"], env=WIDE)
    assert listed.exit_code == 0, listed.output
    assert "1 quarantined" in listed.stdout
    assert key in listed.stdout and "r1" in listed.stdout and "not valid JSON" in listed.stdout
    other_room = runner.invoke(app, ["sessions", "quarantine", "--room", "r2"], env=WIDE)
    assert "0 quarantined" in other_room.stdout

    # bob came back meanwhile: restoring would overwrite his new record
    asyncio.run(_write(server.url, "bob", keys=None))
    refused = runner.invoke(app, ["sessions", "restore", key])
    assert refused.exit_code == 1 and "live record" in refused.stderr
    with server.client() as admin:
        assert admin.exists(key + ":rec")  # still in quarantine
        admin.delete(*participant_keys("lkagent", "r1", "bob").data)
        admin.hset(key + ":rec", "meta", b"{}")  # an operator repaired the copy

    restored = runner.invoke(app, ["sessions", "restore", key])
    assert restored.exit_code == 0, restored.output
    assert restored.stdout == f"restored {key}: room 'r1', 1 items\n"
    shown = runner.invoke(app, ["sessions", "show", "bob", "--room", "r1"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["items"][0]["id"] == "i1"
    with server.client() as admin:
        assert admin.keys("{lkagent:*}:q*") == []
        assert 0 < admin.pttl(participant_keys("lkagent", "r1", "bob").record) <= 300_000
    assert runner.invoke(app, ["sessions", "restore", key]).exit_code == 1  # gone now
    bad = runner.invoke(app, ["sessions", "restore", "not-a-key"])
    assert bad.exit_code == 1 and "not a quarantine key" in bad.stderr

    key = _quarantine_bob(server)
    purged = runner.invoke(app, ["sessions", "purge", "--room", "r1", "--yes"])
    assert purged.exit_code == 0, purged.output
    assert purged.stdout == "deleted 1 session(s) and 1 quarantined record(s)\n"
    with server.client() as admin:
        assert admin.keys("{lkagent:*") == []


def test_purge_of_a_room_says_which_records_it_could_not_check(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_write(server.url, "ann", keys=KEY_1))
    asyncio.run(_write(server.url, "bob", keys=KEY_2))
    monkeypatch.setenv("SESSION_ENCRYPTION_KEYS", KEY_1)
    purged = runner.invoke(app, ["sessions", "purge", "--room", "r1", "--yes"])
    assert purged.exit_code == 1
    assert purged.stdout == "deleted 1 session(s) and 0 quarantined record(s)\n"
    assert "key 'k2' missing (1)" in purged.stderr
    gone = runner.invoke(app, ["sessions", "purge", "--room", "r1", "bob", "--yes"])
    assert gone.exit_code == 0 and "deleted 1 session(s)" in gone.stdout  # by name: no key needed


def test_commands_use_the_configured_key_prefix(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def write() -> None:
        store = open_store(redis_url=server.url, prefix="acme")
        await store.join("r1", "ann", "s1")
        await store.aclose()

    asyncio.run(write())
    assert "0 sessions" in runner.invoke(app, ["sessions", "list"], env=WIDE).stdout
    monkeypatch.setenv("REDIS_PREFIX", "acme")
    listed = runner.invoke(app, ["sessions", "list"], env=WIDE)
    assert listed.exit_code == 0 and "1 sessions" in listed.stdout and "ann" in listed.stdout
