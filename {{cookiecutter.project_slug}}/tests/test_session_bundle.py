"""A whole store moved at once: `sessions export --all` writes a bundle (JSON Lines, one
conversation a line) and `sessions import` takes it, checked whole before any write.

Real SQLite files and a real Redis server; the commands run in this process (CliRunner).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from store_fixtures import KEY_A, KEY_B, empty_redis, redis_server  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.resilience.store import (
    SessionRecord,
    open_store,
)
from {{ cookiecutter.package_name }}.resilience.transcribers import MEETING_IDENTITY
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

# (room, identity): the conversations of the seeded store, a room's meeting transcript too
PEOPLE = [("clinic", "ann"), ("clinic", "bob"), ("lab", "cy"), ("lab", MEETING_IDENTITY)]
runner = CliRunner()


def env_of(target: RedisServer | Path, keys: str | None) -> dict[str, str]:
    env = {"COLUMNS": "200"} | ({"SESSION_ENCRYPTION_KEYS": keys} if keys else {})
    if isinstance(target, RedisServer):
        return env | {"REDIS_URL": target.url}
    return env | {"SESSION_DB_PATH": str(target)}


def invoke(target: RedisServer | Path, *args: str, code: int = 0, keys: str | None = None) -> Any:
    result = runner.invoke(app, ["sessions", *args], env=env_of(target, keys))
    assert result.exit_code == code, result.output
    return result


def open_target(target: RedisServer | Path, keys: str | None = None) -> Any:
    if isinstance(target, RedisServer):
        return open_store(redis_url=target.url, retention=3600, encryption_keys=keys)
    return open_store(db_path=str(target), retention=3600, encryption_keys=keys)


async def seed(db: Path, keys: str | None = None) -> None:
    """Everyone in PEOPLE talked and left; ann came back once."""
    store = open_target(db, keys)
    for room, who in PEOPLE:
        await store.join(room, who, "s1")
        await store.append(
            room,
            who,
            items=[{"id": f"{who}-1", "type": "message", "role": "user", "content": [who]}],
            transcript=[{"id": f"{who}-t", "speaker": who, "text": f"I am {who}", "at": 1.0}],
        )
        await store.leave(room, who, "s1")
    await store.join("clinic", "ann", "s2")
    await store.leave("clinic", "ann", "s2")
    await store.aclose()


async def records(target: RedisServer | Path) -> dict[tuple[str, str], SessionRecord | None]:
    store = open_target(target)
    try:
        return {(room, who): await store.load(room, who) for room, who in PEOPLE}
    finally:
        await store.aclose()


def test_a_whole_store_moves_from_sqlite_to_redis_in_one_bundle(
    redis: RedisServer, tmp_path: Path
) -> None:
    source, bundle = tmp_path / "s.sqlite3", tmp_path / "all.jsonl"
    asyncio.run(seed(source))
    exported = invoke(source, "export", "--all", "--out", str(bundle))
    assert exported.stderr == f"exported 4 conversations to {bundle}\n"
    lines = bundle.read_text().splitlines()
    assert sorted((json.loads(x)["room"], json.loads(x)["identity"]) for x in lines) == sorted(
        PEOPLE
    )

    imported = invoke(redis, "import", str(bundle))
    assert imported.stdout == "imported 4 conversations (0 replaced)\n"
    before, after = asyncio.run(records(source)), asyncio.run(records(redis))
    for who in PEOPLE:
        old, new = before[who], after[who]
        assert old is not None and new is not None
        assert (new.items, new.transcript) == (old.items, old.transcript)
        assert new.reconnect_count == old.reconnect_count
    assert after[("clinic", "ann")].reconnect_count == 1  # type: ignore[union-attr]

    one_room = invoke(source, "export", "--all", "--room", "lab").stdout.splitlines()
    assert sorted(json.loads(x)["identity"] for x in one_room) == sorted(["cy", MEETING_IDENTITY])


def test_a_bundle_imported_again_keeps_what_is_there_unless_replace(
    redis: RedisServer, tmp_path: Path
) -> None:
    source, bundle = tmp_path / "s.sqlite3", tmp_path / "all.jsonl"
    asyncio.run(seed(source))
    invoke(source, "export", "--all", "--out", str(bundle))
    invoke(redis, "import", str(bundle))

    again = invoke(redis, "import", str(bundle), code=1)
    assert again.stdout == "imported 0 conversations (0 replaced)\n"
    refused = [x for x in again.stderr.splitlines() if x.startswith("not imported: ")]
    assert len(refused) == 4 and all("--replace" in x for x in refused)
    assert again.stderr.splitlines()[-1] == "error: 4 conversation(s) not imported (see above)"

    replaced = invoke(redis, "import", str(bundle), "--replace")
    assert replaced.stdout == "imported 4 conversations (4 replaced)\n"


def test_a_bundle_with_a_bad_line_writes_nothing(redis: RedisServer, tmp_path: Path) -> None:
    source, bundle = tmp_path / "s.sqlite3", tmp_path / "all.jsonl"
    asyncio.run(seed(source))
    invoke(source, "export", "--all", "--out", str(bundle))
    lines = bundle.read_text().splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "version": 99})
    bundle.write_text("\n".join(lines) + "\n")

    refused = invoke(redis, "import", str(bundle), code=1)
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: line 3: ") and "version" in line
    with redis.client() as client:
        assert client.dbsize() == 0  # checked whole before any write


def test_what_cannot_go_with_a_bundle_is_one_line(redis: RedisServer, tmp_path: Path) -> None:
    source, bundle = tmp_path / "s.sqlite3", tmp_path / "all.jsonl"
    asyncio.run(seed(source))
    invoke(source, "export", "--all", "--out", str(bundle))
    one = invoke(redis, "import", str(bundle), "--identity", "x", code=2)
    assert "--identity names one participant" in one.stderr
    both = invoke(source, "export", "--all", "ann", code=2)
    assert "--all exports every record" in both.stderr
    no_room = invoke(source, "export", "ann", code=2)
    assert "give --room" in no_room.stderr
    with redis.client() as client:
        assert client.dbsize() == 0


def test_records_an_export_cannot_read_are_named_and_left_as_they_are(tmp_path: Path) -> None:
    source, bundle = tmp_path / "s.sqlite3", tmp_path / "all.jsonl"
    asyncio.run(seed(source, keys=KEY_A))
    wrong_key = invoke(source, "export", "--all", "--out", str(bundle), keys=KEY_B, code=1)
    assert wrong_key.stderr.splitlines()[0] == f"exported 0 conversations to {bundle} (sealed)"
    last = wrong_key.stderr.splitlines()[-1]
    assert last.startswith("error: 4 record(s) unreadable, left as they are") and "k1" in last
    sealed = invoke(source, "export", "--all", keys=KEY_A).stdout.splitlines()
    assert len(sealed) == 4 and all(json.loads(x)["sealed"] for x in sealed)
