"""Operator commands on stored sessions: `sessions list | show | purge | quarantine | restore`
and `transcript`.

They talk to the store directly (Redis when REDIS_URL is set, else the SQLite file
SESSION_DB_PATH), never through a worker's cache: when it cannot be reached they say so in one
line and exit 1. Reads never write: a record they cannot read (a key missing from
SESSION_ENCRYPTION_KEYS, corruption) is reported, left as it is, and the command exits 1.
With SESSION_DB_PATH=:memory: records live inside each worker process: nothing to see here.

Every command that reaches the store logs one audit event (``audit.py``): the operator (OS
user and host), what the command did, to which conversation (keyed hashes), its outcome and
counts, whether it succeeded or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import audit
from ._common import fail, settings_or_exit

if TYPE_CHECKING:
    from ..resilience.store import RedisAdmin, SqliteAdmin, Unreadable
    from ..settings import Settings

sessions_app = typer.Typer(help="Inspect, purge and restore stored participant sessions.")

Room = Annotated[str | None, typer.Option(help="Only this room.")]
RequiredRoom = Annotated[str, typer.Option(help="The room the participant was in.")]
Identity = Annotated[str, typer.Argument(help="The participant identity.")]

MEMORY_NOTE = (
    "REDIS_URL is not set and SESSION_DB_PATH is :memory:; records live inside each worker "
    "process, so nothing is visible from here"
)


def _with_admin(
    settings: Settings,
    action: Callable[[RedisAdmin | SqliteAdmin], Awaitable[Any]],
    event: dict[str, Any],
) -> Any:
    """Run ``action`` on the store; a store error is one line and exit 1 (and noted in the
    audit ``event``)."""
    from ..resilience.store import InvalidInputError, KeyRing, SqliteAdmin, StoreError, open_admin

    async def run() -> Any:
        keys = settings.session_encryption_keys
        secret = keys.get_secret_value() if keys else None
        retention = settings.session_retention_s
        if settings.redis_url:
            admin: Any = open_admin(
                settings.redis_url,
                redis_cluster=settings.redis_cluster,
                prefix=settings.redis_prefix,
                encryption_keys=secret,
                retention=retention,
            )
        else:  # the SQLite file this host's workers share
            ring = KeyRing.parse(secret) if secret else None
            admin = SqliteAdmin(settings.session_db_path, keyring=ring, retention=retention)
        try:
            return await action(admin)
        finally:
            await admin.aclose()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        # refused: a name or key the store does not accept; else it could not do it
        refused = isinstance(exc, InvalidInputError)
        event.update(outcome=audit.REFUSED if refused else audit.ERROR, error=type(exc).__name__)
        raise fail(str(exc)) from None


@contextlib.contextmanager
def _audited(
    action: str, *, room: str | None, identity: str | None = None
) -> Iterator[dict[str, Any]]:
    """Log one audit event for the command's visit to the store, however it ends.

    The body fills in the event (counts, and ``outcome`` when it knows better); a command
    that exits 0 is ``ok``, any other exit ``error`` unless the body said otherwise."""
    event: dict[str, Any] = {"room": room, "identity": identity}
    try:
        yield event
    except typer.Exit as exc:
        event.setdefault("outcome", audit.OK if exc.exit_code == 0 else audit.ERROR)
        raise
    except BaseException:
        event.setdefault("outcome", audit.ERROR)
        raise
    else:
        event.setdefault("outcome", audit.OK)
    finally:
        audit.audit(action, actor=audit.operator_actor(), **event)


def _settings(*, needs_redis: bool) -> Settings | None:
    """The settings; None (after the note) when there is no Redis to look at and the command
    can say so by listing nothing. Commands that must act exit 1 instead."""
    settings = settings_or_exit()
    if settings.redis_url or settings.session_db_path != ":memory:":
        return settings
    if needs_redis:
        raise fail(MEMORY_NOTE)
    typer.echo(f"note: {MEMORY_NOTE}", err=True)
    return None


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def describe_unreadable(unreadable: Sequence[Unreadable]) -> str:
    """One line for records that could not be read, grouped by reason."""
    counts = Counter(u.summary for u in unreadable)
    reasons = ", ".join(f"{summary} ({n})" for summary, n in sorted(counts.items()))
    line = f"{len(unreadable)} record(s) unreadable, left as they are: {reasons}"
    if any(u.missing_key_id for u in unreadable):
        line += "; add the missing keys to SESSION_ENCRYPTION_KEYS to read them"
    return line


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@sessions_app.command("list")
def list_sessions(room: Room = None) -> None:
    """One line per stored session: room, identity, turns, reconnects, last seen.

    Read-only; exits 1 when a record could not be read (it is left as it is).
    """
    settings = _settings(needs_redis=False)
    if settings is None:
        return
    with _audited(audit.SESSIONS_LIST, room=room) as event:
        inventory = _with_admin(settings, lambda admin: admin.inventory(room), event)
        records = sorted(inventory.records, key=lambda r: (r.room, r.last_seen))
        event.update(records=len(records), unreadable=len(inventory.unreadable))
        _print_table(
            f"{len(records)} sessions",
            ("room", "identity", "items", "segments", "reconnects", "active", "last seen"),
            [
                (r.room, r.identity, str(len(r.items)), str(len(r.transcript)),
                 str(r.reconnect_count), "yes" if r.active_session else "no", _when(r.last_seen))
                for r in records
            ],
        )  # fmt: skip
        if inventory.unreadable:
            raise fail(describe_unreadable(inventory.unreadable))


def _read_one(settings: Settings, identity: str, room: str, event: dict[str, Any]) -> Any:
    from ..resilience.store import CorruptRecordError, MissingKeyError

    async def read(admin: RedisAdmin | SqliteAdmin) -> Any:
        try:
            return await admin.read(room, identity)
        except (MissingKeyError, CorruptRecordError) as exc:
            event.update(outcome=audit.ERROR, error=type(exc).__name__, unreadable=1)
            raise fail(f"stored session unreadable, left as it is: {exc}") from None

    record = _with_admin(settings, read, event)
    if record is None:
        event["outcome"] = audit.NOT_FOUND
        raise fail("no stored session for that participant in that room")
    return record


@sessions_app.command("show")
def show_session(identity: Identity, room: RequiredRoom) -> None:
    """The whole stored record of one participant, as JSON (read-only)."""
    from dataclasses import asdict

    settings = _settings(needs_redis=True)
    assert settings is not None
    with _audited(audit.SESSION_SHOW, room=room, identity=identity) as event:
        record = _read_one(settings, identity, room, event)
        event.update(items=len(record.items), segments=len(record.transcript))
        typer.echo(json.dumps(asdict(record), indent=2, default=str))


@sessions_app.command("purge")
def purge_sessions(
    room: RequiredRoom,
    identity: Annotated[str | None, typer.Argument(help="Only this participant.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete one participant's session, or every session of a room, with their quarantined
    copies."""
    settings = _settings(needs_redis=True)
    assert settings is not None
    what = f"the session of {identity!r}" if identity else "every session"
    if not yes:
        typer.confirm(f"Delete {what} in room {room!r}?", abort=True)
    with _audited(audit.SESSION_PURGE, room=room, identity=identity) as event:
        purged = _with_admin(settings, lambda admin: admin.purge(room, identity), event)
        event.update(
            sessions=purged.sessions,
            quarantined=purged.quarantined,
            unreadable=len(purged.unreadable),
        )
        typer.echo(
            f"deleted {purged.sessions} session(s) and {purged.quarantined} quarantined record(s)"
        )
        if purged.unreadable:
            raise fail(f"not checked for room {room!r}: " + describe_unreadable(purged.unreadable))


@sessions_app.command("quarantine")
def list_quarantine(room: Room = None) -> None:
    """Records moved aside as corrupt: key (for `restore`), room, participant hash, reason,
    when they expire."""
    settings = _settings(needs_redis=False)
    if settings is None:
        return
    with _audited(audit.QUARANTINE_LIST, room=room) as event:
        quarantined = _with_admin(settings, lambda admin: admin.quarantined(room), event)
        event["records"] = len(quarantined)
    _print_table(
        f"{len(quarantined)} quarantined",
        ("key", "room", "participant", "reason", "quarantined", "expires"),
        [
            (q.key, q.room or "?", q.participant, q.reason, _when(q.quarantined_at),
             _when(q.expires_at))
            for q in quarantined
        ],
    )  # fmt: skip


@sessions_app.command("restore")
def restore_session(
    key: Annotated[str, typer.Argument(help="A key `sessions quarantine` lists.")],
) -> None:
    """Move a quarantined record back; refused while the participant has a live record."""
    from ..resilience.store import SessionRecord

    settings = _settings(needs_redis=True)
    assert settings is not None
    with _audited(audit.QUARANTINE_RESTORE, room=None) as event:
        restored = _with_admin(settings, lambda admin: admin.restore(key), event)
        if isinstance(restored, SessionRecord):  # else: restored, but unreadable here
            event.update(room=restored.room, identity=restored.identity)
        else:
            event.update(room=restored.room, unreadable=1)
    if isinstance(restored, SessionRecord):
        typer.echo(f"restored {key}: room {restored.room!r}, {len(restored.items)} items")
        return
    typer.echo(f"restored {key}")
    then = (
        "it stays in place until a worker with that key reads it"
        if restored.missing_key_id
        else "a worker moves it back to quarantine when the participant returns"
    )
    typer.secho(
        f"warning: it is still unreadable here ({restored.reason}); {then}",
        fg=typer.colors.YELLOW,
        err=True,
    )


def transcript(identity: Identity, room: RequiredRoom) -> None:
    """Print a participant's transcript, as the frontend showed it (read-only)."""
    settings = _settings(needs_redis=True)
    assert settings is not None
    with _audited(audit.SESSION_TRANSCRIPT, room=room, identity=identity) as event:
        record = _read_one(settings, identity, room, event)
        event["segments"] = len(record.transcript)
        for segment in record.transcript:
            typer.echo(f"[{segment.get('speaker', '?')}] {segment.get('text', '')}")
    if not record.transcript:
        typer.echo("(no transcript segments stored)", err=True)
