"""A worker process for the two-process room lease test (run by tests/test_room_lease.py).

It competes for one room's Redis lease. While primary it writes a numbered turn to the
participant's record in the Redis session store every ``--every`` seconds: it takes its
fencing token, announces ``fenced``, waits ``--window`` seconds (where a pause or a crash can
land between taking the token and the write reaching Redis, as with a real in-flight write)
and writes with that token. Every event is one JSON line on stdout.

    python election_worker_proc.py --redis redis://127.0.0.1:6379/0 --room r --name A
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from {{ cookiecutter.package_name }}.resilience.primary.room_lease import (
    RedisRoomLease,
    RoomPrimacy,
)
from {{ cookiecutter.package_name }}.resilience.store import (
    FencedStore,
    RedisStore,
    StaleLeaseError,
)
from {{ cookiecutter.package_name }}.resilience.store.redis import connect

PARTICIPANT = "caller"


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def main(args: argparse.Namespace) -> None:
    client = connect(args.redis)
    store = RedisStore(client, prefix=args.prefix)
    lease = RedisRoomLease(client, args.room, args.name, ttl=args.ttl, prefix=args.prefix)
    primacy = RoomPrimacy(lease, on_lost=lambda: emit("lost"))
    fenced = FencedStore(store, primacy)  # renews the participant lease with the room's
    emit("started")
    await primacy.start()
    written = 0
    while True:
        token = await primacy.wait_until_primary()
        record = await store.load(args.room, PARTICIPANT)
        loaded = [item["id"] for item in record.items] if record else []
        emit("primary", token=token, loaded=loaded)
        while True:
            try:
                fence = await fenced.fence(args.room, PARTICIPANT)
            except StaleLeaseError:
                emit("standby")
                break
            written += 1
            item_id = f"{args.name}-{written}"
            emit("fenced", id=item_id, fence=fence)
            await asyncio.sleep(args.window)
            item = {"id": item_id, "type": "message", "role": "user", "content": [item_id]}
            try:
                result = await store.append(args.room, PARTICIPANT, items=[item], fence=fence)
                emit("merged" if result.merged else "wrote", id=item_id)
            except StaleLeaseError as exc:
                emit("refused", id=item_id, error=str(exc))
            await asyncio.sleep(args.every)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--prefix", default="lkagent")
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--every", type=float, default=0.05)
    parser.add_argument("--window", type=float, default=0.05)
    asyncio.run(main(parser.parse_args()))
