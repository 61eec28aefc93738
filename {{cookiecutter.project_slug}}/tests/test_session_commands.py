"""`sessions list | show | purge` and `transcript` against a real Redis server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.resilience.store import open_store
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import SCENARIOS, run_scenario
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

runner = CliRunner()


@pytest.fixture
def redis_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with RedisServer() as server:
        monkeypatch.setenv("REDIS_URL", server.url)
        yield server.url


async def _one_conversation(url: str) -> None:
    store = open_store(redis_url=url)
    basic = SCENARIOS["basic"]
    try:
        obs = await run_scenario(
            "basic",
            basic.run,
            settings=load_settings(),
            llm=basic.scripted_llm(),
            store=store,
            printer=lambda _: None,
        )
    finally:
        await store.aclose()
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


def test_commands_say_the_memory_store_is_per_process() -> None:
    result = runner.invoke(app, ["sessions", "list"])
    assert result.exit_code == 0
    assert "REDIS_URL is not set" in result.stderr
