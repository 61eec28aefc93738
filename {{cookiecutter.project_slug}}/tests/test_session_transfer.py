"""`sessions export` and `sessions import`: a conversation moved between a SQLite file and
Redis, sealed and not, against real stores; refusals are one line and write nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_fixtures import KEY_A, KEY_B, empty_redis, redis_server  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.audit import AUDIT_LOGGER
from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.resilience.store import (
    JoinKind,
    SessionRecord,
    open_store,
)
from {{ cookiecutter.package_name }}.resilience.store._crypto import sealed_key_id
from {{ cookiecutter.package_name }}.resilience.store._keys import participant_keys
from {{ cookiecutter.package_name }}.resilience.store.transfer import FORMAT, VERSION
from {{ cookiecutter.package_name }}.resilience.transcribers import MEETING_IDENTITY
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer, free_port

AGENT_PY = Path(__file__).resolve().parents[1] / "agent.py"
SECRET = "my blood test came back positive"
ROOM, ANN = "clinic", "ann@example.com"
runner = CliRunner()


@pytest.fixture
def audit_events() -> Iterator[list[logging.LogRecord]]:
    """The audit records the commands log in this process."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    records: list[logging.LogRecord] = []
    handler = Collect()
    logging.getLogger(AUDIT_LOGGER).addHandler(handler)
    yield records
    logging.getLogger(AUDIT_LOGGER).removeHandler(handler)


def store_env(target: RedisServer | Path, keys: str | None = None, **more: str) -> dict[str, str]:
    """The settings that point the commands at a Redis server or a SQLite file."""
    env = {"REDIS_URL": target.url} if isinstance(target, RedisServer) else {}
    if isinstance(target, Path):
        env["SESSION_DB_PATH"] = str(target)
    if keys:
        env["SESSION_ENCRYPTION_KEYS"] = keys
    return env | more


def agent(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python agent.py ARGS`, a real process, with ``env``'s settings and no others."""
    return subprocess.run(
        [sys.executable, str(AGENT_PY), *args],
        capture_output=True,
        text=True,
        env=os.environ | env,
        timeout=120,
    )


def invoke(*args: str, env: dict[str, str], code: int = 0) -> Any:
    """The command in this process (CliRunner), checked to exit ``code``."""
    result = runner.invoke(app, list(args), env=env | {"COLUMNS": "200"})
    assert result.exit_code == code, result.output
    return result


def export(
    source: RedisServer | Path, *args: str, out: Path, keys: str | None = None, code: int = 0
) -> Any:
    """`sessions export --room ROOM ARGS --out OUT` on ``source``, in this process."""
    command = ("sessions", "export", "--room", ROOM, *args, "--out", str(out))
    return invoke(*command, env=store_env(source, keys), code=code)


def open_target(target: RedisServer | Path, keys: str | None = None) -> Any:
    """The store a worker would open on the Redis server or the SQLite file."""
    return open_store(
        redis_url=target.url if isinstance(target, RedisServer) else None,
        db_path=str(target) if isinstance(target, Path) else None,
        encryption_keys=keys,
        retention=3600,
    )


async def seed(target: RedisServer | Path, keys: str | None = None, identity: str = ANN) -> None:
    """A conversation a worker left: profile, items, transcript, a return, a Gemini handle."""
    store = open_target(target, keys)
    await store.join(ROOM, identity, "s1")
    await store.append(
        ROOM,
        identity,
        items=[
            {"id": "i1", "type": "message", "role": "user", "content": [SECRET]},
            {"id": "i2", "type": "message", "role": "assistant", "content": ["noted"]},
        ],
        transcript=[{"id": "t1", "speaker": identity, "text": SECRET, "at": 1.5}],
    )
    await store.update_profile(ROOM, identity, language="de-DE", metadata={"plan": "gold"})
    await store.set_gemini_handle(ROOM, identity, "handle-of-the-old-deployment", ["i1"])
    await store.leave(ROOM, identity, "s1")
    await store.join(ROOM, identity, "s2")  # came back once, and is still here
    await store.aclose()


async def load(
    target: RedisServer | Path, keys: str | None = None, room: str = ROOM, identity: str = ANN
) -> SessionRecord | None:
    store = open_target(target, keys)
    try:
        return await store.load(room, identity)
    finally:
        await store.aclose()


def assert_moved(record: SessionRecord | None, original: SessionRecord) -> None:
    """The conversation arrived whole, as a participant who left, without the Gemini handle."""
    assert record is not None
    assert record.items == original.items and record.transcript == original.transcript
    assert (record.language, record.metadata) == ("de-DE", {"plan": "gold"})
    assert record.reconnect_count == original.reconnect_count == 1
    assert record.joined_at == original.joined_at
    assert record.gemini is None and record.active_session is None


def sqlite_blobs(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as conn:
        blobs = [row[0] for row in conn.execute("SELECT blob FROM entries")]
        blobs += [row[0] for row in conn.execute("SELECT who FROM records")]
    return blobs


def test_round_trip_sqlite_to_redis_and_back(redis: RedisServer, tmp_path: Path) -> None:
    source, back = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    asyncio.run(seed(source))
    original = asyncio.run(load(source))
    assert original is not None and original.gemini is not None

    file = tmp_path / "f.json"
    exported = agent(
        "sessions", "export", "--room", ROOM, ANN, "--out", str(file), env=store_env(source)
    )
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr == f"exported 2 items and 1 transcript lines to {file}\n"
    document = json.loads(file.read_text())
    assert (document["format"], document["version"], document["sealed"]) == (FORMAT, VERSION, False)
    assert "handle-of-the-old-deployment" not in file.read_text()
    assert oct(file.stat().st_mode & 0o777) == "0o600"

    imported = agent("sessions", "import", str(file), env=store_env(redis))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == f"imported {ANN!r} in room {ROOM!r}: 2 items, 1 transcript lines\n"
    assert_moved(asyncio.run(load(redis)), original)

    # and on from Redis to another SQLite file, through stdout and stdin
    piped = invoke("sessions", "export", "--room", ROOM, ANN, env=store_env(redis)).stdout
    result = runner.invoke(app, ["sessions", "import", "-"], input=piped, env=store_env(back))
    assert result.exit_code == 0, result.output
    assert_moved(asyncio.run(load(back)), original)


def test_the_next_join_after_an_import_is_a_welcome_back(
    redis: RedisServer, tmp_path: Path
) -> None:
    asyncio.run(seed(tmp_path / "a.sqlite3"))
    export(tmp_path / "a.sqlite3", ANN, out=tmp_path / "f.json")
    invoke("sessions", "import", str(tmp_path / "f.json"), env=store_env(redis))

    async def rejoin() -> Any:
        store = open_store(redis_url=redis.url)
        try:
            return await store.join(ROOM, ANN, "s-new")
        finally:
            await store.aclose()

    outcome = asyncio.run(rejoin())
    assert outcome.kind is JoinKind.RETURNING
    assert outcome.record.reconnect_count == 2 and len(outcome.record.items) == 2


def test_an_import_is_kept_as_long_as_its_engagement_tier_says(
    redis: RedisServer, tmp_path: Path
) -> None:
    asyncio.run(seed(tmp_path / "a.sqlite3"))  # one return: engagement score 1
    export(tmp_path / "a.sqlite3", ANN, out=tmp_path / "f.json")
    tiers = {"SESSION_RETENTION_TIERS": "1:1d,5:30d"}
    invoke("sessions", "import", str(tmp_path / "f.json"), env=store_env(redis, **tiers))
    keys = participant_keys("lkagent", ROOM, ANN)
    with redis.client() as client:
        left = [client.pttl(key) for key in (keys.record, keys.items, keys.transcript)]
    assert all(86_400_000 - 60_000 < ms <= 86_400_000 for ms in left), left


def test_sealed_stays_sealed_and_is_resealed_under_the_target_key(
    redis: RedisServer, tmp_path: Path, audit_events: list[logging.LogRecord]
) -> None:
    asyncio.run(seed(redis, keys=KEY_A))
    original = asyncio.run(load(redis, keys=KEY_A))
    assert original is not None
    file = tmp_path / "sealed.json"
    export(redis, ANN, out=file, keys=KEY_A)
    text = file.read_text()
    assert SECRET not in text and ANN not in text and "gold" not in text
    document = json.loads(text)
    assert document["sealed"] is True and document["key_ids"] == ["k1"]

    # the target writes under k2; it holds k1 only to open the file
    target = tmp_path / "target.sqlite3"
    invoke("sessions", "import", str(file), env=store_env(target, f"{KEY_B},{KEY_A}"))
    assert {sealed_key_id(blob) for blob in sqlite_blobs(target)} == {"k2"}
    assert_moved(asyncio.run(load(target, keys=KEY_B)), original)  # k1 no longer needed

    readable = tmp_path / "plain.json"
    export(redis, ANN, "--decrypt", out=readable, keys=KEY_A)
    assert SECRET in readable.read_text() and json.loads(readable.read_text())["sealed"] is False
    events = [vars(r) for r in audit_events]
    assert [(e["action"], e["outcome"], e.get("decrypted")) for e in events] == [
        ("session.export", "ok", 0),
        ("session.import", "ok", None),
        ("session.export", "ok", 1),
    ]
    assert (events[1]["items"], events[1]["segments"], events[1]["replaced"]) == (2, 1, 0)


@pytest.mark.parametrize(
    ("keys", "says"),
    [(None, "SESSION_ENCRYPTION_KEYS is not set"), (KEY_B, "SESSION_ENCRYPTION_KEYS lacks it")],
    ids=["target-unsealed", "target-other-key"],
)
def test_a_sealed_file_the_target_cannot_open_is_refused_in_one_line(
    redis: RedisServer, tmp_path: Path, keys: str | None, says: str
) -> None:
    asyncio.run(seed(redis, keys=KEY_A))
    file = tmp_path / "sealed.json"
    export(redis, ANN, out=file, keys=KEY_A)
    target = tmp_path / "target.sqlite3"
    refused = agent("sessions", "import", str(file), env=store_env(target, keys))
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: the file is sealed under key id 'k1'") and says in line
    assert "--decrypt" in line and refused.stdout == ""
    assert not target.exists()  # nothing written, not even the file


def test_an_existing_record_is_kept_unless_replace(redis: RedisServer, tmp_path: Path) -> None:
    asyncio.run(seed(redis))
    file = tmp_path / "f.json"
    export(redis, ANN, out=file)
    document = json.loads(file.read_text())
    document["record"]["items"] = document["record"]["items"][:1]
    file.write_text(json.dumps(document))
    with redis.client() as client:
        before = {key: client.dump(key) for key in client.keys("*")}

    refused = invoke("sessions", "import", str(file), env=store_env(redis), code=1)
    assert refused.stderr.splitlines() == [
        "error: this store already has a record for that participant in that room; "
        "pass --replace to overwrite it (nothing was written)"
    ]
    with redis.client() as client:
        assert {key: client.dump(key) for key in client.keys("*")} == before

    replaced = invoke("sessions", "import", str(file), "--replace", env=store_env(redis))
    assert replaced.stdout.endswith(": 1 items, 1 transcript lines (replaced)\n")
    record = asyncio.run(load(redis))
    assert record is not None and [i["id"] for i in record.items] == ["i1"]


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_participant_in_a_call_is_not_overwritten(
    redis: RedisServer, tmp_path: Path, kind: str
) -> None:
    target = redis if kind == "redis" else tmp_path / "target.sqlite3"
    asyncio.run(seed(target))
    export(target, ANN, out=tmp_path / "f.json")

    async def hold_lease() -> None:
        store = open_target(target)
        await store.acquire_lease(ROOM, ANN, "worker-1", ttl=60)
        await store.aclose()

    asyncio.run(hold_lease())
    refused = invoke(
        "sessions", "import", str(tmp_path / "f.json"), "--replace", env=store_env(target), code=1
    )
    assert "in a call on this store now" in refused.stderr


def _doc(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema_version": 1,
        "joined_at": 1.0e9,
        "last_seen": 1.0e9,
        "left_at": None,
        "reconnect_count": 0,
        "items_trimmed": 0,
        "transcript_trimmed": 0,
        "language": None,
        "metadata": {},
        "items": [{"id": "i1", "text": "hi"}],
        "transcript": [],
    }
    document = {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": 1.0e9,
        "sealed": False,
        "room": ROOM,
        "identity": ANN,
        "record": record,
    }
    for key, value in changes.items():
        (record if key in record else document)[key] = value
    return document


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "not a session export: not JSON"),
        (json.dumps({"format": "something-else", "version": 1}), "not a session export (format"),
        (json.dumps(_doc(version=2)), "format version 2, newer than this agent reads (1)"),
        (json.dumps(_doc(schema_version=9)), "schema version 9"),
        (json.dumps(_doc(items=[{"text": "no id"}])), "items[0] has no string id"),
        (json.dumps(_doc(items=[{"id": "a"}, {"id": "a"}])), "items[1] repeats id 'a'"),
        (json.dumps(_doc(joined_at="yesterday")), "joined_at is 'yesterday'"),
        (json.dumps(_doc(identity="")), "the identity must not be empty"),
        (json.dumps(_doc(items=[{"id": str(n)} for n in range(3)])), "3 items, over SESSION_MAX_"),
        (json.dumps(_doc(items=[{"id": "i", "t": "x" * 2000}])), "SESSION_MAX_ENTRY_BYTES=1024"),
        (
            json.dumps(_doc(items=[{"id": "a", "t": "x" * 900}, {"id": "b", "t": "y" * 900}])),
            "items take 1834 bytes, over SESSION_MAX_HISTORY_BYTES=1500",
        ),
    ],
    ids=[
        "not-json",
        "foreign",
        "newer",
        "schema",
        "no-id",
        "repeated-id",
        "bad-time",
        "no-identity",
        "too-many",
        "too-big",
        "too-long",
    ],
)
def test_a_bad_file_is_refused_in_one_line_and_writes_nothing(
    redis: RedisServer, tmp_path: Path, content: str, says: str
) -> None:
    file = tmp_path / "f.json"
    file.write_text(content)
    limits = {"SESSION_MAX_ENTRIES": "2", "SESSION_MAX_ENTRY_BYTES": "1024"}
    env = store_env(redis, **limits, SESSION_MAX_HISTORY_BYTES="1500")
    refused = invoke("sessions", "import", str(file), env=env, code=1)
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: ") and says in line, line
    with redis.client() as client:
        assert client.keys("*") == []


def test_an_altered_sealed_file_is_refused(redis: RedisServer, tmp_path: Path) -> None:
    asyncio.run(seed(redis, keys=KEY_A))
    file = tmp_path / "f.json"
    export(redis, ANN, out=file, keys=KEY_A)
    document = json.loads(file.read_text())
    # an item's blob posing as a transcript line: authentic, but sealed for another field
    document["record"]["transcript"] = [document["record"]["items"][0]]
    file.write_text(json.dumps(document))
    target = tmp_path / "t.sqlite3"
    refused = invoke("sessions", "import", str(file), env=store_env(target, KEY_A), code=1)
    assert "seg: authentication failed under key id 'k1'" in refused.stderr
    assert not target.exists()


def test_import_under_another_room_and_identity(redis: RedisServer, tmp_path: Path) -> None:
    asyncio.run(seed(redis, keys=KEY_A))
    original = asyncio.run(load(redis, keys=KEY_A))
    assert original is not None
    file = tmp_path / "f.json"
    export(redis, ANN, out=file, keys=KEY_A)
    invoke(
        "sessions",
        "import",
        str(file),
        "--room",
        "ward-2",
        "--identity",
        "ann-phone",
        env=store_env(redis, KEY_A),
    )
    moved = asyncio.run(load(redis, keys=KEY_A, room="ward-2", identity="ann-phone"))
    assert moved is not None and moved.items == original.items


def test_export_refusals_leave_no_file(redis: RedisServer, tmp_path: Path) -> None:
    file = tmp_path / "f.json"
    missing = export(redis, "nobody", out=file, code=1)
    assert "no stored session" in missing.stderr and not file.exists()
    file.write_text("keep me")
    exists = export(redis, ANN, out=file, code=1)
    assert "an export never overwrites" in exists.stderr and file.read_text() == "keep me"
    both = invoke(
        "sessions", "export", "--room", ROOM, ANN, "--meeting", env=store_env(redis), code=2
    )
    assert "IDENTITY, or --meeting" in both.stderr


def test_the_meeting_transcript_moves_with_meeting(redis: RedisServer, tmp_path: Path) -> None:
    asyncio.run(seed(redis, identity=MEETING_IDENTITY))
    file = tmp_path / "meeting.json"
    export(redis, "--meeting", out=file)
    target = tmp_path / "t.sqlite3"
    invoke("sessions", "import", str(file), "--room", "other", env=store_env(target))
    moved = asyncio.run(load(target, room="other", identity=MEETING_IDENTITY))
    assert moved is not None and moved.transcript[0]["text"] == SECRET
    listed = invoke("sessions", "list", env=store_env(target)).stdout
    assert "(the room's transcript)" in listed and "\x00" not in listed
    renamed = invoke(
        "sessions", "import", str(file), "--identity", "x", env=store_env(target), code=1
    )
    assert "meeting transcript: it has no identity" in renamed.stderr


def test_an_import_into_an_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    file = tmp_path / "f.json"
    file.write_text(json.dumps(_doc()))
    url = f"redis://127.0.0.1:{free_port()}/0"
    refused = invoke("sessions", "import", str(file), env={"REDIS_URL": url}, code=1)
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"error: redis at {url} is unreachable")
