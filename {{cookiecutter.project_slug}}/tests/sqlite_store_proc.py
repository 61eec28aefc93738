"""One process using the SQLite session store, for tests/test_store_sqlite.py.

Each run opens its own ``SqliteStore`` (or room lease) on the file, as a job process does,
does one thing and prints what happened as JSON lines, then exits:

    python sqlite_store_proc.py DB join ROOM WHO SESSION
    python sqlite_store_proc.py DB append ROOM WHO PREFIX COUNT [BARRIER PARTIES]  # ids PREFIX-n
    python sqlite_store_proc.py DB lease ROOM WHO OWNER [force]
    python sqlite_store_proc.py DB fenced-writes ROOM WHO TOKEN
    python sqlite_store_proc.py DB hold-room ROOM OWNER TTL                 # until killed
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from {{ cookiecutter.package_name }}.resilience.primary.room_lease import SqliteRoomLease
from {{ cookiecutter.package_name }}.resilience.store import (
    LeaseHeldError,
    SqliteStore,
    StaleLeaseError,
)


def start_together(folder: Path, name: str, parties: int) -> None:
    """Say this process is ready, then wait (nothing else to do meanwhile) for the others."""
    (folder / name).touch()
    while len(list(folder.iterdir())) < parties:
        time.sleep(0.005)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def main(db: str, op: str, *args: str) -> None:
    if op == "hold-room":
        room, owner, ttl = args
        lease = SqliteRoomLease(db, room, owner, ttl=float(ttl))
        token = await lease.acquire()
        emit("acquired", token=token)
        if token is None:
            return  # another worker holds it: nothing to renew
        while True:  # a live primary: renew every ttl / 3
            await asyncio.sleep(float(ttl) / 3)
            emit("renewed", ok=await lease.renew(token))
    store = SqliteStore(db)
    try:
        await run(store, op, *args)
    finally:
        await store.aclose()


async def run(store: SqliteStore, op: str, *args: str) -> None:
    if op == "join":
        room, who, session = args
        outcome = await store.join(room, who, session)
        emit("joined", kind=outcome.kind.value, items=outcome.record.item_ids,
             reconnects=outcome.record.reconnect_count)  # fmt: skip
    elif op == "append":
        room, who, prefix, count, *barrier = args
        if barrier:
            start_together(Path(barrier[0]), prefix, int(barrier[1]))
        added = 0
        for n in range(1, int(count) + 1):
            # each write also repeats the previous one, as a retried write would
            batch = [{"id": f"{prefix}-{m}", "n": m} for m in (n - 1, n) if m > 0]
            added += (await store.append(room, who, items=batch)).items_added
        emit("appended", added=added)
    elif op == "lease":
        room, who, owner, *force = args
        try:
            token = await store.acquire_lease(room, who, owner, 30, force=bool(force))
        except LeaseHeldError as exc:
            emit("held", owner=exc.owner)
        else:
            emit("leased", token=token)
    elif op == "fenced-writes":
        room, who, fence = args
        result = await store.append(room, who, items=[{"id": "late"}], fence=int(fence))
        emit("appended", merged=result.merged, added=result.items_added)
        try:
            await store.set_gemini_handle(room, who, "late-handle", [], fence=int(fence))
        except StaleLeaseError:
            emit("refused")
        else:
            emit("written")
    else:
        raise SystemExit(f"unknown operation {op!r}")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
