"""Log fields: bound once per job, carried across livekit's process boundary."""

from __future__ import annotations

import asyncio
import logging

import pytest
import structlog
from livekit.agents import JobExecutorType

from {{ cookiecutter.package_name }}.log import (
    RedactPersonalData,
    bind_job_context,
    get_logger,
    identity_ref,
    setup_structlog,
)


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
        if started_worker.is_set():
            await server.aclose()
        run.cancel()
    started = next(r for r in handler.records if r.getMessage() == "job started")
    assert started.room == "logging-room"
    assert started.job_id.startswith("mock-job-")
    assert started.process != __import__("os").getpid()


async def test_no_raw_identity_reaches_the_log_handlers(caplog: pytest.LogCaptureFixture) -> None:
    """livekit logs the linked participant's identity at INFO; the handlers see a hash."""
    from {{ cookiecutter.package_name }}.settings import load_settings
    from {{ cookiecutter.package_name }}.simulation import (
        SCENARIOS,
        run_scenario,
    )

    identity = "alice@example.com"

    async def alice(sim) -> None:  # noqa: ANN001
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
