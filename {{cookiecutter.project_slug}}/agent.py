"""Entry point: `python agent.py COMMAND`; run `python agent.py --help` for the commands.

`python -m livekit.agents start agent.py` also works: it finds `server` here. `server` is
loaded on first use (module `__getattr__`), after the settings are validated: `--help` never
imports livekit-agents, and only the commands that run the worker import `worker.py`.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livekit.agents import AgentServer

    server: AgentServer


def __getattr__(name: str) -> Any:
    if name == "server":
        from {{ cookiecutter.package_name }}.cli import load_server

        return load_server()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # livekit's discovery looks for `server` in dir(module)
    return sorted([*globals(), "server"])


if __name__ == "__main__":
    from {{ cookiecutter.package_name }}.cli import main

    main()
