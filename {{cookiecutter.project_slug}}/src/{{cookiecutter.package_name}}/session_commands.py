"""Operator commands on stored sessions: `sessions list | show | purge` and `transcript`.

They read the store the settings choose. The in-memory store lives inside each worker
process, so from this command line only Redis (REDIS_URL) shows live sessions.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer

from .settings import Settings

sessions_app = typer.Typer(help="Inspect and purge stored participant sessions.")

Room = Annotated[str | None, typer.Option(help="Only this room.")]
RequiredRoom = Annotated[str, typer.Option(help="The room the participant was in.")]
Identity = Annotated[str, typer.Argument(help="The participant identity.")]


def _with_store(settings: Settings, action: Callable[[Any], Awaitable[Any]]) -> Any:
    from .resilience.store import StoreError
    from .worker import open_session_store

    if not settings.redis_url:
        typer.echo(
            "note: REDIS_URL is not set; the in-memory store lives inside each worker "
            "process, so nothing is visible from here",
            err=True,
        )

    async def run() -> Any:
        store = open_session_store(settings)
        try:
            return await action(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _settings() -> Settings:
    from .cli import settings_or_exit

    return settings_or_exit()


@sessions_app.command("list")
def list_sessions(room: Room = None) -> None:
    """One line per stored session: room, identity, turns, reconnects, last seen."""
    from rich.console import Console
    from rich.table import Table

    records = _with_store(_settings(), lambda store: store.list_records(room))
    table = Table(title=f"{len(records)} sessions")
    for column in ("room", "identity", "items", "segments", "reconnects", "active", "last seen"):
        table.add_column(column)
    for r in sorted(records, key=lambda r: (r.room, r.last_seen)):
        table.add_row(
            r.room,
            r.identity,
            str(len(r.items)),
            str(len(r.transcript)),
            str(r.reconnect_count),
            "yes" if r.active_session else "no",
            _when(r.last_seen),
        )
    Console().print(table)


@sessions_app.command("show")
def show_session(identity: Identity, room: RequiredRoom) -> None:
    """The whole stored record of one participant, as JSON."""
    from dataclasses import asdict

    record = _with_store(_settings(), lambda store: store.load(room, identity))
    if record is None:
        typer.secho("error: no stored session for that participant in that room", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(asdict(record), indent=2, default=str))


@sessions_app.command("purge")
def purge_sessions(
    room: RequiredRoom,
    identity: Annotated[str | None, typer.Argument(help="Only this participant.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete one participant's session, or every session of a room."""
    what = f"the session of {identity!r}" if identity else "every session"
    if not yes:
        typer.confirm(f"Delete {what} in room {room!r}?", abort=True)
    deleted = _with_store(_settings(), lambda store: store.purge(room, identity))
    typer.echo(f"deleted {deleted} session(s)")


def transcript(identity: Identity, room: RequiredRoom) -> None:
    """Print a participant's transcript, as the frontend showed it."""
    record = _with_store(_settings(), lambda store: store.load(room, identity))
    if record is None:
        typer.secho("error: no stored session for that participant in that room", err=True)
        raise typer.Exit(1)
    for segment in record.transcript:
        typer.echo(f"[{segment.get('speaker', '?')}] {segment.get('text', '')}")
    if not record.transcript:
        typer.echo("(no transcript segments stored)", err=True)
