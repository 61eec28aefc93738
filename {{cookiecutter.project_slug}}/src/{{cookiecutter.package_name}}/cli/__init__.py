"""The command line behind `python agent.py ...` and the project's console script.

One module per command group: ``run`` (dev, start, console, download-files), ``doctor``,
``token``, ``sessions`` (sessions ..., transcript; ``_store_visit``: how they reach the store)
and ``simulate``; ``_common`` holds what they share. Each command validates the settings when
it runs, and a problem the user can fix (a bad flag, a bad setting, a service down) is one line
on stderr and a non-zero exit.
Importing this package (and `--help`) reads no setting and loads no livekit code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from . import doctor, run, sessions, simulate, token
from ._common import OneLineErrors, print_settings_problems, quiet_dev_key_warning

if TYPE_CHECKING:
    from livekit.agents import AgentServer

app = typer.Typer(
    cls=OneLineErrors,
    help="{{ cookiecutter.project_name }}: a LiveKit voice agent worker.",
    no_args_is_help=True,
    add_completion=False,
    # tracebacks with locals would print keys and tokens
    pretty_exceptions_show_locals=False,
)
app.command()(run.dev)
app.command()(run.start)
app.command()(run.console)
app.command("download-files")(run.download_files)
app.command()(doctor.doctor)
app.command()(token.token)
app.command()(simulate.simulate)
app.add_typer(sessions.sessions_app, name="sessions")
app.command()(sessions.transcript)


def load_server() -> AgentServer:
    """The worker's AgentServer, `agent.server`, loaded on first use (it imports livekit and
    the model plugins). Invalid settings are one line each and exit 2, as in every command."""
    from ..settings import SettingsError, load_settings

    quiet_dev_key_warning()
    try:
        load_settings()  # validated here: whatever worker.py reads, a bad one never gets there
        from ..worker import server
    except SettingsError as exc:
        print_settings_problems(exc.problems)
        raise SystemExit(2) from None
    return server


def main() -> None:
    """Console-script entry point."""
    app(prog_name=Path(sys.argv[0]).name if sys.argv else None)
