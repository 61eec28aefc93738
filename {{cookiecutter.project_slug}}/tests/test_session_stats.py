"""`sessions stats`: participants active per day, returns and conversation lengths, summed
from records on known days (the SQLite store on a clock the test sets), read-only."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from store_fixtures import ManualClock, redis_server  # noqa: F401  (a fixture)
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.resilience.store import (
    SessionRecord,
    SqliteStore,
    open_store,
)
from {{ cookiecutter.package_name }}.resilience.store.stats import (
    is_room_record,
    session_stats,
    turns,
)
from {{ cookiecutter.package_name }}.resilience.transcribers import MEETING_IDENTITY
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

AGENT_PY = Path(__file__).resolve().parents[1] / "agent.py"
DAY = 86400.0
runner = CliRunner()


def noon(days_ago: int, now: float) -> float:
    """Noon UTC, ``days_ago`` days before ``now``'s day."""
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    day = today - datetime.timedelta(days=days_ago)
    return datetime.datetime(day.year, day.month, day.day, 12, tzinfo=datetime.UTC).timestamp()


def messages(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "type": "message", "role": "user"} for i in range(n)]


def test_stats_of_known_records() -> None:
    now = noon(0, time.time())

    def record(identity: str, room: str, joined: int, seen: int, n: int, **more: Any) -> Any:
        return SessionRecord(
            room,
            identity,
            1,
            noon(joined, now),
            noon(seen, now),
            more.pop("returns", 0),
            None,
            items=tuple(messages(identity, n)),
            **more,
        )

    records = [
        record("ann", "r1", joined=3, seen=1, n=4, returns=2),  # active on day -3 and -1
        record("bob", "r1", joined=2, seen=2, n=10, items_trimmed=5),  # 15 turns
        record("cy", "r2", joined=0, seen=0, n=1, returns=1),
        record("old", "r2", joined=30, seen=20, n=99),  # outside the window
        record(
            MEETING_IDENTITY,
            "r1",
            joined=2,
            seen=0,
            n=0,
            transcript=({"id": "m1"}, {"id": "m2"}),
            transcript_trimmed=3,
        ),
    ]
    # a tool call is no turn; a transcript line stamped on a day makes it an active day
    records[0] = dataclasses.replace(
        records[0],
        items=(*records[0].items, {"id": "f", "type": "function_call"}),
        transcript=({"id": "t", "at": noon(2, now)},),
    )
    stats = session_stats(records, now=now, days=7)
    days = [noon(back, now) for back in range(6, -1, -1)]
    expected_days = {
        datetime.datetime.fromtimestamp(d, datetime.UTC).date().isoformat(): 0 for d in days
    }
    per_day = list(expected_days)
    expected_days.update({per_day[3]: 1, per_day[4]: 2, per_day[5]: 1, per_day[6]: 1})
    assert stats.to_json() == {
        "room": None,
        "days": 7,
        "active_per_day": expected_days,
        "participants": 3,
        "rooms": 2,
        "returns": {"participants": 2, "times": 3},
        "turns": {"median": 4, "p90": 15, "max": 15},
        "meeting_transcripts": {"rooms": 1, "lines": 5},
    }
    assert turns(records[0]) == 4 and is_room_record(MEETING_IDENTITY)
    one_room = session_stats(records, now=now, days=1, room="r2")
    assert (one_room.participants, one_room.turns_max, one_room.meeting_rooms) == (1, 1, 0)
    assert session_stats([], now=now, days=3).to_json()["turns"] == {
        "median": 0,
        "p90": 0,
        "max": 0,
    }


async def seed_days(path: Path, now: float) -> None:
    """Four days of a store, written on a clock set to each day in turn."""
    clock = ManualClock()
    store = SqliteStore(
        path, clock=clock.time, monotonic=clock.monotonic, retention=30 * DAY, active_ttl=30 * DAY
    )

    async def visit(days_ago: int, room: str, identity: str, session: str, n: int) -> None:
        clock.now = noon(days_ago, now)
        await store.join(room, identity, session)
        await store.append(room, identity, items=messages(f"{identity}{session}-", n))
        await store.leave(room, identity, session)

    await visit(3, "r1", "ann", "s1", 2)
    await visit(1, "r1", "ann", "s2", 2)  # ann came back two days later: 4 turns
    await visit(2, "r1", "bob", "s1", 6)
    await visit(0, "r2", "cy", "s1", 1)
    await visit(0, "r2", "cy", "s2", 1)  # and again the same day: 2 turns
    await visit(0, "r1", MEETING_IDENTITY, "meeting/job-1", 0)
    await store.aclose()


def dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def test_stats_command_on_a_seeded_sqlite_file(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "sessions.sqlite3"
    asyncio.run(seed_days(path, now))
    before = dump(path)
    env = os.environ | {"SESSION_DB_PATH": str(path)}
    proc = subprocess.run(
        [sys.executable, str(AGENT_PY), "sessions", "stats", "--json", "--days", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    day = [
        datetime.datetime.fromtimestamp(noon(b, now), datetime.UTC).date().isoformat()
        for b in range(4, -1, -1)
    ]
    assert found["active_per_day"] == {day[0]: 0, day[1]: 1, day[2]: 1, day[3]: 1, day[4]: 1}
    assert (found["participants"], found["rooms"]) == (3, 2)
    assert found["returns"] == {"participants": 2, "times": 2}
    assert found["turns"] == {"median": 4, "p90": 6, "max": 6}
    assert found["meeting_transcripts"] == {"rooms": 1, "lines": 0}
    assert found["unreadable"] == 0
    assert dump(path) == before  # reads never write

    table = runner.invoke(
        app,
        ["sessions", "stats", "--room", "r1"],
        env={"SESSION_DB_PATH": str(path), "COLUMNS": "200"},
    )
    assert table.exit_code == 0, table.output
    assert "last 7 day(s) in room 'r1'" in table.stdout
    assert "2 in 1 room(s)" in table.stdout and "1 participant(s), 1 time(s)" in table.stdout
    assert f"active on {day[1]}" in table.stdout


def test_stats_on_redis_and_unreadable_records(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "k1:" + "A" * 43 + "="

    async def write() -> None:
        store = open_store(redis_url=redis_server.url, prefix="stats", encryption_keys=key)
        await store.join("r1", "ann", "s1")
        await store.append("r1", "ann", items=messages("a", 3))
        await store.aclose()

    asyncio.run(write())
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_PREFIX", "stats")
    blind = runner.invoke(app, ["sessions", "stats", "--json"])
    assert blind.exit_code == 1
    assert json.loads(blind.stdout)["unreadable"] == 1
    assert "key 'k1' missing (1)" in blind.stderr
    monkeypatch.setenv("SESSION_ENCRYPTION_KEYS", key)
    seen = runner.invoke(app, ["sessions", "stats", "--json", "--days", "1"])
    assert seen.exit_code == 0, seen.output
    assert json.loads(seen.stdout)["turns"] == {"median": 3, "p90": 3, "max": 3}
    assert runner.invoke(app, ["sessions", "stats", "--days", "0"]).exit_code == 2
