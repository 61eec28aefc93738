"""How the `sessions` commands visit the store: the settings that say where it is, the admin
that reads and writes it (Redis when REDIS_URL is set, else the SQLite file), one audit event
per visit, and the one-line errors when it cannot be reached or a record cannot be read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import typer

from .. import audit
from ._common import fail, settings_or_exit

if TYPE_CHECKING:
    from ..resilience.store import RedisAdmin, SqliteAdmin, Unreadable
    from ..settings import Settings

__all__ = [
    "MEMORY_NOTE",
    "audited",
    "describe_unreadable",
    "read_one",
    "store_settings",
    "with_admin",
]

MEMORY_NOTE = (
    "REDIS_URL is not set and SESSION_DB_PATH is :memory:; records live inside each worker "
    "process, so nothing is visible from here"
)


def with_admin(
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
def audited(
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


def store_settings(*, needs_redis: bool) -> Settings | None:
    """The settings; None (after the note) when there is no Redis to look at and the command
    can say so by listing nothing. Commands that must act exit 1 instead."""
    settings = settings_or_exit()
    if settings.redis_url or settings.session_db_path != ":memory:":
        return settings
    if needs_redis:
        raise fail(MEMORY_NOTE)
    typer.echo(f"note: {MEMORY_NOTE}", err=True)
    return None


def describe_unreadable(unreadable: Sequence[Unreadable]) -> str:
    """One line for records that could not be read, grouped by reason."""
    counts = Counter(u.summary for u in unreadable)
    reasons = ", ".join(f"{summary} ({n})" for summary, n in sorted(counts.items()))
    line = f"{len(unreadable)} record(s) unreadable, left as they are: {reasons}"
    if any(u.missing_key_id for u in unreadable):
        line += "; add the missing keys to SESSION_ENCRYPTION_KEYS to read them"
    return line


def read_one(
    settings: Settings, identity: str, room: str, event: dict[str, Any], *, stored: bool = False
) -> Any:
    """The record (``stored``: with its stored form); not there or unreadable: exit 1."""
    from ..resilience.store import CorruptRecordError, MissingKeyError

    async def read(admin: RedisAdmin | SqliteAdmin) -> Any:
        try:
            if stored:
                return await admin.read_stored(room, identity)
            return await admin.read(room, identity)
        except (MissingKeyError, CorruptRecordError) as exc:
            event.update(outcome=audit.ERROR, error=type(exc).__name__, unreadable=1)
            raise fail(f"stored session unreadable, left as it is: {exc}") from None

    record = with_admin(settings, read, event)
    if record is None:
        event["outcome"] = audit.NOT_FOUND
        raise fail("no stored session for that participant in that room")
    return record
