"""Operator commands on stored sessions: `sessions list | show | purge | quarantine | restore`,
`sessions export | import` (move conversations: ``_transfer.py``), `sessions stats` and
`transcript`.

They talk to the store directly (Redis when REDIS_URL is set, else the SQLite file
SESSION_DB_PATH), never through a worker's cache: when it cannot be reached they say so in one
line and exit 1. Reads never write: a record they cannot read (a key missing from
SESSION_ENCRYPTION_KEYS, corruption) is reported, left as it is, and the command exits 1.
With SESSION_DB_PATH=:memory: records live inside each worker process: nothing to see here.

Export, import and stats keep their logic in the store package (resilience/store/transfer.py,
stats.py); the commands read or write the file, visit the store (``_store_visit.py``) and print.

Every command that reaches the store logs one audit event (``audit.py``): the operator (OS
user and host), what the command did, to which conversation (keyed hashes), its outcome and
counts, whether it succeeded or not.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Sequence
from typing import Annotated

import typer

from .. import audit
from ._common import fail
from ._store_visit import audited, describe_unreadable, read_one, store_settings, with_admin
from ._transfer import export_session, import_session

sessions_app = typer.Typer(help="Inspect, purge, restore, move and count stored sessions.")

Room = Annotated[str | None, typer.Option(help="Only this room.")]
RequiredRoom = Annotated[str, typer.Option(help="The room the participant was in.")]
Identity = Annotated[str, typer.Argument(help="The participant identity.")]


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


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
    """One line per stored session: room, identity, turns, reconnects, engagement score and
    how long it keeps the record after a leave (SESSION_RETENTION_TIERS), last seen.

    Read-only; exits 1 when a record could not be read (it is left as it is).
    """
    settings = store_settings(needs_redis=False)
    if settings is None:
        return
    with audited(audit.SESSIONS_LIST, room=room) as event:
        inventory = with_admin(settings, lambda admin: admin.inventory(room), event)
        records = sorted(inventory.records, key=lambda r: (r.room, r.last_seen))
        event.update(records=len(records), unreadable=len(inventory.unreadable))
        tiers = settings.retention_tiers()
        _print_table(
            f"{len(records)} sessions",
            ("room", "identity", "items", "segments", "reconnects", "engagement", "active",
             "last seen"),
            [
                (r.room, _shown(r.identity), str(len(r.items)), str(len(r.transcript)),
                 str(r.reconnect_count), tiers.describe(r), "yes" if r.active_session else "no",
                 _when(r.last_seen))
                for r in records
            ],
        )  # fmt: skip
        if inventory.unreadable:
            raise fail(describe_unreadable(inventory.unreadable))


def _shown(identity: str) -> str:
    """An identity as `sessions list` prints it: a room's own record by what it is."""
    from ..resilience.store.stats import is_room_record

    return "(the room's transcript)" if is_room_record(identity) else identity


@sessions_app.command("show")
def show_session(identity: Identity, room: RequiredRoom) -> None:
    """The whole stored record of one participant, as JSON (read-only)."""
    from dataclasses import asdict

    settings = store_settings(needs_redis=True)
    assert settings is not None
    with audited(audit.SESSION_SHOW, room=room, identity=identity) as event:
        record = read_one(settings, identity, room, event)
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
    settings = store_settings(needs_redis=True)
    assert settings is not None
    what = f"the session of {identity!r}" if identity else "every session"
    if not yes:
        typer.confirm(f"Delete {what} in room {room!r}?", abort=True)
    with audited(audit.SESSION_PURGE, room=room, identity=identity) as event:
        purged = with_admin(settings, lambda admin: admin.purge(room, identity), event)
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
    settings = store_settings(needs_redis=False)
    if settings is None:
        return
    with audited(audit.QUARANTINE_LIST, room=room) as event:
        quarantined = with_admin(settings, lambda admin: admin.quarantined(room), event)
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

    settings = store_settings(needs_redis=True)
    assert settings is not None
    with audited(audit.QUARANTINE_RESTORE, room=None) as event:
        restored = with_admin(settings, lambda admin: admin.restore(key), event)
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
    settings = store_settings(needs_redis=True)
    assert settings is not None
    with audited(audit.SESSION_TRANSCRIPT, room=room, identity=identity) as event:
        record = read_one(settings, identity, room, event)
        event["segments"] = len(record.transcript)
        for segment in record.transcript:
            typer.echo(f"[{segment.get('speaker', '?')}] {segment.get('text', '')}")
    if not record.transcript:
        typer.echo("(no transcript segments stored)", err=True)


@sessions_app.command("stats")
def show_stats(
    room: Room = None,
    days: Annotated[int, typer.Option(min=1, max=3660, help="UTC days back, today too.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Participants active per day, who came back, conversation lengths (read-only)."""
    from ..resilience.store.stats import session_stats

    settings = store_settings(needs_redis=False)
    if settings is None:
        return
    with audited(audit.SESSIONS_STATS, room=room) as event:
        inventory = with_admin(settings, lambda admin: admin.inventory(room), event)
        stats = session_stats(inventory.records, now=time.time(), days=days, room=room)
        event.update(records=len(inventory.records), unreadable=len(inventory.unreadable))
        if as_json:
            found = stats.to_json() | {"unreadable": len(inventory.unreadable)}
            typer.echo(json.dumps(found, indent=2))
        else:
            where = f" in room {room!r}" if room else ""
            _print_table(f"stored sessions, last {days} day(s){where}", ("measure", "value"),
                         stats.rows())  # fmt: skip
        if inventory.unreadable:
            raise fail(describe_unreadable(inventory.unreadable))


# moving conversations (_transfer.py), listed after the commands above
sessions_app.command("export")(export_session)
sessions_app.command("import")(import_session)
