"""One person, several devices: a user key makes two identities one conversation."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import jwt
import pytest
from livekit import rtc
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.backends import Backends, open_backends
from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.devices import (
    USER_KEY_ATTRIBUTE,
    user_key_problem,
)
from {{ cookiecutter.package_name }}.resilience.rpc import (
    ERROR_FORBIDDEN,
    METHOD_RESTART,
)
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.simulation import SCENARIOS, Simulation, run_scenario
from {{ cookiecutter.package_name }}.simulation.scenario_devices import (
    LAPTOP,
    ON_LAPTOP,
    ON_PHONE,
    PHONE,
    REPLIES,
    USER_KEY,
    read_history,
)
from {{ cookiecutter.package_name }}.testing import ScriptedLLM
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

ROOM = "sim-room"
KEYED = {"attributes": {USER_KEY_ATTRIBUTE: USER_KEY}}


@pytest.fixture(params=["memory", "redis"])
async def backends(request: pytest.FixtureRequest) -> AsyncIterator[Backends]:
    if request.param == "memory":
        shared = open_backends(load_settings(session_db_path=":memory:"))
        yield shared
        await shared.aclose()
        return
    with RedisServer() as server:
        shared = open_backends(load_settings(redis_url=server.url))
        yield shared
        await shared.aclose()


@pytest.fixture
async def memory() -> AsyncIterator[Backends]:
    shared = open_backends(load_settings(session_db_path=":memory:"))
    yield shared
    await shared.aclose()


def stored_messages(record) -> list[tuple[str, str]]:
    return [
        (item["role"], " ".join(item["content"]))
        for item in record.items
        if item["type"] == "message"
    ]


async def test_two_identities_with_one_user_key_continue_one_conversation(
    backends: Backends,
) -> None:
    """`simulate --scenario devices`: laptop, then phone, one conversation in the store."""
    devices = SCENARIOS["devices"]
    obs = await run_scenario(
        "devices",
        devices.run,
        settings=backends.settings,
        llm=devices.scripted_llm(),
        backends=backends,
        printer=lambda _: None,
        checks=devices.checks,
    )
    # one welcome back, the laptop kept receiving, both read the whole history, the phone
    # was answered knowing the laptop's turns, nothing ended when the laptop left
    assert obs.violations == []
    assert obs.job_ended == []
    record = await backends.store.load(ROOM, USER_KEY)
    assert record is not None and record.reconnect_count == 1
    assert stored_messages(record) == [
        ("assistant", REPLIES[0]),
        ("user", ON_LAPTOP[0]),
        ("assistant", REPLIES[1]),
        ("user", ON_LAPTOP[1]),
        ("assistant", REPLIES[2]),
        ("assistant", REPLIES[3]),
        ("user", ON_PHONE[0]),
        ("assistant", REPLIES[4]),
        ("user", ON_PHONE[1]),
        ("assistant", REPLIES[5]),
    ]
    # the person's record, not one per device
    assert await backends.store.load(ROOM, LAPTOP) is None
    assert await backends.store.load(ROOM, PHONE) is None


async def test_every_later_session_listens_to_the_device_in_use(memory: Backends) -> None:
    """A restart asked from the phone reaches the conversation, and the new session listens
    to the phone, not to the laptop the conversation started with."""
    seen: dict = {}

    async def restart_from_the_phone(sim: Simulation) -> None:
        await sim.join(LAPTOP, **KEYED)
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        await sim.join(PHONE, **KEYED)
        sim.expect_agent_turn("welcome back")
        await sim.wait_for_agent_replies(2)
        first = sim.session
        await sim.room.perform_rpc_as(PHONE, METHOD_RESTART)
        seen["restarted"] = sim.session is not None and sim.session is not first
        linked = sim.session.room_io.linked_participant if sim.session else None
        seen["linked"] = linked.identity if linked else None
        await sim.say(PHONE, "Are you still there?")

    obs = await run_scenario(
        "restart-from-phone",
        restart_from_the_phone,
        settings=memory.settings,
        llm=ScriptedLLM(["Hello!", "Welcome back!", "Yes, still here."]),
        backends=memory,
        printer=lambda _: None,
    )
    # the phone's line was answered after the restart: the new session heard the phone
    assert obs.violations == []
    assert seen == {"restarted": True, "linked": PHONE}


class _Waiter(logging.Handler):
    """Sets an event when a log line with ``message`` arrives."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.seen.set()


async def test_the_conversation_goes_back_to_the_device_that_stays(memory: Backends) -> None:
    """The phone took over and leaves while the laptop stays: the conversation goes back to
    the laptop with no welcome back, and no retention starts (longer than it passes, nothing
    ends). It ends when the last device stays away."""
    settings = memory.settings.model_copy(update={"session_retention_s": 0.3})
    gone = _Waiter("participant did not return")
    seen: dict = {}

    async def phone_leaves(sim: Simulation) -> None:
        await sim.join(LAPTOP, **KEYED)
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        await sim.join(PHONE, **KEYED)
        sim.expect_agent_turn("welcome back")
        await sim.wait_for_agent_replies(2)
        await sim.leave(PHONE)
        await asyncio.sleep(0.6)  # twice the retention period
        await sim.say(LAPTOP, "Back on the laptop.")
        seen["record"] = await memory.store.load(ROOM, USER_KEY)
        seen["laptop_sid"] = sim.room.remote_participants[LAPTOP].sid
        seen["gone_before_the_last_left"] = gone.seen.is_set()
        await sim.leave(LAPTOP)
        sim.expect_job_end("participant did not return")
        await asyncio.wait_for(gone.seen.wait(), timeout=10)

    logger = logging.getLogger("{{ cookiecutter.package_name }}.resilience.returning")
    logger.addHandler(gone)
    logger.setLevel(logging.INFO)
    try:
        obs = await run_scenario(
            "phone-leaves",
            phone_leaves,
            settings=settings,
            llm=ScriptedLLM(["Hello!", "Welcome back!", "Still with you."]),
            backends=memory,
            printer=lambda _: None,
        )
    finally:
        logger.removeHandler(gone)
    assert obs.violations == []
    assert seen["gone_before_the_last_left"] is False
    record = seen["record"]
    assert record.left_at is None and record.active_session.startswith(seen["laptop_sid"] + "/")
    assert obs.job_ended == ["participant did not return"]


async def test_without_a_user_key_two_identities_are_two_conversations(memory: Backends) -> None:
    """As before user keys: a second identity neither takes the conversation over nor reads
    it, and on its own it starts a conversation of its own."""
    seen: dict = {}

    async def two_strangers(sim: Simulation) -> None:
        await sim.join(LAPTOP)
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        await sim.say(LAPTOP, ON_LAPTOP[0])
        await sim.join(PHONE)
        await asyncio.sleep(0.3)  # no welcome back comes (the expected turns say so)
        try:
            await read_history(sim.room, PHONE)
        except rtc.RpcError as exc:
            seen["phone_history"] = exc.code
        await sim.say(LAPTOP, ON_LAPTOP[1])

    first = await run_scenario(
        "two-strangers",
        two_strangers,
        settings=memory.settings,
        llm=ScriptedLLM(REPLIES[:3]),
        backends=memory,
        printer=lambda _: None,
    )
    assert first.violations == []
    assert seen == {"phone_history": ERROR_FORBIDDEN}

    async def phone_alone(sim: Simulation) -> None:
        await sim.join(PHONE)
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        await sim.say(PHONE, ON_PHONE[0])

    second = await run_scenario(
        "phone-alone",
        phone_alone,
        settings=memory.settings,
        llm=ScriptedLLM(["Hello!", "What would you like to pack for?"]),
        backends=memory,
        printer=lambda _: None,
    )
    assert second.violations == []
    # greeted as new, with none of the laptop's turns in context
    assert [i["text"] for i in second.model_requests[-1] if i["role"] == "user"] == [ON_PHONE[0]]
    laptop = await memory.store.load(ROOM, LAPTOP)
    phone = await memory.store.load(ROOM, PHONE)
    assert laptop is not None and phone is not None
    assert laptop.reconnect_count == 0 and phone.reconnect_count == 0


async def test_a_bad_user_key_is_warned_once_and_the_identity_used(
    memory: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    bad = "ada smith"  # a space: not a user key

    async def joins_with_a_bad_key(sim: Simulation) -> None:
        await sim.join(LAPTOP, attributes={USER_KEY_ATTRIBUTE: bad})
        sim.expect_agent_turn("greeting")
        await sim.wait_for_agent_replies(1)
        await sim.say(LAPTOP, ON_LAPTOP[0])

    caplog.set_level(logging.WARNING)
    obs = await run_scenario(
        "bad-key",
        joins_with_a_bad_key,
        settings=memory.settings,
        llm=ScriptedLLM(REPLIES[:2]),
        backends=memory,
        printer=lambda _: None,
    )
    assert obs.violations == []
    warned = [r.getMessage() for r in caplog.records if "user_key" in r.getMessage()]
    assert warned == [
        "user_key attribute ignored; the conversation is keyed by the participant's identity"
    ]
    assert bad not in caplog.text  # a user key may be personal data: never logged
    assert await memory.store.load(ROOM, LAPTOP) is not None
    assert await memory.store.load(ROOM, bad) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("user-ada", None),
        ("auth0|5f7c8ec7c33c6c004bbafe82", None),
        ("ada@example.com", None),
        ("", "is empty"),
        ("x" * 129, "is longer than 128 characters"),
        ("ada smith", "holds other characters"),
        ("adä", "holds other characters"),
    ],
)
def test_user_key_rules(value: str, problem: str | None) -> None:
    assert user_key_problem(value) == problem


@pytest.fixture
def livekit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "wss://example.livekit.cloud")
    monkeypatch.setenv("LIVEKIT_API_KEY", "devkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "a-secret-long-enough-for-hs256-signing!!")


def test_token_carries_the_user_key(livekit_env: None) -> None:
    runner = CliRunner()
    args = ["token", "--identity", LAPTOP, "--room", "r", "--user-key", USER_KEY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    claims = jwt.decode(
        result.stdout.strip(), os.environ["LIVEKIT_API_SECRET"], algorithms=["HS256"]
    )
    assert claims["sub"] == LAPTOP
    assert claims["attributes"] == {USER_KEY_ATTRIBUTE: USER_KEY}
    # the participant cannot change it
    assert not claims["video"].get("canUpdateOwnMetadata")

    plain = runner.invoke(app, ["token", "--identity", LAPTOP, "--room", "r"])
    assert "attributes" not in jwt.decode(
        plain.stdout.strip(), os.environ["LIVEKIT_API_SECRET"], algorithms=["HS256"]
    )


def test_token_refuses_a_bad_user_key_in_one_line(livekit_env: None) -> None:
    result = CliRunner().invoke(
        app, ["token", "--identity", LAPTOP, "--room", "r", "--user-key", "ada smith"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --user-key must be 1 to 128 letters, digits and . _ - : @ | + = / "
        "(this one holds other characters)"
    ]
