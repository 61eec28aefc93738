"""What every command shares: one-line errors, the --log-level option, the settings.

A problem the user can fix (a bad flag, a bad setting, a service down) is one line on stderr
and a non-zero exit, never a usage box or a traceback. The settings are read and validated
when a command runs (``settings_or_exit``), never when this package is imported, so
`--help` works whatever the environment holds.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeGuard

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from ..settings import Settings


class OneLineErrors(TyperGroup):
    """Bad flags, unknown commands and invalid settings are one line each and exit 2."""

    def main(  # type: ignore[override]  # click overloads main() on standalone_mode
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        quiet_dev_key_warning()
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            code = 1
        except Exception as exc:
            code = _one_line(exc)
        else:
            code = result if isinstance(result, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _one_line(exc: Exception) -> int:
    """Print ``exc`` as one line and return the exit code; re-raise what is a bug."""
    from ..settings import SettingsError

    if isinstance(exc, SettingsError):  # read by a module a command imports
        print_settings_problems(exc.problems)
        return 2
    if not _is_click_error(exc):
        raise exc
    if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help
        typer.secho(f"error: {_usage_line(exc)}", fg=typer.colors.RED, err=True)
    return exc.exit_code


class _ClickError(Protocol):
    """The shape of a click usage error (click's own, or the one typer vendors)."""

    exit_code: int

    def format_message(self) -> str: ...


def _is_click_error(exc: Exception) -> TypeGuard[_ClickError]:
    # typer >= 0.16 vendors click, older ones use it: recognise either by its shape
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def _usage_line(exc: _ClickError) -> str:
    message = exc.format_message().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None)
    return f"{message} (see `{command} --help`)" if command else message


def quiet_dev_key_warning() -> None:
    """Silence PyJWT's InsecureKeyLengthWarning, printed for every token signed with a secret
    under 32 bytes (as `livekit-server --dev`'s `secret` is): `token`, `dev`, `start` and
    `doctor` say it once instead (_checks.SHORT_SECRET_NOTE)."""
    warnings.filterwarnings(
        "ignore", message=r"The HMAC key is \d+ bytes long", category=UserWarning
    )


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LogLevel = Annotated[
    str,
    typer.Option("--log-level", envvar="LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error line and return the exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def fail_all(problems: Iterable[str], code: int = 2) -> None:
    """Print one error line per problem and exit ``code``; nothing when there are none."""
    problems = list(problems)
    for problem in problems:
        typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(code)


def log_level_problem(value: str) -> list[str]:
    """The problem with a --log-level (or LOG_LEVEL) value, if any."""
    if value.upper() in LOG_LEVELS:
        return []
    return [f"--log-level (or LOG_LEVEL) must be one of {', '.join(LOG_LEVELS)}, not {value!r}"]


def print_settings_problems(problems: Iterable[str]) -> None:
    """One line per settings problem: it names the variable and says what it should be."""
    for problem in problems:
        typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)


def settings_or_exit(*, livekit: bool = False, models: bool = False) -> Settings:
    """Load the settings and check what the command needs; exit 2 with one line per problem.

    Also keys this process's identity hash (logs, events) from them.
    """
    from ..settings import SettingsError, load_settings

    try:
        settings = load_settings().require(livekit=livekit, models=models)
    except SettingsError as exc:
        print_settings_problems(exc.problems)
        raise typer.Exit(2) from None
    from ..log import configure_identity_hash

    configure_identity_hash(settings)
    return settings
