"""The Gemini resume handler against the local Live server (figures, not pass/fail).

    uv run python benchmarks/bench_gemini_resume.py [--rounds 20] [--quick]

1. History bytes sent on a reconnect, for 10/100/1000-turn conversations: resumed with
   nothing changed, resumed with one turn added while disconnected, and a full replay
   (what a refused handle, or the plugin given a handle-less session, sends).
2. Drop -> next setupComplete, and goAway -> next setupComplete, for the handler and for
   livekit's plugin alone (1.8.9), in the same run (median, p95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from collections.abc import Sequence

from google.genai import types
from livekit.agents import Agent, AgentSession, APIConnectOptions, llm
from livekit.plugins import google

from {{ cookiecutter.package_name }}.resilience.gemini import gemini_realtime_model
from {{ cookiecutter.package_name }}.resilience.gemini.resume import (
    GeminiResume,
    ReconnectPolicy,
)
from {{ cookiecutter.package_name }}.testing.gemini.faults import (
    ConnectionRecord,
    Drop,
    GoAway,
    RefuseHandle,
    SlowSetup,
)
from {{ cookiecutter.package_name }}.testing.gemini.server import (
    LocalGeminiLiveServer,
)

FAST_RETRY = APIConnectOptions(max_retry=3, retry_interval=0.1)
# drops back to back are the measurement here, not a server in an accept-then-drop loop
POLICY = ReconnectPolicy(backoff_base=0.05, max_drops=10_000)


def figures(name: str, samples: Sequence[float]) -> None:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    print(
        f"{name:<46} median {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"
    )


def handler_model(srv: LocalGeminiLiveServer, resume: GeminiResume) -> llm.RealtimeModel:
    return gemini_realtime_model(
        resume, api_key="bench", http_options=srv.http_options(), modalities=[types.Modality.TEXT]
    )


def plugin_model(srv: LocalGeminiLiveServer) -> llm.RealtimeModel:
    return google.realtime.RealtimeModel(
        api_key="bench",
        http_options=srv.http_options(),
        modalities=[types.Modality.TEXT],
        conn_options=FAST_RETRY,
    )


def history_bytes(conn: ConnectionRecord, probe: str) -> int:
    """Bytes of history clientContent a connection got before its first reply trigger
    (the probe turn asked right after the reconnect is not history)."""
    total = 0
    for message in conn.received:
        content = message.get("client_content")
        if content is None:
            continue
        if content.get("turn_complete"):
            break
        if content["turns"] != [{"parts": [{"text": probe}], "role": "user"}]:
            total += len(json.dumps(content["turns"]))
    return total


def seeded(turns: int) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    for n in range(turns):
        ctx.add_message(role="user", content=f"question {n}: what about the weather tomorrow?")
        ctx.add_message(role="assistant", content=f"answer {n}: sunny, with a light breeze.")
    return ctx


async def settled(srv: LocalGeminiLiveServer, resume: GeminiResume) -> None:
    # the client adopts the handle after the server's last event: poll, bounded
    for _ in range(1000):
        issued = srv.connections[-1].handles_issued
        if resume.current is not None and issued and resume.current.handle == issued[-1]:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the client never adopted the newest handle")


async def reconnected(srv: LocalGeminiLiveServer, count: int) -> ConnectionRecord:
    await srv.wait_for(
        lambda: (
            len(srv.connections) >= count
            and srv.connections[count - 1].setup_complete_after is not None
        ),
        give_up_after=30,
    )
    return srv.connections[count - 1]


async def measured(
    srv: LocalGeminiLiveServer, session: AgentSession, resume: GeminiResume, count: int
) -> int:
    """History bytes connection ``count`` got, read after a turn on it completed."""
    conn = await reconnected(srv, count)
    probe = f"probe on connection {count}"
    await session.run(user_input=probe)
    await settled(srv, resume)
    return history_bytes(conn, probe)


async def bench_bytes(turns: int) -> None:
    async with LocalGeminiLiveServer(chunk_delay=0.0) as srv:
        resume = GeminiResume(policy=POLICY)
        agent = Agent(instructions="bench", chat_ctx=seeded(turns))
        session: AgentSession = AgentSession(llm=handler_model(srv, resume))
        await session.start(agent)
        await session.run(user_input="one more")
        await settled(srv, resume)
        full = history_bytes(srv.connections[0], "one more")

        await srv.inject(Drop())  # nothing changed while away
        unchanged = await measured(srv, session, resume, 2)

        srv.arm(SlowSetup(delay=0.3))  # one turn added while away
        await srv.inject(Drop())
        await srv.wait_for(lambda: len(srv.connections) == 3 and srv.connections[2].setup)
        ctx = agent.chat_ctx.copy()
        ctx.add_message(role="user", content="a note added while disconnected")
        await agent.update_chat_ctx(ctx)
        delta = await measured(srv, session, resume, 3)

        srv.arm(RefuseHandle())  # the fallback: everything again
        await srv.inject(Drop())
        replay = await measured(srv, session, resume, 5)
        await session.aclose()
    print(
        f"1. {turns:>4} turns: resumed unchanged {unchanged:>8} B   one turn added {delta:>6} B"
        f"   full replay {replay:>8} B (first connect {full} B)"
    )


async def reconnect_latency(make: str, rounds: int, fault: str) -> list[float]:
    samples = []
    async with LocalGeminiLiveServer(chunk_delay=0.0) as srv:
        resume = GeminiResume(policy=POLICY)
        model = handler_model(srv, resume) if make == "handler" else plugin_model(srv)
        session: AgentSession = AgentSession(llm=model)
        await session.start(Agent(instructions="bench"))
        await session.run(user_input="hello")
        for _ in range(rounds):
            if make == "handler":
                await settled(srv, resume)
            count = len(srv.connections)
            if fault == "drop":
                t0 = time.monotonic()
                await srv.inject(Drop())
            else:
                conn = await srv.inject(GoAway(time_left=10))
                assert conn.go_away_sent_at is not None
                t0 = conn.go_away_sent_at
            new = await reconnected(srv, count + 1)
            assert new.setup_complete_after is not None
            samples.append(new.opened_at + new.setup_complete_after - t0)
            await session.run(user_input="still there?")
        await session.aclose()
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2 reconnects timed per way")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 2
    # both log every drop at WARNING/ERROR with a traceback; the figures are the point here
    logging.getLogger("livekit").setLevel(logging.CRITICAL)
    logging.getLogger("{{ cookiecutter.package_name }}").setLevel(logging.CRITICAL)
    for turns in (10, 100, 1000):
        await bench_bytes(turns)
    for fault in ("drop", "go_away"):
        for make in ("handler", "plugin"):
            samples = await reconnect_latency(make, args.rounds, fault)
            figures(f"2. {fault} -> setupComplete ({make})", samples)


if __name__ == "__main__":
    asyncio.run(main())
