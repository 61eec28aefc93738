"""Conversation summaries: restore time and replay bytes, full against compacted (figures,
not pass/fail).

    uv run python benchmarks/bench_summary.py [--runs 20] [--quick]

For 1,000 and 10,000-turn conversations (a turn: one message, with its transcript line) in a
real redis-server whose limits keep them whole, three records of the same conversation:

- full: every item, no summary (a record written before summaries, or below the budget);
- summarised: the same, plus a summary covering all but the last 40 turns, appended without
  compaction (a record whose summary landed in a store that kept the covered items);
- store-compacted: the same conversation, its summary appended as the worker's recorder does
  (``append(compact_through=...)``): the store dropped the covered items, the summary and the
  last 40 items are left, with the whole transcript.

1. Restore on join: the store's join as the worker makes it (one round trip returning the
   record with the transcript's newest ``KEPT_SEGMENTS`` lines, what the conversation's
   transcript log keeps) plus building the model's chat context from it
   (``chat_ctx_from_record``); "(whole transcript)" rows join without that bound. Against a
   raw redis-py GET + orjson decode of the compact record (the summary, the 40 recent items
   and the whole transcript, as one JSON value) in the same run; the last column is the
   same GET + decode of that record with only the newest ``KEPT_SEGMENTS`` lines. Target:
   the 10,000-turn restore within 1.5x of the GET + decode.
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
from {{ cookiecutter.package_name }}.resilience.transcript import KEPT_SEGMENTS
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
# (row, record, transcript lines the join asks for)
ROWS = [(v, v, KEPT_SEGMENTS) for v in VARIANTS] + [
    ("full (whole transcript)", "full", None),
    ("compacted (whole transcript)", "store-compacted", None),
]


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
        await store.append(ROOM, identity, items=items, transcript=[p[1] for p in pairs])
    if variant != "full":
        made = summary_item(turns)
        through = made["extra"]["covers"] if variant == "store-compacted" else None
        await store.append(ROOM, identity, items=[made], compact_through=through)


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Median seconds of ``repeat`` calls (after one to warm up)."""
    await fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def restore(
    store: RedisStore, turns: int, variant: str, tail: int | None, runs: int
) -> dict[str, Any]:
    identity = f"{variant}-{turns}"
    if tail == KEPT_SEGMENTS:  # the whole-transcript rows join the same records again
        await seed(store, identity, turns, variant)
    sessions = iter(range(1, 10**6))
    restored: list[llm.ChatContext] = []

    async def join_and_build() -> None:
        outcome = await store.join(
            ROOM, identity, f"s{next(sessions)}-{tail}", transcript_tail=tail
        )
        restored[:] = [chat_ctx_from_record(outcome.record)]

    seconds = await timed(join_and_build, runs)
    ctx = restored[0]
    return {"s": seconds, "ctx": ctx, "items": len(ctx.items),
            "ctx_bytes": len(json.dumps(ctx.to_dict()))}  # fmt: skip


async def get_and_decode(
    raw: Redis, turns: int, runs: int, lines: int | None = None
) -> tuple[float, int]:
    """A raw GET + orjson decode of the compact record (its newest ``lines`` transcript
    lines; None: all), and its size."""
    pairs = [turn(n) for n in range(turns)]
    compact = {"items": [summary_item(turns), *(p[0] for p in pairs[-KEEP:])],
               "transcript": [p[1] for p in pairs[-(lines or turns):]]}  # fmt: skip
    blob = orjson.dumps(compact)
    key = f"bench:compact:{turns}:{lines}"
    await raw.set(key, blob)

    async def get() -> None:
        value = await raw.get(key)
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
            found = {row: await restore(store, turns, v, tail, repeat) for row, v, tail in ROWS}
            baseline, size = await get_and_decode(raw, turns, repeat)
            newest, _ = await get_and_decode(raw, turns, repeat, KEPT_SEGMENTS)
            for variant in VARIANTS:
                found[variant]["replay"] = await replay_bytes(found[variant]["ctx"])
            rows.append((turns, found, (baseline, newest), size))
        await store.aclose()
        await raw.aclose()
    print("1. restore on join (join + chat context; median) vs raw GET + orjson of the compact")
    print("   record (summary + 40 recent items + the whole transcript; last column: + the")
    print(f"   newest {KEPT_SEGMENTS} lines only)")
    print(f"{'turns':>6} {'record':<29} {'restore ms':>10} {'GET+decode ms':>13} {'ratio':>6} "
          f"{'ratio (newest)':>14}")  # fmt: skip
    for turns, found, (baseline, newest), size in rows:
        for row, _, _ in ROWS:
            seconds = found[row]["s"]
            print(f"{turns:>6} {row:<29} {seconds * 1e3:>10.2f} {baseline * 1e3:>13.2f} "
                  f"{seconds / baseline:>6.2f} {seconds / newest:>14.2f}")  # fmt: skip
        print(f"{'':>6} (compact record: {size} bytes; GET+decode of the newest lines: "
              f"{newest * 1e3:.2f} ms)")  # fmt: skip
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
