"""The ``restart`` scenario: the session is replaced twice mid-conversation and the user
notices nothing.

Once from code (what a model switch does) and once by the participant's ``session.restart``
RPC. The shared invariants then check what a frontend would notice: one agent audio track,
every transcript segment finalised once, one greeting and one answer per turn (no greeting
after a restart), and a model that saw every turn. The scenario also checks that a
re-joining frontend's ``transcript.history`` returns the whole conversation.

It needs ``sim.supervisor``: the job's :class:`SessionSupervisor`, which ``run_job`` hands
to the harness.
"""

from __future__ import annotations

import json

from ..resilience.rpc import METHOD_HISTORY, METHOD_RESTART
from ..resilience.supervisor import SessionSupervisor
from .harness import Simulation
from .scenarios import USER, scenario

RESTART_TURNS = [
    "Hi! Can you help me plan a dinner party?",
    "Six people, and one of them is vegetarian.",
    "Perfect, thank you. That's all.",
]


def _supervisor(sim: Simulation) -> SessionSupervisor:
    supervisor = getattr(sim, "supervisor", None)
    if not isinstance(supervisor, SessionSupervisor):
        raise RuntimeError(
            "the restart scenario needs Simulation.supervisor (the job's SessionSupervisor); "
            "run_job must run the conversation through resilience.supervisor"
        )
    return supervisor


@scenario(
    "restart",
    summary="the session is restarted twice (from code, then by RPC) and nothing is lost",
    replies=[
        "Hello! I'm your voice assistant. How can I help you today?",
        "Of course. How many guests are you expecting?",
        "A mushroom risotto works for everyone, vegetarians included.",
        "You're welcome. Enjoy the party!",
    ],
)
async def restart(sim: Simulation) -> None:
    await sim.join(USER, name="Simulated User")
    sim.expect_agent_turn("greeting")
    await sim.wait_for_agent_replies(1)
    await sim.say(USER, RESTART_TURNS[0])

    supervisor = _supervisor(sim)
    sim.progress("restarting the session from code (as a model switch does)")
    await supervisor.restart("simulate")
    await sim.say(USER, RESTART_TURNS[1])

    sim.progress("the participant asks for a restart over RPC")
    await sim.room.perform_rpc_as(USER, METHOD_RESTART, json.dumps({"reason": "simulate"}))
    await sim.say(USER, RESTART_TURNS[2])
    sim.timings["restarts"] = supervisor.restarts

    history = json.loads(await sim.room.perform_rpc_as(USER, METHOD_HISTORY, ""))
    lines = [segment["text"] for segment in history["segments"]]
    missing = [line for line in RESTART_TURNS if line not in lines]
    if missing or len(lines) != 1 + 2 * len(RESTART_TURNS):
        raise RuntimeError(
            f"transcript.history returned {len(lines)} lines and lacks {len(missing)} user turns"
        )
