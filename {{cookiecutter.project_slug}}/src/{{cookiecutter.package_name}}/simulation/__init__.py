"""`simulate`: run the real job entrypoint offline, with a scripted user, and check it.

A scenario drives a scripted participant through a `SimulatedRoom` while `worker.run_job`
(the same composition root `dev` uses) runs the agent with scripted models. The harness
prints the conversation as a frontend shows it, records what a frontend and the model saw,
and checks the invariants every conversation must keep; a scenario adds its own.
"""

from .harness import Observations, ScenarioFn, Simulation, run_scenario
from .scenarios import SCENARIOS, Scenario

# scenarios kept in modules of their own register themselves on import
from . import (  # noqa: F401  isort: skip
    scenario_devices,
    scenario_gemini,
    scenario_gemini_soak,
    scenario_multi,
    scenario_redis,
    scenario_restart,
)

__all__ = ["SCENARIOS", "Observations", "Scenario", "ScenarioFn", "Simulation", "run_scenario"]
