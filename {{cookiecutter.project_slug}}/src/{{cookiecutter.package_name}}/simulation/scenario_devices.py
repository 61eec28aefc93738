"""The ``devices`` scenario: a person moves from their laptop to their phone mid-conversation.

Both devices join with the same user key (the ``user_key`` attribute a backend puts in the
token: ``token --user-key``) but different identities. The phone joining takes the
conversation over with one welcome back; its turns are answered with what was said on the
laptop; the laptop, still in the room, keeps receiving the agent's lines; both read the
whole history with ``transcript.history``. The laptop then leaves, and the conversation goes
on on the phone: nothing ends.
"""

from __future__ import annotations

import json
from typing import Any

from ..devices import USER_KEY_ATTRIBUTE
from ..resilience.rpc import METHOD_HISTORY
from ..testing import SimulatedRoom
from .harness import Observations, Simulation
from .invariants import check_conversation
from .scenarios import scenario

LAPTOP, PHONE = "ada-laptop-3f9c", "ada-phone-81d2"  # what a starter frontend mints
USER_KEY = "user-ada"
ON_LAPTOP = ["My name is Ada and I'm planning a trip to Lisbon.", "What should I pack?"]
ON_PHONE = ["I'm on my phone now. Remind me what to pack?", "And what's the weather in May?"]
REPLIES = [
    "Hello! I'm your voice assistant. How can I help you today?",
    "Nice to meet you, Ada. Lisbon is lovely.",
    "Light layers and comfortable shoes for the hills.",
    "Welcome back, Ada! We were talking about your trip to Lisbon.",
    "You asked what to pack: light layers and comfortable shoes.",
    "Mild and sunny, around 22 degrees.",
]


def _device(name: str) -> dict[str, Any]:
    """How a device of Ada's joins: its own identity, her user key."""
    return {"name": name, "attributes": {USER_KEY_ATTRIBUTE: USER_KEY}}


async def read_history(room: SimulatedRoom, identity: str) -> list[tuple[str, str]]:
    """``identity``'s ``transcript.history`` call, every page: (role, text) per line; an
    ``rtc.RpcError`` is raised as the agent answered it."""
    lines: list[tuple[str, str]] = []
    after: int | None = 0
    while after is not None:
        answer = json.loads(
            await room.perform_rpc_as(identity, METHOD_HISTORY, json.dumps({"after": after}))
        )
        lines += [(s["role"], s["text"]) for s in answer["segments"]]
        after = answer["next"]
    return lines


@scenario(
    "devices",
    summary="a person moves from laptop to phone mid-conversation (one user key)",
    replies=REPLIES,
    checks=lambda obs, sim: check_devices(obs, sim),
)
async def devices(sim: Simulation) -> None:
    await sim.join(LAPTOP, **_device("Ada (laptop)"))
    sim.expect_agent_turn("greeting")
    await sim.wait_for_agent_replies(1)
    for line in ON_LAPTOP:
        await sim.say(LAPTOP, line)

    before = sim.agent_replies()
    await sim.join(PHONE, **_device("Ada (phone)"))
    sim.expect_agent_turn("welcome back")
    await sim.wait_for_agent_replies(before + 1)
    await sim.say(PHONE, ON_PHONE[0])
    sim.findings["laptop_saw"] = [
        line.text for line in sim.room.transcript_seen_by(LAPTOP) if line.final
    ]
    sim.findings["histories"] = {
        identity: await read_history(sim.room, identity) for identity in (LAPTOP, PHONE)
    }

    await sim.leave(LAPTOP)
    await sim.say(PHONE, ON_PHONE[1])


def check_devices(obs: Observations, sim: Simulation) -> list[str]:
    """One conversation's invariants, and what the person on two devices must see."""
    problems = check_conversation(obs, sim.user_lines, sim.expected_roles)
    saw = sim.findings.get("laptop_saw", [])
    if not {REPLIES[3], REPLIES[4]} <= set(saw):
        problems.append("the laptop stopped receiving the agent's lines once the phone took over")
    histories = sim.findings.get("histories", {})
    expected = [
        ("agent", REPLIES[0]),
        *[
            pair
            for i, line in enumerate(ON_LAPTOP)
            for pair in (("user", line), ("agent", REPLIES[1 + i]))
        ],
        ("agent", REPLIES[3]),
        ("user", ON_PHONE[0]),
        ("agent", REPLIES[4]),
    ]
    for identity in (LAPTOP, PHONE):
        if histories.get(identity) != expected:
            problems.append(f"transcript.history from {identity} is not the whole conversation")
    # the phone's first turn was answered knowing the laptop's turns
    answered = next((r for r in obs.model_requests if any(i["text"] == ON_PHONE[0] for i in r)), [])
    if not all(any(i["text"] == line for i in answered) for line in ON_LAPTOP):
        problems.append("the phone's turn was answered without the laptop's turns in context")
    return problems
