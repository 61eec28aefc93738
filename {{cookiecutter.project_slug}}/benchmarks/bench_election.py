"""Election benchmark (figures, not pass/fail).

    uv run python benchmarks/bench_election.py [--ttls 0.5,1,2] [--runs 5] [--participants 8]
        [--quick]

1. Failover against the lease time: a primary dies holding the room lease in a real
   redis-server (its heartbeat stops, nothing is released, as with kill -9); the time until
   the standby (polling every ttl/5) holds the lease, as a fraction of the lease time.
2. Election cost per join, in one job with real AgentSessions in a simulated room: the time
   from a participant joining to their listen-only transcriber running and the election
   settled, for the 1st..Nth participant; and a handover (the primary's participant leaves:
   one demotion, one promotion) until the new primary holds the SessionHost.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time

from livekit.agents.testing import fake_job_context

from {{ cookiecutter.package_name }}.resilience import _livekit
from {{ cookiecutter.package_name }}.resilience.primary.election import SessionElection
from {{ cookiecutter.package_name }}.resilience.primary.room_lease import (
    RedisRoomLease,
    RoomPrimacy,
)
from {{ cookiecutter.package_name }}.resilience.store.redis import connect
from {{ cookiecutter.package_name }}.resilience.transcribers import (
    TranscriberPool,
)
from {{ cookiecutter.package_name }}.testing import SimulatedRoom
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer
from {{ cookiecutter.package_name }}.testing.room.speech import (
    SpeechCodebook,
    ToneSTT,
)


async def failover_once(url: str, room: str, ttl: float, at: float) -> float:
    holder = RoomPrimacy(RedisRoomLease(connect(url), room, "holder", ttl=ttl))
    standby = RoomPrimacy(RedisRoomLease(connect(url), room, "standby", ttl=ttl))
    assert await holder.start() and not await standby.start()
    await asyncio.sleep(at)  # 0: right after a renewal (the worst case)
    died = time.monotonic()
    await holder.aclose(release=False)  # dead: no more renewals, no release
    await standby.wait_until_primary()
    took = time.monotonic() - died
    await standby.aclose()
    return took


async def bench_failover(ttls: list[float], runs: int) -> None:
    print("1. failover: holder dies (no release), standby polls every min(ttl/10, 0.5 s)")
    print(f"   {'ttl s':>6} {'death':>22} {'median s':>9} {'max s':>7} {'max/ttl':>8}")
    with RedisServer(durable=False) as server:
        for ttl in ttls:
            for label, at in (("right after a renewal", 0.0), ("mid-renewal-period", ttl / 6)):
                took = [
                    await failover_once(server.url, f"room-{ttl}-{at}-{n}", ttl, at)
                    for n in range(runs)
                ]
                print(f"   {ttl:6.2f} {label:>22} {statistics.median(took):9.3f} "
                      f"{max(took):7.3f} {max(took) / ttl:8.2f}")  # fmt: skip
    print("   bound: ttl + poll after the last renewal; defaults (ttl 3 s, poll 0.3 s): 3.3 s")


async def bench_joins(participants: int) -> None:
    print(f"2. election cost per join ({participants} participants, real AgentSessions)")
    room = SimulatedRoom(agent_identity="agent")
    codebook = SpeechCodebook()
    with fake_job_context(room=room, agent_identity="agent") as ctx:
        election = SessionElection(ctx, room=room)
        pool = TranscriberPool(
            room, stt_factory=lambda: ToneSTT(codebook), election=election, job_ctx=ctx
        )
        pool.follow()
        costs = []
        for n in range(participants):
            began = time.monotonic()
            room.add_participant(f"p{n}")
            await pool.settled()
            await election.settled()
            costs.append(time.monotonic() - began)
        print("   join -> transcriber running, election settled (ms): "
              + " ".join(f"{c * 1000:.1f}" for c in costs))  # fmt: skip
        print(f"   median {statistics.median(costs) * 1000:.1f} ms, first (primary) "
              f"{costs[0] * 1000:.1f} ms")  # fmt: skip
        handovers = []
        for n in range(min(3, participants - 1)):
            began = time.monotonic()
            room.remove_participant(f"p{n}")
            await pool.settled()
            await election.settled()
            primary = election.primary
            assert primary is not None and primary.session is not None
            assert _livekit.has_session_host(primary.session)
            handovers.append(time.monotonic() - began)
        print("   primary leaves -> next primary holds the SessionHost (ms): "
              + " ".join(f"{h * 1000:.1f}" for h in handovers))  # fmt: skip
        await election.aclose()
        await pool.aclose()
    await room.disconnect()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ttls", default="0.5,1,2")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="ttl 0.5, one run, 3 participants")
    args = parser.parse_args()
    if args.quick:
        args.ttls, args.runs, args.participants = "0.5", 1, 3
    logging.getLogger("livekit").setLevel(logging.ERROR)
    await bench_failover([float(t) for t in args.ttls.split(",")], args.runs)
    await bench_joins(args.participants)


if __name__ == "__main__":
    asyncio.run(main())
