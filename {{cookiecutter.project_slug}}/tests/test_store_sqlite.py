"""The embedded SQLite store: one file for every job and worker process on a host.

The SessionStore contract runs on it in test_store_contract.py; here is what only a file
shared by processes shows: real processes (tests/sqlite_store_proc.py) joining, appending and
leasing on one file, a record outliving its writer, the room lease across processes, the file
locked or full under a running call, and the one-line errors for a file that cannot be used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from store_fixtures import KEY_A, ManualClock, sqlite_exec
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.backends import open_backends, open_session_store
from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.cli._checks import check_session_db
from {{ cookiecutter.package_name }}.resilience.primary.room_lease import (
    LocalRoomLease,
    SqliteRoomLease,
)
from {{ cookiecutter.package_name }}.resilience.store import (
    DatabaseFileError,
    JoinKind,
    KeyRing,
    MemoryStore,
    SqliteStore,
    StoreUnavailableError,
)
from {{ cookiecutter.package_name }}.resilience.store._keys import participant_hash
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import SCENARIOS, Simulation, run_scenario
from {{ cookiecutter.package_name }}.testing import ScriptedLLM

PROC = Path(__file__).with_name("sqlite_store_proc.py")
ROOM = "room-1"
WHO = "zoe@example.com"


def turn(n: int) -> dict[str, Any]:
    return {"id": f"item_{n}", "type": "message", "role": "user", "content": [f"turn {n}"]}


def proc_args(db: Path, *args: Any) -> list[str]:
    return [sys.executable, str(PROC), str(db), *map(str, args)]


def run_proc(db: Path, *args: Any) -> list[dict[str, Any]]:
    """Run one store process to its end; its JSON lines."""
    done = subprocess.run(proc_args(db, *args), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def run_together(db: Path, *commands: tuple[Any, ...]) -> list[list[dict[str, Any]]]:
    """Start one process per command at once; each one's JSON lines."""
    procs = [
        subprocess.Popen(proc_args(db, *c), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in commands
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        outputs.append([json.loads(line) for line in out.decode().splitlines()])
    return outputs


def file_bytes(directory: Path) -> bytes:
    """Everything SQLite wrote: the database file and its write-ahead log."""
    return b"".join(path.read_bytes() for path in directory.glob("sessions.sqlite3*"))


async def load_fresh(db: Path, room: str = ROOM, who: str = WHO) -> Any:
    """The record as the file holds it, through a store with no cached copy."""
    store = SqliteStore(db)
    try:
        return await store.load(room, who)
    finally:
        await store.aclose()


# -- one file, many processes -----------------------------------------------------------------


async def test_racing_joins_from_two_processes_make_one_record(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    outputs = run_together(db, ("join", ROOM, WHO, "job-a"), ("join", ROOM, WHO, "job-b"))
    kinds = sorted(lines[0]["kind"] for lines in outputs)
    assert kinds == ["new", "returning"]  # one record: the second join found the first's
    assert (await load_fresh(db)).reconnect_count == 1


async def test_appends_from_two_processes_lose_nothing_and_repeat_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sessions.sqlite3"
    run_proc(db, "join", ROOM, WHO, "s1")
    barrier = tmp_path / "ready"  # both processes open the file, then start together
    barrier.mkdir()
    outputs = run_together(
        db, *(("append", ROOM, WHO, prefix, 150, barrier, 2) for prefix in ("A", "B"))
    )
    assert [lines[-1]["added"] for lines in outputs] == [150, 150]  # repeats not re-added
    ids = (await load_fresh(db)).item_ids
    assert len(ids) == len(set(ids)) == 300
    for prefix in ("A", "B"):  # each writer's turns in the order it wrote them
        assert [i for i in ids if i.startswith(prefix)] == [f"{prefix}-{n}" for n in range(1, 151)]
    assert ids != sorted(ids)  # the two really interleaved


async def test_a_record_outlives_the_process_that_wrote_it(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    run_proc(db, "join", ROOM, WHO, "s1")
    run_proc(db, "append", ROOM, WHO, "A", 3)
    # every writer has exited: a restarted worker's job finds the whole conversation
    (back,) = run_proc(db, "join", ROOM, WHO, "s2")
    assert back["kind"] == "returning" and back["items"] == ["A-1", "A-2", "A-3"]


async def test_leases_fence_writers_across_processes(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    run_proc(db, "join", ROOM, WHO, "s1")
    (first,) = run_proc(db, "lease", ROOM, WHO, "worker-a")
    (held,) = run_proc(db, "lease", ROOM, WHO, "worker-b")
    assert held == {**held, "event": "held", "owner": "worker-a"}
    (taken,) = run_proc(db, "lease", ROOM, WHO, "worker-b", "force")
    assert taken["token"] > first["token"]
    # the first worker, taken over, writes on: its turn is merged, its handle refused
    appended, refused = run_proc(db, "fenced-writes", ROOM, WHO, first["token"])
    assert appended["merged"] and appended["added"] == 1 and refused["event"] == "refused"
    record = await load_fresh(db)
    assert record.item_ids == ["late"] and record.gemini is None


async def test_one_room_lease_per_host_and_a_killed_holder_lapses(tmp_path: Path) -> None:
    db, ttl = tmp_path / "sessions.sqlite3", 1.0
    holder = await asyncio.create_subprocess_exec(
        *proc_args(db, "hold-room", ROOM, "worker-a", ttl), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        acquired = json.loads(await asyncio.wait_for(holder.stdout.readline(), 30))
        standby = SqliteRoomLease(db, ROOM, "worker-b", ttl=ttl)
        for _ in range(3):  # the holder renews: nobody else gets the room
            assert await standby.acquire() is None
            await asyncio.sleep(ttl / 2)
        assert (await standby.state()).owner == "worker-a"
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        # what nobody renews lapses within one ttl (how soon it is taken is not timed here)
        left = (await standby.state()).expires_in
        assert left is None or left <= ttl
        while (token := await standby.acquire()) is None:  # noqa: ASYNC110 - standbys poll
            await asyncio.sleep(0.05)
        assert token > acquired["token"]
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


# -- a file that cannot be used: one line, naming the setting ---------------------------------


def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    path.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(DatabaseFileError, match="is not a SQLite database") as refused:
        SqliteStore(path)
    assert "\n" not in str(refused.value) and "SESSION_DB_PATH" in str(refused.value)
    assert path.read_text().startswith("these are my notes")  # left as it was


def test_another_program_s_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(DatabaseFileError, match="another program's SQLite database"):
        SqliteStore(path)


def test_a_directory_that_cannot_be_created_or_written_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DatabaseFileError, match="cannot create the directory"):
        SqliteStore(tmp_path / "a-file" / "sessions.sqlite3")
    if os.geteuid() == 0:
        return  # root writes anywhere: only the case above can be shown
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(DatabaseFileError, match="not writable"):
        SqliteStore(locked / "sessions.sqlite3")


def test_preflight_and_doctor_say_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    bad = check_session_db(load_settings(session_db_path=str(tmp_path / "a-file" / "s.db")))
    assert not bad.ok and "SESSION_DB_PATH" in bad.detail and "\n" not in bad.detail
    good = check_session_db(load_settings())
    assert good.ok and good.detail.startswith(str(Path.cwd() / ".data" / "sessions.sqlite3"))


# -- faults under a running call: answered from memory, nothing lost ---------------------------


async def test_a_locked_file_never_loses_a_turn(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    store = SqliteStore(db, busy_timeout=0.1)
    await store.join(ROOM, WHO, "s1")
    await store.append(ROOM, WHO, items=[turn(1)])
    # another process holds the write lock (a backup, a stuck writer) beyond the busy timeout
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for n in range(2, 6):
            assert (await store.append(ROOM, WHO, items=[turn(n)])).items_added == 1
        await store.set_gemini_handle(ROOM, WHO, "handle-5", ["item_5"])
        assert store.pending_writes == 5
        # reads come from memory meanwhile, and a lease cannot be granted
        record = await store.load(ROOM, WHO)
        assert record is not None and record.item_ids == [f"item_{n}" for n in range(1, 6)]
        with pytest.raises(StoreUnavailableError):
            await store.acquire_lease(ROOM, WHO, "worker-a", 5)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert await store.wait_flushed(10)
    record = await load_fresh(db)
    assert record.item_ids == [f"item_{n}" for n in range(1, 6)]
    assert record.gemini.handle == "handle-5"
    await store.aclose()


async def test_a_join_while_the_file_is_locked_is_served_then_settled(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    earlier = SqliteStore(db)
    await earlier.join(ROOM, WHO, "s1")
    await earlier.append(ROOM, WHO, items=[turn(1), turn(2)])
    await earlier.leave(ROOM, WHO, "s1")
    await earlier.aclose()

    store = SqliteStore(db, busy_timeout=0.1)  # a new job: it has no copy of the record
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        outcome = await store.join(ROOM, WHO, "s2")
        # served at once from memory: the file's own answer is still to come
        assert outcome.kind is JoinKind.NEW and outcome.settled is not None
        assert not outcome.settled.done()
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    settled = await asyncio.wait_for(outcome.settled, 10)
    assert settled.kind is JoinKind.RETURNING and settled.record.item_ids == ["item_1", "item_2"]
    await store.aclose()


async def test_a_full_disk_never_loses_a_turn(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite3"
    store = SqliteStore(db)
    await store.join(ROOM, WHO, "s1")
    # the file may not grow any more: the next write that needs a page fails SQLITE_FULL
    await store._db.write(lambda conn: conn.execute("PRAGMA max_page_count = 1"))
    big = [{**turn(n), "content": ["x" * 20_000]} for n in range(1, 4)]
    for item in big:
        await store.append(ROOM, WHO, items=[item])
    assert store.pending_writes == 3 and store.write_queue.outages == 1
    await store._db.write(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
    assert await store.wait_flushed(10)
    assert (await load_fresh(db)).item_ids == ["item_1", "item_2", "item_3"]
    await store.aclose()


# -- bounds, sweeping, encryption at rest -------------------------------------------------------


async def test_the_file_is_bounded_and_expired_records_are_swept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    store = SqliteStore(
        tmp_path / "sessions.sqlite3", max_records=3, retention=0.3,
        clock=clock.time, monotonic=clock.monotonic,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        for n in range(5):
            await store.join(ROOM, f"user{n}", "s1")
            await store.append(ROOM, f"user{n}", items=[turn(n)])
    kept = [await store.load(ROOM, f"user{n}") is not None for n in range(5)]
    assert kept == [False, False, True, True, True]
    assert store.evicted == 2 and "user0" not in caplog.text
    for n in range(2, 5):
        await store.leave(ROOM, f"user{n}", "s1")
    clock.advance(5.0)  # past the retention, and past when the next write sweeps
    await store.join(ROOM, "later", "s1")
    assert sqlite_exec(store, "SELECT count(*) FROM records") == [(1,)]
    assert sqlite_exec(store, "SELECT count(*) FROM entries") == [(0,)]
    await store.aclose()


async def test_an_encrypted_file_holds_no_words_and_no_names(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "sessions.sqlite3", keyring=KeyRing.parse(KEY_A))
    await store.join(ROOM, WHO, "s1")
    await store.append(ROOM, WHO, items=[{"id": "i1", "text": "my secret words"}])
    await store.update_profile(ROOM, WHO, metadata={"plan": "platinum"})
    record = await store.load(ROOM, WHO)
    assert record is not None and record.items == ({"id": "i1", "text": "my secret words"},)
    await store.aclose()
    stored = file_bytes(tmp_path)
    for plain in (b"secret words", b"platinum", WHO.encode(), ROOM.encode()):
        assert plain not in stored


# -- the worker's default: this store and its room lease, from the same settings ---------------


async def test_default_settings_choose_the_file_and_its_room_lease() -> None:
    backends = open_backends(load_settings())
    assert isinstance(backends.store, SqliteStore)
    assert backends.store.path == Path.cwd() / ".data" / "sessions.sqlite3"
    assert isinstance(backends.room_lease(ROOM, "job-1"), SqliteRoomLease)
    await backends.aclose()
    in_process = open_backends(load_settings(session_db_path=":memory:"))
    assert isinstance(in_process.store, MemoryStore)
    assert isinstance(in_process.room_lease(ROOM, "job-1"), LocalRoomLease)


async def test_a_later_job_on_the_default_store_welcomes_the_participant_back() -> None:
    """Each job opens the store from the settings, as each job process does: the second
    finds the first's conversation in the file (a room that closed, a worker restart)."""
    basic = SCENARIOS["basic"]
    first = await run_scenario(
        "basic", basic.run, settings=load_settings(), llm=basic.scripted_llm(),
        printer=lambda _: None,
    )  # fmt: skip
    assert first.violations == []

    async def comes_back(sim: Simulation) -> None:
        await sim.join("user-1")
        sim.expect_agent_turn("welcome back")
        await sim.wait_for_agent_replies(1)

    second = await run_scenario(
        "comes-back", comes_back, settings=load_settings(),
        llm=ScriptedLLM(["Welcome back!"]), printer=lambda _: None,
    )  # fmt: skip
    assert second.violations == []
    seen = [(i["role"], i["text"]) for i in second.model_requests[0] if i["role"] == "user"]
    assert seen == [(r, t) for r, t in (
        (i["role"], i["text"]) for i in first.model_requests[-1]) if r == "user"]  # fmt: skip


# -- operator commands on the file ----------------------------------------------------------------


def test_sessions_commands_read_and_purge_the_file_and_reads_change_nothing() -> None:
    runner, wide = CliRunner(), {"COLUMNS": "250"}
    empty = runner.invoke(app, ["sessions", "list"])
    assert empty.exit_code == 0 and "0 sessions" in empty.stdout
    assert not (Path.cwd() / ".data").exists()  # a read creates nothing

    async def write() -> SqliteStore:
        store = open_session_store(load_settings())
        assert isinstance(store, SqliteStore)
        for who in ("ann", "bob"):
            await store.join("r1", who, "s1")
            await store.append("r1", who, items=[turn(1), turn(2)])
        return store

    store = asyncio.run(write())
    sqlite_exec(store, "UPDATE records SET meta = x'7b6e6f74' WHERE pkey = ?",
                participant_hash("r1", "bob"))  # fmt: skip
    rows = sqlite_exec(store, "SELECT * FROM records ORDER BY pkey")
    listed = runner.invoke(app, ["sessions", "list"], env=wide)
    assert listed.exit_code == 1 and "1 sessions" in listed.stdout and "ann" in listed.stdout
    assert "1 record(s) unreadable" in listed.stderr
    shown = runner.invoke(app, ["sessions", "show", "ann", "--room", "r1"])
    assert json.loads(shown.stdout)["items"] == [turn(1), turn(2)]
    assert sqlite_exec(store, "SELECT * FROM records ORDER BY pkey") == rows  # unchanged

    assert asyncio.run(store.load("r1", "bob")) is None  # a worker quarantines it
    moved = runner.invoke(app, ["sessions", "quarantine"], env=wide)
    assert moved.exit_code == 0 and "1 quarantined" in moved.stdout and "r1" in moved.stdout
    (key,) = [row[0] for row in sqlite_exec(store, "SELECT pkey FROM records WHERE note != ''")]
    restored = runner.invoke(app, ["sessions", "restore", key])
    assert restored.exit_code == 0 and "still unreadable" in restored.stderr

    purged = runner.invoke(app, ["sessions", "purge", "--room", "r1", "--yes"])
    assert "deleted 2 session(s) and 0 quarantined" in purged.stdout
    assert sqlite_exec(store, "SELECT count(*) FROM records") == [(0,)]
    asyncio.run(store.aclose())
