"""The audit trail: each read, export, listing, restore or purge of a stored conversation (the
RPC `transcript.history`, the `sessions` and `transcript` commands against a real SQLite file)
logs exactly one event on the audit logger, served or refused, naming who, what, which
conversation by keyed hash, and when, and never a raw identity, room name or transcript text."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import pwd
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.audit import (
    AUDIT_LOGGER,
    DETAILS,
    FIELDS,
    AuditFormatter,
    room_ref,
)
from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.log import identity_ref
from {{ cookiecutter.package_name }}.resilience.rpc import (
    ERROR_FORBIDDEN,
    ERROR_INVALID_REQUEST,
    METHOD_HISTORY,
    RpcRoutes,
)
from {{ cookiecutter.package_name }}.resilience.store import open_store
from {{ cookiecutter.package_name }}.resilience.store._keys import participant_hash
from {{ cookiecutter.package_name }}.resilience.transcript import TranscriptLog
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.testing import SimulatedRoom
from {{ cookiecutter.package_name }}.testing.redis_server import free_port

ROOM = "clinic-room-42"
ALICE = "alice@example.com"
BOB = "bob@example.com"
MALLORY = "mallory@example.com"
SECRET_TEXT = "my blood test came back positive"
KEY = "k1:" + "A" * 43 + "="
OPERATOR = f"operator:{pwd.getpwuid(os.getuid()).pw_name}@{socket.gethostname()}"
# what must never appear in an audit event, whatever the path
RAW = (ALICE, BOB, MALLORY, ROOM, SECRET_TEXT, "alice", "clinic")

PROJECT = Path(__file__).resolve().parents[1]
runner = CliRunner()


class _Events(logging.Handler):
    """The audit records, as the README's sink writes them (AuditFormatter's JSON lines)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(AuditFormatter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[dict[str, Any]]:
        """The events since the last call, each checked to carry nothing raw."""
        events = []
        for record in self.records:
            line = self.format(record)
            attributes = " ".join(map(str, vars(record).values()))
            leaked = [raw for raw in RAW if raw in line or raw in attributes]
            assert leaked == [], f"audit record carries {leaked}: {line}"
            event = json.loads(line)
            assert list(event)[: len(FIELDS)] == list(FIELDS)
            assert set(event) <= set(FIELDS) | set(DETAILS)
            at = datetime.datetime.fromisoformat(event["at"])
            now = datetime.datetime.now(datetime.UTC)
            assert at.tzinfo is not None and abs((now - at).total_seconds()) < 60
            events.append(event)
        self.records.clear()
        return events


@pytest.fixture
def audit_events() -> Iterator[_Events]:
    handler = _Events()
    logger = logging.getLogger(AUDIT_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _fields(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: event.get(name) for name in names}


# -- the RPC ----------------------------------------------------------------------------------


async def _history(room: SimulatedRoom, caller: str, payload: str = "") -> Any:
    try:
        return json.loads(await room.perform_rpc_as(caller, METHOD_HISTORY, payload))
    except rtc.RpcError as exc:
        return exc


async def _restart(reason: str) -> int:
    return 0


async def test_each_transcript_history_call_is_one_event_served_or_refused(
    audit_events: _Events,
) -> None:
    room = SimulatedRoom(name=ROOM, agent_identity="agent")
    for identity in (ALICE, MALLORY):
        room.add_participant(identity)
    log = TranscriptLog()
    log.append(id="SG_1", role="agent", speaker="agent", text="Hello!")
    log.append(id="u1", role="user", speaker=ALICE, text=SECRET_TEXT)
    routes = RpcRoutes(room.local_participant, room_name=room.name)
    routes.add(ALICE, _restart, log)

    page = await _history(room, ALICE, '{"limit": 1}')
    assert [s["text"] for s in page["segments"]] == ["Hello!"]
    (served,) = audit_events.take()
    assert served == {
        "at": served["at"],
        "action": "transcript.read",
        "outcome": "ok",
        "actor": identity_ref(ALICE),
        "participant": identity_ref(ALICE),
        "room_ref": room_ref(ROOM),
        "scope": "participant",
        "segments": 1,
    }

    # a caller with no conversation of its own, and a malformed request: refused, audited
    refused = await _history(room, MALLORY)
    assert isinstance(refused, rtc.RpcError) and refused.code == ERROR_FORBIDDEN
    malformed = await _history(room, ALICE, "not json")
    assert isinstance(malformed, rtc.RpcError) and malformed.code == ERROR_INVALID_REQUEST
    events = audit_events.take()
    assert [_fields(e, "outcome", "actor", "participant", "code", "segments") for e in events] == [
        {
            "outcome": "refused",
            "actor": identity_ref(MALLORY),
            "participant": identity_ref(MALLORY),
            "code": ERROR_FORBIDDEN,
            "segments": None,
        },
        {
            "outcome": "refused",
            "actor": identity_ref(ALICE),
            "participant": identity_ref(ALICE),
            "code": ERROR_INVALID_REQUEST,
            "segments": None,
        },
    ]
    assert {e["room_ref"] for e in events} == {room_ref(ROOM)}

    # a meeting's transcript belongs to the room: anyone in it reads it, and that is audited
    routes.share_history(log, may_read=lambda identity: identity != "agent")
    page = await _history(room, MALLORY)
    assert len(page["segments"]) == 2
    (meeting,) = audit_events.take()
    assert _fields(meeting, "outcome", "actor", "participant", "room_ref", "scope", "segments") == {
        "outcome": "ok",
        "actor": identity_ref(MALLORY),
        "participant": None,
        "room_ref": room_ref(ROOM),
        "scope": "room",
        "segments": 2,
    }
    await room.disconnect()


# -- the operator commands, on the SQLite file the workers share --------------------------------


async def _write(*participants: str, keys: str | None = None) -> None:
    store = open_store(db_path=load_settings().session_db_path, encryption_keys=keys)
    for n, identity in enumerate(participants):
        await store.join(ROOM, identity, f"s{n}")
        await store.append(
            ROOM,
            identity,
            items=[{"id": f"i{n}", "role": "user", "content": [SECRET_TEXT]}],
            transcript=[{"id": f"t{n}", "speaker": identity, "text": SECRET_TEXT}],
        )
    await store.aclose()


def _invoke(*args: str, exit_code: int = 0) -> Any:
    result = runner.invoke(app, list(args), env={"COLUMNS": "250"})
    assert result.exit_code == exit_code, result.output
    return result


def test_show_and_transcript_are_audited_with_counts(audit_events: _Events) -> None:
    asyncio.run(_write(ALICE, BOB))

    shown = _invoke("sessions", "show", ALICE, "--room", ROOM)
    assert json.loads(shown.stdout)["identity"] == ALICE
    printed = _invoke("transcript", ALICE, "--room", ROOM)
    assert printed.stdout == f"[{ALICE}] {SECRET_TEXT}\n"

    show, transcript = audit_events.take()
    assert show == {
        "at": show["at"],
        "action": "session.show",
        "outcome": "ok",
        "actor": OPERATOR,
        "participant": identity_ref(ALICE),
        "room_ref": room_ref(ROOM),
        "items": 1,
        "segments": 1,
    }
    assert _fields(transcript, "action", "outcome", "actor", "participant", "segments") == {
        "action": "session.transcript",
        "outcome": "ok",
        "actor": OPERATOR,
        "participant": identity_ref(ALICE),
        "segments": 1,
    }


def test_a_read_that_finds_nothing_or_cannot_read_is_audited(
    audit_events: _Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_write(ALICE, keys=KEY))  # sealed under a key this shell lacks

    _invoke("sessions", "show", MALLORY, "--room", ROOM, exit_code=1)
    _invoke("transcript", ALICE, "--room", ROOM, exit_code=1)
    missing, unreadable = audit_events.take()
    assert _fields(missing, "action", "outcome", "participant") == {
        "action": "session.show",
        "outcome": "not_found",
        "participant": identity_ref(MALLORY),
    }
    assert _fields(unreadable, "action", "outcome", "error", "unreadable", "segments") == {
        "action": "session.transcript",
        "outcome": "error",
        "error": "MissingKeyError",
        "unreadable": 1,
        "segments": None,
    }

    # the store cannot answer at all: still one event, outcome error
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    _invoke("sessions", "show", ALICE, "--room", ROOM, exit_code=1)
    (down,) = audit_events.take()
    assert _fields(down, "action", "outcome", "error", "participant") == {
        "action": "session.show",
        "outcome": "error",
        "error": "StoreUnavailableError",
        "participant": identity_ref(ALICE),
    }


def test_listings_are_audited_with_what_they_showed(audit_events: _Events) -> None:
    asyncio.run(_write(ALICE, BOB))

    listed = _invoke("sessions", "list")
    assert ALICE in listed.stdout and BOB in listed.stdout
    _invoke("sessions", "list", "--room", "elsewhere")
    _invoke("sessions", "quarantine")
    every_room, one_room, quarantine = audit_events.take()
    assert _fields(every_room, "action", "outcome", "actor", "participant", "room_ref") == {
        "action": "sessions.list",
        "outcome": "ok",
        "actor": OPERATOR,
        "participant": None,
        "room_ref": None,
    }
    assert (every_room["records"], every_room["unreadable"]) == (2, 0)
    assert (one_room["room_ref"], one_room["records"]) == (room_ref("elsewhere"), 0)
    assert _fields(quarantine, "action", "outcome", "records") == {
        "action": "quarantine.list",
        "outcome": "ok",
        "records": 0,
    }


def test_purges_are_audited_with_what_they_deleted(audit_events: _Events) -> None:
    asyncio.run(_write(ALICE, BOB, MALLORY))

    declined = runner.invoke(app, ["sessions", "purge", "--room", ROOM, ALICE], input="n\n")
    assert declined.exit_code == 1
    assert audit_events.take() == []  # asked, declined: the store was never touched

    _invoke("sessions", "purge", "--room", ROOM, ALICE, "--yes")
    _invoke("sessions", "purge", "--room", ROOM, "--yes")
    one, room = audit_events.take()
    assert _fields(one, "action", "outcome", "actor", "participant", "room_ref") == {
        "action": "session.purge",
        "outcome": "ok",
        "actor": OPERATOR,
        "participant": identity_ref(ALICE),
        "room_ref": room_ref(ROOM),
    }
    assert (one["sessions"], one["quarantined"]) == (1, 0)
    assert (room["participant"], room["sessions"]) == (None, 2)


def test_a_quarantined_record_restored_is_audited(audit_events: _Events) -> None:
    asyncio.run(_write(ALICE))
    db = load_settings().session_db_path
    with sqlite3.connect(db, isolation_level=None) as conn:  # a worker finds it corrupt ...
        conn.execute(
            "UPDATE records SET meta = x'7b6e6f74' WHERE pkey = ?", (participant_hash(ROOM, ALICE),)
        )

    async def quarantine() -> None:
        store = open_store(db_path=db)
        assert await store.load(ROOM, ALICE) is None  # ... and moves it aside
        await store.aclose()

    asyncio.run(quarantine())
    with sqlite3.connect(db) as conn:
        (key,) = [row[0] for row in conn.execute("SELECT pkey FROM records WHERE note != ''")]

    _invoke("sessions", "restore", "not-a-key", exit_code=1)
    _invoke("sessions", "restore", key)
    bad_key, restored = audit_events.take()
    assert _fields(bad_key, "action", "outcome", "error", "room_ref") == {
        "action": "quarantine.restore",
        "outcome": "refused",
        "error": "InvalidInputError",
        "room_ref": None,
    }
    # still corrupt, so unreadable here; its room is known from the record's owner
    assert _fields(restored, "action", "outcome", "room_ref", "unreadable") == {
        "action": "quarantine.restore",
        "outcome": "ok",
        "room_ref": room_ref(ROOM),
        "unreadable": 1,
    }
    assert key not in json.dumps(restored)  # the store's unkeyed hash is never logged


def test_the_readme_recipe_routes_the_trail_to_a_file_of_its_own(tmp_path: Path) -> None:
    """A handler of its own with AuditFormatter, not propagated: the general logs stay free of
    it, and LOG_LEVEL=WARNING on the root does not drop it."""
    asyncio.run(_write(ALICE))
    sink_path = tmp_path / "audit.jsonl"
    sink = logging.FileHandler(sink_path)
    sink.setFormatter(AuditFormatter())
    audit_log = logging.getLogger(AUDIT_LOGGER)
    root = logging.getLogger()
    general = _Events()
    root.addHandler(general)
    level = root.level
    root.setLevel(logging.WARNING)
    audit_log.addHandler(sink)
    audit_log.propagate = False
    try:
        _invoke("transcript", ALICE, "--room", ROOM)
    finally:
        audit_log.propagate = True
        audit_log.removeHandler(sink)
        sink.close()
        root.removeHandler(general)
        root.setLevel(level)
    (line,) = sink_path.read_text().splitlines()
    event = json.loads(line)
    assert _fields(event, "action", "outcome", "actor", "participant") == {
        "action": "session.transcript",
        "outcome": "ok",
        "actor": OPERATOR,
        "participant": identity_ref(ALICE),
    }
    assert not any(r.name == AUDIT_LOGGER for r in general.records)
    assert not any(raw in line for raw in RAW)


def test_the_readme_recipe_at_the_top_of_agent_py_keeps_an_operator_command_s_event(
    tmp_path: Path,
) -> None:
    """The README's block, as written, at the top of agent.py; a real `python agent.py
    transcript` process, with no other log configuration, writes its event to the file."""
    asyncio.run(_write(ALICE))
    readme = (PROJECT / "README.md").read_text()
    section = readme[readme.index("**Audit trail.**") :]
    recipe = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert recipe is not None
    sink_path = tmp_path / "audit.jsonl"
    code = re.sub(r'FileHandler\("[^"]+"\)', f"FileHandler({str(sink_path)!r})", recipe[1])
    assert str(sink_path) in code
    agent_py = Path.cwd() / "agent.py"
    agent_py.write_text(code + "\n" + (PROJECT / "agent.py").read_text())

    done = subprocess.run(
        [sys.executable, str(agent_py), "transcript", ALICE, "--room", ROOM],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"[{ALICE}] {SECRET_TEXT}\n"
    assert "audit" not in done.stderr  # not in the general logs
    (line,) = sink_path.read_text().splitlines()
    assert _fields(json.loads(line), "action", "outcome", "actor", "participant") == {
        "action": "session.transcript",
        "outcome": "ok",
        "actor": OPERATOR,
        "participant": identity_ref(ALICE),
    }
