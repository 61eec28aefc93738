"""Timings of livekit's Gemini plugin against the local Live server (figures, not pass/fail).

    uv run python benchmarks/bench_gemini_plugin.py [--rounds 20] [--watch 8] [--quick]

1. Connect: TLS + setup -> setupComplete with the real google-genai client (median, p95).
2. Reply: one text turn through a headless AgentSession (median, p95).
3. Resume after an abrupt drop: drop -> resumed setupComplete -> first reply of the next turn.
4. goAway: seconds the plugin stays after goAway(time_left=10) (Gemini promises the time).
5. Missing setupComplete: how long the plugin waits on a setup the server never answers.
6. A drop while a reply is awaited: what session.run() gets, and after how long.

Faults 4-6 are the plugin's (livekit-plugins-google 1.8.9) behaviour, measured, not fixed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Sequence

from google import genai
from google.genai import types
from livekit.agents import Agent, AgentSession, APIConnectOptions, RunResult
from livekit.plugins import google

from {{ cookiecutter.package_name }}.testing.gemini.faults import (
    Drop,
    GoAway,
    NoSetupComplete,
)
from {{ cookiecutter.package_name }}.testing.gemini.protocol import HistoryItem
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    LocalGeminiLiveServer,
    default_responder,
)

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"
FAST_RETRY = APIConnectOptions(max_retry=3, retry_interval=0.1)


def figures(name: str, samples: Sequence[float]) -> None:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    print(
        f"{name:<44} median {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"
    )


def model(srv: LocalGeminiLiveServer) -> google.realtime.RealtimeModel:
    return google.realtime.RealtimeModel(
        model=MODEL,
        api_key="bench",
        http_options=srv.http_options(),
        modalities=[types.Modality.TEXT],
        conn_options=FAST_RETRY,
    )


async def started(srv: LocalGeminiLiveServer) -> AgentSession:
    session: AgentSession = AgentSession(llm=model(srv))
    await session.start(Agent(instructions="bench"))
    return session


async def bench_connect(rounds: int) -> None:
    async with LocalGeminiLiveServer() as srv:
        client = genai.Client(api_key="bench", http_options=srv.http_options())
        config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            async with client.aio.live.connect(model=MODEL, config=config):
                samples.append(time.perf_counter() - t0)
        figures("1. connect (TLS + setupComplete)", samples)


async def bench_reply_and_resume(rounds: int) -> None:
    async with LocalGeminiLiveServer(chunk_delay=0.0) as srv:
        session = await started(srv)
        replies, resumes = [], []
        for n in range(rounds):
            t0 = time.perf_counter()
            await session.run(user_input=f"turn {n}")
            replies.append(time.perf_counter() - t0)
        for _ in range(rounds):
            count = len(srv.connections)
            t0 = time.perf_counter()
            await srv.inject(Drop())

            def resumed(c: int = count) -> bool:
                return (
                    len(srv.connections) > c and srv.connections[c].setup_complete_after is not None
                )

            await srv.wait_for(resumed)
            await session.run(user_input="after the drop")
            resumes.append(time.perf_counter() - t0)
        await session.aclose()
        figures("2. one text turn through AgentSession", replies)
        figures("3. drop -> resumed -> next reply", resumes)


async def bench_go_away() -> None:
    async with LocalGeminiLiveServer() as srv:
        session = await started(srv)
        await session.run(user_input="hello")
        conn = await srv.inject(GoAway(time_left=10))
        await srv.wait_for(lambda: not conn.open, give_up_after=15)
        assert conn.go_away_sent_at is not None and conn.closed_at is not None
        stayed = conn.closed_at - conn.go_away_sent_at
        print(
            f"4. goAway(time_left=10 s): the {conn.closed_by} closed after {stayed * 1000:.1f} ms"
        )
        await session.aclose()


async def bench_missing_setup_complete(watch: float) -> None:
    async with LocalGeminiLiveServer() as srv:
        session = await started(srv)
        await session.run(user_input="hello")
        srv.arm(NoSetupComplete())
        await srv.inject(Drop())
        await asyncio.sleep(watch)
        waiting = srv.connections[-1]
        print(
            f"5. setupComplete never sent: after {watch:.0f} s the plugin is still waiting: "
            f"{waiting.open and waiting.setup_complete_after is None} "
            f"(connections: {len(srv.connections)})"
        )
        await session.aclose()


async def bench_drop_while_reply_awaited() -> None:
    release = asyncio.Event()

    async def slow_first(history: Sequence[HistoryItem]) -> str:
        if not release.is_set():
            await release.wait()  # the first trigger is answered only after the drop
        return default_responder(history)

    async with LocalGeminiLiveServer(responder=slow_first) as srv:
        session = await started(srv)
        run: RunResult = session.run(user_input="hello")
        await srv.wait_for(
            lambda: (
                bool(srv.connections)
                and any(
                    m.get("client_content", {}).get("turn_complete")
                    for m in srv.connections[0].received
                )
            )
        )
        t0 = time.perf_counter()
        await srv.inject(Drop())
        release.set()
        try:
            await run
            outcome = "a reply"
        except Exception as e:  # the figure is which error, and when
            outcome = f"{type(e).__name__}: {e}"
        took = time.perf_counter() - t0
        print(f"6. drop while a reply is awaited: run() got {outcome!r} after {took:.2f} s")
        await session.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--watch", type=float, default=8.0, help="seconds to watch fault 5")
    parser.add_argument("--quick", action="store_true", help="2 rounds, watch fault 5 for 1 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.watch = 2, 1.0
    # the plugin logs every fault at ERROR with a traceback; the figures are the point here
    logging.getLogger("livekit").setLevel(logging.CRITICAL)
    await bench_connect(args.rounds)
    await bench_reply_and_resume(args.rounds)
    await bench_go_away()
    await bench_missing_setup_complete(args.watch)
    await bench_drop_while_reply_awaited()


if __name__ == "__main__":
    asyncio.run(main())
