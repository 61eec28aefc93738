"""The agent's RPC methods as a frontend calls them: malformed payloads get 4000 and one line,
and a participant's restart requests are rate-limited before they reach its conversation."""

from __future__ import annotations

import asyncio
import json

import pytest
from livekit import rtc

from {{ cookiecutter.package_name }}.resilience.rpc import (
    ERROR_INVALID_REQUEST,
    ERROR_TOO_SOON,
    METHOD_HISTORY,
    METHOD_RESTART,
    RESTART_RPC_MIN_INTERVAL_S,
    RpcRoutes,
)
from {{ cookiecutter.package_name }}.resilience.transcript import TranscriptLog
from {{ cookiecutter.package_name }}.testing import SimulatedRoom
from {{ cookiecutter.package_name }}.testing.room.rpc import MAX_RPC_PAYLOAD_BYTES

USER = "user-1"
OTHER = "user-2"
AGENT = "agent"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRestart:
    """A conversation's restart: counts calls and stays in flight for a moment."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def __call__(self, reason: str) -> int:
        self.reasons.append(reason)
        await asyncio.sleep(0.05)
        return len(self.reasons)


def routed_room(clock: FakeClock) -> tuple[SimulatedRoom, dict[str, FakeRestart]]:
    room = SimulatedRoom(agent_identity=AGENT)
    routes = RpcRoutes(room.local_participant, clock=clock)
    restarts = {}
    for identity in (USER, OTHER):
        room.add_participant(identity)
        restarts[identity] = FakeRestart()
        log = TranscriptLog()
        log.append(id="SG_1", role="agent", speaker=AGENT, text="Hello!")
        routes.add(identity, restarts[identity], log)
    return room, restarts


async def call(room: SimulatedRoom, identity: str, method: str, payload: str = "") -> object:
    """The response payload, decoded, or the ``rtc.RpcError`` the agent answered with."""
    try:
        return json.loads(await room.perform_rpc_as(identity, method, payload))
    except rtc.RpcError as e:
        return e


async def test_concurrent_restarts_from_one_participant_reach_the_conversation_once() -> None:
    clock = FakeClock()
    room, restarts = routed_room(clock)

    answers = await asyncio.gather(*(call(room, USER, METHOD_RESTART) for _ in range(8)))

    assert restarts[USER].reasons == ["rpc"]
    assert [a for a in answers if not isinstance(a, rtc.RpcError)] == [{"ok": True, "restarts": 1}]
    refused = [a for a in answers if isinstance(a, rtc.RpcError)]
    assert len(refused) == 7
    for error in refused:
        assert error.code == ERROR_TOO_SOON
        assert error.message.startswith("too soon: ") and "\n" not in error.message
        assert "in progress" in error.message

    # finished 3 s ago: still too soon, and the message says how long to wait
    clock.now += 3
    again = await call(room, USER, METHOD_RESTART, '{"reason": "user_asked"}')
    assert isinstance(again, rtc.RpcError) and again.code == ERROR_TOO_SOON
    wait = RESTART_RPC_MIN_INTERVAL_S - 3
    assert again.message == f"too soon: a restart finished 3 s ago; retry in {wait:.0f} s"
    assert restarts[USER].reasons == ["rpc"]

    clock.now += wait
    assert await call(room, USER, METHOD_RESTART, '{"reason": "user_asked"}') == {
        "ok": True,
        "restarts": 2,
    }
    assert restarts[USER].reasons == ["rpc", "rpc:user_asked"]
    await room.disconnect()


async def test_one_participants_restart_does_not_limit_another() -> None:
    clock = FakeClock()
    room, restarts = routed_room(clock)

    first, second = await asyncio.gather(
        call(room, USER, METHOD_RESTART), call(room, OTHER, METHOD_RESTART)
    )
    third = await call(room, OTHER, METHOD_RESTART)

    assert first == second == {"ok": True, "restarts": 1}
    assert isinstance(third, rtc.RpcError) and third.code == ERROR_TOO_SOON
    assert restarts[USER].reasons == restarts[OTHER].reasons == ["rpc"]
    await room.disconnect()


DEEP = "[" * 7000 + "]" * 7000
MALFORMED_ANY = {
    "not json": "not JSON",
    '{"after": 1} trailing': "not JSON",
    DEEP: "nests too deeply",
    '{"x": ' + DEEP + "}": "nests too deeply",
    '{"after": ' + "9" * 5000 + "}": "too many digits",
    '{"reason": ' + "9" * 5000 + "}": "too many digits",
    "NaN": "NaN is not a JSON value",
    '{"after": Infinity}': "Infinity is not a JSON value",
    '{"reason": "x", "note": -Infinity}': "-Infinity is not a JSON value",
    "[1]": "must be a JSON object",
    '"a string"': "must be a JSON object",
    "42": "must be a JSON object",
    "null": "must be a JSON object",
}
MALFORMED_HISTORY = {
    '{"after": 1e400}': "after must be",
    '{"after": -1}': "after must be",
    '{"after": "3"}': "after must be",
    '{"after": 1.5}': "after must be",
    '{"after": true}': "after must be",
    '{"after": null}': "after must be",
    '{"limit": 1e400}': "limit must be",
    '{"limit": 0}': "limit must be",
    '{"limit": 101}': "limit must be",
    '{"limit": "10"}': "limit must be",
    '{"limit": [10]}': "limit must be",
}
MALFORMED_RESTART = {
    '{"reason": "Not Allowed!"}': "reason must be",
    '{"reason": ""}': "reason must be",
    '{"reason": "' + "a" * 65 + '"}': "reason must be",
    '{"reason": 1e400}': "reason must be",
    '{"reason": ["x"]}': "reason must be",
    '{"reason": null}': "reason must be",
}
CASES = [(METHOD_HISTORY, p, w) for p, w in {**MALFORMED_ANY, **MALFORMED_HISTORY}.items()] + [
    (METHOD_RESTART, p, w) for p, w in {**MALFORMED_ANY, **MALFORMED_RESTART}.items()
]


@pytest.mark.parametrize(("method", "payload", "what"), CASES)
async def test_malformed_payload_gets_4000_and_one_line(
    method: str, payload: str, what: str
) -> None:
    assert len(payload.encode()) <= MAX_RPC_PAYLOAD_BYTES  # the SDK would refuse it first
    room, restarts = routed_room(FakeClock())

    answer = await call(room, USER, method, payload)

    assert isinstance(answer, rtc.RpcError), answer
    assert answer.code == ERROR_INVALID_REQUEST
    assert answer.message.startswith("invalid request: ") and what in answer.message
    assert "\n" not in answer.message and len(answer.message) < 100
    # a refused restart spends nothing, and does not count against the participant
    assert restarts[USER].reasons == []
    if method == METHOD_RESTART:
        assert await call(room, USER, METHOD_RESTART) == {"ok": True, "restarts": 1}
    await room.disconnect()


async def test_valid_payloads_still_work() -> None:
    room, restarts = routed_room(FakeClock())
    for payload in ("", "  ", "{}", '{"after": 0, "limit": 100}', '{"after": 1, "unknown": 2}'):
        page = await call(room, USER, METHOD_HISTORY, payload)
        assert isinstance(page, dict), page
        assert page["latest"] == 1 and page["next"] is None
    huge_after = await call(room, USER, METHOD_HISTORY, '{"after": ' + "9" * 4000 + "}")
    assert isinstance(huge_after, dict) and huge_after["segments"] == []
    assert await call(room, USER, METHOD_RESTART, '{"reason": "ui.retry-2"}') == {
        "ok": True,
        "restarts": 1,
    }
    assert restarts[USER].reasons == ["rpc:ui.retry-2"]
    await room.disconnect()
