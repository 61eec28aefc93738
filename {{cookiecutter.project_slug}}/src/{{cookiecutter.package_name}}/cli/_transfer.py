"""`sessions export` and `sessions import`: move conversations between deployments or stores.

One conversation is one JSON document (``resilience/store/transfer.py`` makes and reads it);
`export --all` writes every record (of one room with --room) as a bundle, JSON Lines with one
document a line, and `import` takes either. The logic of the format lives in the store package;
what is here reads and writes the file, visits the store and prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import audit
from ._common import fail
from ._store_visit import audited, describe_unreadable, read_one, store_settings, with_admin

if TYPE_CHECKING:
    from ..resilience.store.transfer import Imported
    from ..settings import Settings

__all__ = ["export_session", "import_session"]

Meeting = Annotated[bool, typer.Option("--meeting", help="The room's meeting transcript instead.")]
Decrypt = Annotated[bool, typer.Option("--decrypt", help="Write sealed data readable (audited).")]
Replace = Annotated[bool, typer.Option("--replace", help="Overwrite a record found there.")]


def export_session(
    room: Annotated[
        str | None, typer.Option(help="The participant's room (with --all: only this room).")
    ] = None,
    identity: Annotated[str | None, typer.Argument(help="The participant identity.")] = None,
    meeting: Meeting = False,
    every: Annotated[
        bool, typer.Option("--all", help="Every record, one document a line (a bundle).")
    ] = False,
    out: Annotated[str, typer.Option(help="The file to create ('-': stdout).")] = "-",
    decrypt: Decrypt = False,
) -> None:
    """Write conversations to a file for `sessions import` (read-only).

    One participant's (--meeting: the room's transcript) as a JSON document, or with --all
    every one (of --room) as a bundle, one document a line. Sealed records stay sealed unless
    --decrypt; the Gemini handle is never exported."""
    from ..resilience.store.transfer import export_document

    if every:
        if identity is not None or meeting:
            raise fail("--all exports every record: give no IDENTITY or --meeting", 2)
        return _export_all(room, out, decrypt)
    if (identity is None) != meeting:
        raise fail("give the participant's IDENTITY, or --meeting for the room's transcript", 2)
    if room is None:
        raise fail("give --room, the room the participant was in (or --all)", 2)
    if identity is None:  # livekit's import time, for this flag only
        from ..resilience.transcribers import MEETING_IDENTITY

        identity = MEETING_IDENTITY
    settings = store_settings(needs_redis=True)
    assert settings is not None
    sealed = settings.session_encryption_keys is not None and not decrypt
    with (
        _new_file(out) as target,
        audited(audit.SESSION_EXPORT, room=room, identity=identity) as event,
    ):
        record, stored = read_one(settings, identity, room, event, stored=True)
        document = export_document(record, stored, sealed=sealed, exported_at=time.time())
        counts = {"items": len(record.items), "segments": len(record.transcript)}
        event.update(
            counts, decrypted=int(decrypt and settings.session_encryption_keys is not None)
        )
        target.write(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    if out != "-":
        what = f"{counts['items']} items and {counts['segments']} transcript lines"
        typer.echo(f"exported {what} to {out}" + " (sealed)" * sealed, err=True)


def _export_all(room: str | None, out: str, decrypt: bool) -> None:
    """`export --all`: every readable record a line; the unreadable are named, left as they
    are, and the command exits 1 after writing the rest."""
    from ..resilience.store import CorruptRecordError, MissingKeyError, Unreadable
    from ..resilience.store.transfer import export_document

    settings = store_settings(needs_redis=True)
    assert settings is not None
    sealed = settings.session_encryption_keys is not None and not decrypt
    unreadable: list[Unreadable] = []
    with _new_file(out) as target, audited(audit.SESSION_EXPORT, room=room) as event:

        async def export_every(admin: Any) -> int:
            inventory, written = await admin.inventory(room), 0
            unreadable.extend(inventory.unreadable)
            for found in inventory.records:
                try:
                    pair = await admin.read_stored(found.room, found.identity)
                except (MissingKeyError, CorruptRecordError) as exc:
                    unreadable.append(Unreadable.of("", found.room, exc))
                    continue
                if pair is not None:  # else gone since the scan
                    document = export_document(*pair, sealed=sealed, exported_at=time.time())
                    target.write(json.dumps(document, ensure_ascii=False) + "\n")
                    written += 1
            return written

        records = with_admin(settings, export_every, event)
        event.update(
            records=records,
            unreadable=len(unreadable),
            decrypted=int(decrypt and settings.session_encryption_keys is not None),
        )
    if out != "-":
        typer.echo(f"exported {records} conversations to {out}" + " (sealed)" * sealed, err=True)
    if unreadable:
        raise fail(describe_unreadable(unreadable))


@contextlib.contextmanager
def _new_file(path: str) -> Iterator[Any]:
    """A new file only this user can read (never an existing one), or stdout for '-';
    removed again if the command fails, so no half-written export is left."""
    if path == "-":
        yield sys.stdout
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise fail(f"cannot create {path}: {exc.strerror} (an export never overwrites)") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as target:
            yield target
    except BaseException:
        os.unlink(path)
        raise


def import_session(
    file: Annotated[str, typer.Argument(help="A `sessions export` file ('-': stdin).")],
    room: Annotated[str | None, typer.Option(help="Into this room, not the file's.")] = None,
    identity: Annotated[str | None, typer.Option(help="As this participant.")] = None,
    replace: Replace = False,
) -> None:
    """Write exported conversations into this store.

    One document in one step, sealed under the store's current key when it seals, kept from
    now as a participant who just left (SESSION_RETENTION_S, or its tier in
    SESSION_RETENTION_TIERS). A bundle (`export --all`) is checked whole before any write,
    then written a conversation at a time."""
    settings = store_settings(needs_redis=True)
    assert settings is not None
    try:
        raw = sys.stdin.buffer.read() if file == "-" else pathlib.Path(file).read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}") from None
    if bundle := _bundle_lines(raw):
        if identity is not None:
            raise fail(f"--identity names one participant; {file} is a bundle", 2)
        return _import_bundle(settings, bundle, room, replace)
    with audited(audit.SESSION_IMPORT, room=room, identity=identity) as event:
        imported = _import_form(settings, raw, room, identity, event)
        stored = imported.stored
        counts = {"items": len(stored.items), "segments": len(stored.transcript)}
        event.update(counts, room=stored.room, identity=stored.identity)
        ttl = settings.retention_tiers().seconds_for(imported.engagement)
        put = with_admin(settings, lambda a: a.put(stored, ttl=ttl, replace=replace), event)
        event["replaced"] = int(put)
    what = f"{counts['items']} items, {counts['segments']} transcript lines"
    typer.echo(
        f"imported {stored.identity!r} in room {stored.room!r}: {what}" + " (replaced)" * put
    )


def _bundle_lines(raw: bytes) -> list[bytes]:
    """The documents of a bundle, one a line; [] for one document (indented or on a line)."""
    lines = [line for line in raw.splitlines() if line.strip()]
    if len(lines) < 2:
        return []
    try:
        json.loads(lines[0])
    except ValueError:  # the first line of an indented document
        return []
    return lines


def _import_bundle(settings: Settings, lines: list[bytes], room: str | None, replace: bool) -> None:
    """Every document of a bundle; those the store refuses (there already, in a call) are
    named and kept as they are, and the command exits 1. Importing the file again finishes
    an import a store outage cut short."""
    from ..resilience.store import InvalidInputError

    kept: list[str] = []
    with audited(audit.SESSION_IMPORT, room=room) as event:
        forms = [
            _import_form(settings, line, room, None, event, where=f"line {n}: ")
            for n, line in enumerate(lines, 1)
        ]
        tiers = settings.retention_tiers()

        async def put_each(admin: Any) -> int:
            replaced = 0
            for imported in forms:
                stored, ttl = imported.stored, tiers.seconds_for(imported.engagement)
                try:
                    replaced += await admin.put(stored, ttl=ttl, replace=replace)
                except InvalidInputError as exc:
                    kept.append(f"{stored.identity!r} in room {stored.room!r}: {exc}")
            return replaced

        replaced = with_admin(settings, put_each, event)
        event.update(records=len(forms) - len(kept), replaced=replaced, refused=len(kept))
    typer.echo(f"imported {len(forms) - len(kept)} conversations ({replaced} replaced)")
    for line in kept:
        typer.echo(f"not imported: {line}", err=True)
    if kept:
        raise fail(f"{len(kept)} conversation(s) not imported (see above)")


def _import_form(
    settings: Settings,
    raw: bytes,
    room: str | None,
    identity: str | None,
    event: dict[str, Any],
    *,
    where: str = "",
) -> Imported:
    """The file (or a bundle's line, ``where``) as this store keeps it; refused (one line,
    audited) when it cannot be."""
    from ..resilience.store import KeyRing, StorageLimits, StoreError
    from ..resilience.store.transfer import import_document

    keys = settings.session_encryption_keys
    limits = StorageLimits(
        settings.session_max_entry_bytes,
        settings.session_max_entries,
        settings.session_max_history_bytes,
    )
    try:
        keyring = KeyRing.parse(keys.get_secret_value()) if keys else None
        return import_document(raw, keyring=keyring, limits=limits, room=room, identity=identity)
    except StoreError as exc:
        event.update(outcome=audit.REFUSED, error=type(exc).__name__)
        raise fail(f"{where}{exc}") from None
