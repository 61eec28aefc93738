"""Log fields: bound once per job, carried across livekit's process boundary; participants
named by one keyed hash."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog
from livekit.agents import JobExecutorType

from {{ cookiecutter.package_name }}.log import (
    DEVELOPMENT_IDENTITY_HASH_KEY,
    RedactPersonalData,
    bind_job_context,
    configure_identity_hash,
    get_logger,
    identity_hash_key,
    identity_ref,
    setup_structlog,
)
from {{ cookiecutter.package_name }}.settings import load_settings


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.getMessage() == "job started":
            self.arrived.set()


def test_bound_fields_reach_every_line_and_identities_are_hashed() -> None:
    setup_structlog()
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        bind_job_context(job_id="job-1", room="room-a", participant="alice@example.com")
        get_logger("test").info("hello", turn=3)
    structlog.contextvars.clear_contextvars()
    assert logs == [
        {
            "event": "hello",
            "log_level": "info",
            "turn": 3,
            "job_id": "job-1",
            "room": "room-a",
            "participant": identity_ref("alice@example.com"),
        }
    ]
    assert "alice" not in identity_ref("alice@example.com")


async def test_fields_arrive_from_a_real_process_mode_job() -> None:
    """The worker's real entrypoint runs in a job process; its log record arrives in the
    worker process with job_id and room as plain record attributes."""
    from {{ cookiecutter.package_name }}.worker import server

    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    assert server._job_executor_type == JobExecutorType.PROCESS  # livekit's default on Linux
    started_worker = asyncio.Event()
    server.once("worker_started", started_worker.set)
    run = asyncio.create_task(server.run(devmode=True, unregistered=True))
    try:
        await asyncio.wait_for(started_worker.wait(), timeout=60)
        await server.simulate_job("logging-room", fake_job=True)
        await asyncio.wait_for(handler.arrived.wait(), timeout=60)
    finally:
        root.removeHandler(handler)
        if started_worker.is_set():  # its job processes end with it, so none outlives pytest
            await asyncio.wait_for(server.aclose(), timeout=60)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(run, timeout=60)
    started = vars(next(r for r in handler.records if r.getMessage() == "job started"))
    assert started["room"] == "logging-room"
    assert started["job_id"].startswith("mock-job-")
    assert started["process"] != __import__("os").getpid()


async def test_no_raw_identity_reaches_the_log_handlers(caplog: pytest.LogCaptureFixture) -> None:
    """livekit logs the linked participant's identity at INFO; the handlers see a hash."""
    from {{ cookiecutter.package_name }}.settings import load_settings
    from {{ cookiecutter.package_name }}.simulation import (
        SCENARIOS,
        run_scenario,
    )

    identity = "alice@example.com"

    async def alice(sim) -> None:
        await sim.join(identity)
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        await sim.say(identity, "hello")

    basic = SCENARIOS["basic"]
    # another test's CLI run may have quietened livekit: this one needs its INFO lines
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="livekit"):
        obs = await run_scenario(
            "alice",
            alice,
            settings=load_settings(),
            llm=basic.scripted_llm(),
            printer=lambda _: None,
        )
    assert obs.violations == []
    linked = [r for r in caplog.records if r.getMessage() == "RoomIO linked to participant"]
    assert linked
    assert linked[0].__dict__["lk.pii.participant_identity"] == identity_ref(identity)
    leaked = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO
        and (identity in r.getMessage() or identity in map(str, r.__dict__.values()))
    ]
    assert leaked == []


def test_personal_fields_livekit_marks_are_redacted() -> None:
    record = logging.LogRecord("livekit.agents", logging.WARNING, "", 0, "skipping", (), None)
    record.__dict__["lk.pii.user_input"] = "my card number is 4242"
    record.__dict__["lk.pii.participant_identity"] = "alice"
    record.__dict__["participant"] = identity_ref("alice")
    assert RedactPersonalData().filter(record)
    assert record.__dict__["lk.pii.user_input"] == "<redacted: 22 characters>"
    assert record.__dict__["lk.pii.participant_identity"] == identity_ref("alice")
    assert record.__dict__["participant"] == identity_ref("alice")  # already a hash


@pytest.fixture
def keyed_hash() -> Iterator[None]:
    """Lets a test key the process's identity hash; the development key afterwards."""
    yield
    configure_identity_hash(load_settings())


def test_identity_hash_is_keyed_by_the_deployment(
    monkeypatch: pytest.MonkeyPatch, keyed_hash: None
) -> None:
    identity = "user-734519"
    unkeyed = hashlib.sha256(identity.encode()).hexdigest()
    assert identity_hash_key(load_settings()) == DEVELOPMENT_IDENTITY_HASH_KEY
    development = identity_ref(identity)

    monkeypatch.setenv("LIVEKIT_API_SECRET", "deployment-one-secret")
    configure_identity_hash(load_settings())
    one = identity_ref(identity)
    monkeypatch.setenv("LIVEKIT_API_SECRET", "deployment-two-secret")
    configure_identity_hash(load_settings())
    two = identity_ref(identity)
    monkeypatch.setenv("IDENTITY_HASH_KEY", "a-key-of-its-own-0123456789")
    configure_identity_hash(load_settings())
    own = identity_ref(identity)

    assert len({development, one, two, own}) == 4
    for ref in (development, one, two, own):
        assert ref.startswith("p-") and ref[2:] not in unkeyed  # a plain sha256 does not match
        assert identity not in ref


def _hash_in_a_new_process(**env: str) -> str:
    code = (
        "from {{ cookiecutter.package_name }}.log import configure_identity_hash\n"
        "from {{ cookiecutter.package_name }}.log import identity_ref\n"
        "from {{ cookiecutter.package_name }}.settings import load_settings\n"
        "configure_identity_hash(load_settings())\n"
        "print(identity_ref('user-734519'))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "IDENTITY_"))}
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_two_processes_with_one_secret_agree(
    monkeypatch: pytest.MonkeyPatch, keyed_hash: None
) -> None:
    first = _hash_in_a_new_process(LIVEKIT_API_SECRET="shared-secret")
    second = _hash_in_a_new_process(LIVEKIT_API_SECRET="shared-secret")
    other = _hash_in_a_new_process(LIVEKIT_API_SECRET="another-secret")
    assert first == second != other
    monkeypatch.setenv("LIVEKIT_API_SECRET", "shared-secret")
    configure_identity_hash(load_settings())
    assert identity_ref("user-734519") == first  # and this process, configured the same way


async def test_events_and_logs_name_a_participant_by_the_same_hash(
    monkeypatch: pytest.MonkeyPatch, keyed_hash: None
) -> None:
    from {{ cookiecutter.package_name }}.resilience.store import open_store
    from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

    monkeypatch.setenv("LIVEKIT_API_SECRET", "events-secret")
    configure_identity_hash(load_settings())
    with RedisServer() as server, server.client() as watcher:
        pubsub = watcher.pubsub()
        pubsub.subscribe("lkagent:events")
        store = open_store(redis_url=server.url)
        await store.join("room-e", "erin-keyed", "s1")
        await store.leave("room-e", "erin-keyed", "s1")
        await store.join("room-e", "erin-keyed", "s2")
        await store.aclose()
        events = []
        while (message := pubsub.get_message(timeout=1)) is not None:
            if message["type"] == "message":
                events.append(json.loads(message["data"]))
        pubsub.close()
    assert [e["type"] for e in events] == ["session_ended", "participant_returned"]
    assert {e["participant"] for e in events} == {identity_ref("erin-keyed")}
