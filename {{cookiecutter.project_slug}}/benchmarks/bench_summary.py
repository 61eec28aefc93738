"""Conversation summaries: restore time and replay bytes, full against compacted (figures,
not pass/fail).

    uv run python benchmarks/bench_summary.py [--runs 20] [--quick]

For 1,000 and 10,000-turn conversations (a turn: one message, with its transcript line) in a
real redis-server whose limits keep them whole, three records of the same conversation:

- full: every item, no summary (a record written before summaries, or below the budget);
- summarised: the same, plus the summary the summariser appends, covering all but the last
  40 turns (what the store holds today: covered items stay in it);
- store-compacted: the summary and the last 40 items only, with the whole transcript (a
  projection of a store that drops covered items when a summary lands: not built).

1. Restore on join: the store's join (one round trip returning the record) plus building
   the model's chat context from it (``chat_ctx_from_record``), against a raw redis-py GET +
   orjson decode of the compact record (the summary, the 40 recent items and the whole
   transcript, as one JSON value) in the same run. Target: the 10,000-turn restore within
   1.5x of that GET + decode.
2. What the model gets: the items and bytes of the restored chat context, and the history
   bytes a Gemini session sends on its first connect (the same full replay a refused handle
   makes), against the local Live server with the real plugin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from google.genai import types
from livekit.agents import Agent, AgentSession, llm
from redis.asyncio import Redis

from {{ cookiecutter.package_name }}.resilience.gemini import gemini_realtime_model
from {{ cookiecutter.package_name }}.resilience.gemini.resume import GeminiResume
from {{ cookiecutter.package_name }}.resilience.returning import (
    chat_ctx_from_record,
    item_to_dict,
)
from {{ cookiecutter.package_name }}.resilience.store import RedisStore, StorageLimits
from {{ cookiecutter.package_name }}.resilience.store.redis import connect
from {{ cookiecutter.package_name }}.summary import summary_message
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    LocalGeminiLiveServer,
)
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

ROOM = "bench-room"
KEEP = 40
SUMMARY = "The caller is planning a rail trip from Lisbon to Porto in May. " * 8
ROOMY = StorageLimits(max_entries=50_000, max_list_bytes=64 * 2**20)
VARIANTS = ("full", "summarised", "store-compacted")


def turn(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    text = f"turn {n}: " + "a sentence of ordinary conversational length, said aloud. " * 2
    role = "user" if n % 2 else "assistant"
    item = {"id": f"item_{n:05d}", "type": "message", "role": role, "content": [text],
            "interrupted": False, "created_at": 1718000000.0 + n}  # fmt: skip
    segment = {"seq": n + 1, "id": f"seg_{n:05d}", "role": "user" if n % 2 else "agent",
               "speaker": "alice", "text": text, "at": 1718000000.0 + n}  # fmt: skip
    return item, segment


def summary_item(turns: int) -> dict[str, Any]:
    covers = f"item_{turns - KEEP - 1:05d}"
    return item_to_dict(summary_message(SUMMARY, covers=covers, created_at=1718000000.0 + turns))


async def seed(store: RedisStore, identity: str, turns: int, variant: str) -> None:
    await store.join(ROOM, identity, "s0")
    for start in range(0, turns, 500):
        pairs = [turn(n) for n in range(start, min(turns, start + 500))]
        items = [p[0] for p in pairs]
        if variant == "store-compacted":
            items = [i for n, i in enumerate(items, start) if n >= turns - KEEP]
        await store.append(ROOM, identity, items=items, transcript=[p[1] for p in pairs])
    if variant != "full":
        await store.append(ROOM, identity, items=[summary_item(turns)])


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Median seconds of ``repeat`` calls (after one to warm up)."""
    await fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def restore(store: RedisStore, turns: int, variant: str, runs: int) -> dict[str, Any]:
    identity = f"{variant}-{turns}"
    await seed(store, identity, turns, variant)
    sessions = iter(range(1, 10**6))
    restored: list[llm.ChatContext] = []

    async def join_and_build() -> None:
        outcome = await store.join(ROOM, identity, f"s{next(sessions)}")
        restored[:] = [chat_ctx_from_record(outcome.record)]

    seconds = await timed(join_and_build, runs)
    ctx = restored[0]
    return {"s": seconds, "ctx": ctx, "items": len(ctx.items),
            "ctx_bytes": len(json.dumps(ctx.to_dict()))}  # fmt: skip


async def get_and_decode(raw: Redis, turns: int, runs: int) -> tuple[float, int]:
    """A raw GET + orjson decode of the compact record, and its size."""
    pairs = [turn(n) for n in range(turns)]
    compact = {"items": [summary_item(turns), *(p[0] for p in pairs[-KEEP:])],
               "transcript": [p[1] for p in pairs]}  # fmt: skip
    blob = orjson.dumps(compact)
    await raw.set(f"bench:compact:{turns}", blob)

    async def get() -> None:
        value = await raw.get(f"bench:compact:{turns}")
        assert value is not None
        orjson.loads(value)

    return await timed(get, runs), len(blob)


def history_bytes(srv: LocalGeminiLiveServer, probe: str) -> int:
    """Bytes of history clientContent the first connection got before the probe's trigger."""
    total = 0
    for message in srv.connections[0].received:
        content = message.get("client_content")
        if content is None:
            continue
        if content.get("turn_complete"):
            break
        if content["turns"] != [{"parts": [{"text": probe}], "role": "user"}]:
            total += len(json.dumps(content["turns"]))
    return total


async def replay_bytes(ctx: llm.ChatContext) -> int:
    async with LocalGeminiLiveServer(chunk_delay=0.0) as srv:
        model = gemini_realtime_model(
            GeminiResume(), api_key="bench", http_options=srv.http_options(),
            modalities=[types.Modality.TEXT],
        )  # fmt: skip
        session: AgentSession = AgentSession(llm=model)
        await session.start(Agent(instructions="bench", chat_ctx=ctx))
        try:
            await session.run(user_input="probe")
        finally:
            await session.aclose()
        return history_bytes(srv, "probe")


async def main(sizes: tuple[int, ...], runs: int) -> None:
    rows = []
    with RedisServer(durable=False) as server:
        store = RedisStore(connect(server.url), prefix="bench", limits=ROOMY)
        raw = connect(server.url)
        assert isinstance(raw, Redis)  # one server, not a cluster
        for turns in sizes:
            repeat = runs if turns <= 1000 else max(3, runs // 4)
            found = {v: await restore(store, turns, v, repeat) for v in VARIANTS}
            baseline, size = await get_and_decode(raw, turns, repeat)
            for variant in VARIANTS:
                found[variant]["replay"] = await replay_bytes(found[variant]["ctx"])
            rows.append((turns, found, baseline, size))
        await store.aclose()
        await raw.aclose()
    print("1. restore on join (join + chat context; median) vs raw GET + orjson of the compact")
    print("   record (summary + 40 recent items + the whole transcript)")
    print(f"{'turns':>6} {'record':<16} {'restore ms':>10} {'GET+decode ms':>13} {'ratio':>6}")
    for turns, found, baseline, size in rows:
        for variant in VARIANTS:
            ms = found[variant]["s"] * 1e3
            print(f"{turns:>6} {variant:<16} {ms:>10.2f} {baseline * 1e3:>13.2f} "
                  f"{found[variant]['s'] / baseline:>6.2f}")  # fmt: skip
        print(f"{'':>6} (compact record: {size} bytes)")
    print("\n2. what the model gets: chat context restored, Gemini history sent on first connect")
    print(f"{'turns':>6} {'record':<16} {'items':>6} {'context B':>10} {'replay B':>10}")
    for turns, found, _, _ in rows:
        for variant in VARIANTS:
            r = found[variant]
            print(f"{turns:>6} {variant:<16} {r['items']:>6} {r['ctx_bytes']:>10} "
                  f"{r['replay']:>10}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="restores timed per size (10k: 1/4)")
    parser.add_argument("--quick", action="store_true", help="100/1000 turns, 3 runs (seconds)")
    options = parser.parse_args()
    sizes = (100, 1000) if options.quick else (1000, 10_000)
    asyncio.run(main(sizes, 3 if options.quick else options.runs))
