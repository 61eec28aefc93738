"""Refused key to apology: how soon a caller hears why the call ends (figures only).

    uv run python benchmarks/bench_apology.py [--repeat 10] [--quick]

Each run is a job through the worker's wiring (``run_job`` with the stack ``build_models``
makes: the Gemini plugin with the resume handler) against the local Live server, which
refuses any key but its own as Gemini does (close 1007 "API key not valid"), reached as a
deployment reaches a proxy (``GEMINI_BASE_URL``, trust through ``SSL_CERT_FILE``). A frontend
listens to the agent's audio track from the moment it is published and notes when its first
loud frame arrives.

- refused: a wrong key and no ``FALLBACK_MODEL_STACK``: the conversation ends with the
  shipped apology clip, played by a session with no model. Timed from the refusal (the
  server closed the refused connection) and from the connection opening, to the apology's
  first frame; and from the refusal to the end of the job (the clip's length, and then some).
- baseline: the same job with the right key, from the connection opening to the greeting's
  first frame: how long a caller waits for the first sound when nothing is wrong. Both are
  timed from the same point (the server accepting the websocket, and the job's start) to
  the caller's first sound, so the ratios say what a refusal costs over a working model.
  The local server answers within milliseconds, so the baseline is the wiring's own cost:
  a real Gemini takes longer to its first audio, the apology (no model) does not.

Runs alternate (refused first, then the baseline first) after one untimed baseline run.

Target: refusal to apology <= 2 s (median).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

from livekit import rtc

from {{ cookiecutter.package_name }}.models import build_models
from {{ cookiecutter.package_name }}.settings import Settings, load_settings
from {{ cookiecutter.package_name }}.testing import (
    LocalGeminiLiveServer,
    SimulatedJob,
    SimulatedRoom,
)
from {{ cookiecutter.package_name }}.worker import MODEL_REFUSED, run_job

USER, AGENT = "user-1", "agent"
RIGHT_KEY, WRONG_KEY = "the-right-key", "AIza-a-wrong-key"
TARGET_S = 2.0
TIMEOUT_S = 20.0


class FirstSound:
    """A frontend subscribed to the agent's audio track: when its first loud frame arrived."""

    def __init__(self, room: SimulatedRoom) -> None:
        self.at: float | None = None
        self._streams: list[rtc.AudioStream] = []
        self._tasks: list[asyncio.Task[None]] = []
        room.on("local_track_published", self._published)

    def _published(self, _publication: rtc.LocalTrackPublication, track: rtc.Track) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            stream = rtc.AudioStream(track, sample_rate=16000, num_channels=1)
            self._streams.append(stream)
            self._tasks.append(asyncio.create_task(self._listen(stream)))

    async def _listen(self, stream: rtc.AudioStream) -> None:
        async for event in stream:
            samples = array("h", bytes(event.frame.data))
            if self.at is None and max(map(abs, samples), default=0) > 300:
                self.at = time.monotonic()

    async def heard(self) -> float:
        deadline = time.monotonic() + TIMEOUT_S
        while self.at is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the frontend heard nothing on the agent's track")
            await asyncio.sleep(0.01)
        return self.at

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for stream in self._streams:
            await stream.aclose()


def settings_for(srv: LocalGeminiLiveServer, key: str, db: str) -> Settings:
    return load_settings(
        model_stack="gemini-live",
        google_api_key=key,
        gemini_base_url=srv.base_url,
        fallback_model_stack=None,
        room_mode="one-to-one",
        redis_url=None,
        session_db_path=db,
    )


async def one_job(srv: LocalGeminiLiveServer, settings: Settings, name: str) -> dict[str, float]:
    """One job in a new room; the times of what the caller heard, from the server's side."""
    room = SimulatedRoom(name=name, agent_identity=AGENT)
    room.add_participant(USER, subscribe=True)
    sound, first = FirstSound(room), len(srv.connections)
    refused = settings.google_api_key is not None and (
        settings.google_api_key.get_secret_value() != RIGHT_KEY
    )
    times: dict[str, float] = {}
    with SimulatedJob(room, agent_identity=AGENT) as job:
        began = time.monotonic()
        conversation = await run_job(
            job.ctx, settings=settings, models=lambda: build_models(settings)
        )
        heard = await sound.heard()
        if refused:  # the clip plays to its end, then the job ends
            await asyncio.wait_for(job.ended.wait(), TIMEOUT_S)
            times["ended"] = time.monotonic()
            if job.shutdown_reasons != [f"conversation closed: {MODEL_REFUSED}"]:
                raise RuntimeError(f"the job ended for {job.shutdown_reasons}")
        if conversation is not None:
            await conversation.aclose()
        await room.disconnect()
    await sound.aclose()
    connections = srv.connections[first:]
    opened, closed = connections[0].opened_at, connections[0].closed_at
    times |= {
        "connections": len(connections),
        "from_start": heard - began,
        "from_connect": heard - opened,
    }
    if refused:
        if closed is None or connections[0].refused_with is None:
            raise RuntimeError("the server did not refuse the key")
        times |= {"from_refusal": heard - closed, "to_end": times["ended"] - closed}
    return times


def figures(name: str, samples: Sequence[float]) -> None:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    print(
        f"{name:<44} median {statistics.median(ordered) * 1000:7.1f} ms"
        f"   p95 {p95 * 1000:7.1f} ms   max {ordered[-1] * 1000:7.1f} ms"
    )


async def main(repeat: int) -> None:
    logging.disable(logging.ERROR)  # every refused run logs the refusal, as it should
    runs: dict[str, list[dict[str, float]]] = {"refused": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="bench-apology-") as tmp:
        db = str(Path(tmp) / "sessions.sqlite3")
        async with LocalGeminiLiveServer(api_key=RIGHT_KEY) as srv:
            # trust for the server's certificate, as for a proxy's (read per connection)
            os.environ["SSL_CERT_FILE"] = str(srv.cert_path)
            keys = {"refused": WRONG_KEY, "baseline": RIGHT_KEY}
            await one_job(srv, settings_for(srv, RIGHT_KEY, db), "warm-up")
            for run in range(repeat):
                order = ("refused", "baseline") if run % 2 == 0 else ("baseline", "refused")
                for which in order:
                    settings = settings_for(srv, keys[which], db)
                    runs[which].append(await one_job(srv, settings, f"{which}-{run}"))
    refused, baseline = runs["refused"], runs["baseline"]
    print(f"{repeat} runs each; a frontend's first loud frame on the agent's track")
    figures("refused: refusal -> apology", [r["from_refusal"] for r in refused])
    figures("refused: connect -> apology", [r["from_connect"] for r in refused])
    figures("refused: job start -> apology", [r["from_start"] for r in refused])
    figures("refused: refusal -> job ended", [r["to_end"] for r in refused])
    figures("baseline (right key): connect -> greeting", [r["from_connect"] for r in baseline])
    figures("baseline (right key): job start -> greeting", [r["from_start"] for r in baseline])
    retries = sum(int(r["connections"]) - 1 for r in refused)
    print(f"connections per refused run: 1 expected; retries seen: {retries}")
    apology = statistics.median(r["from_connect"] for r in refused)
    greeting = statistics.median(r["from_connect"] for r in baseline)
    print(f"ratio connect->apology / connect->greeting (medians): {apology / greeting:.2f}")
    apology = statistics.median(r["from_start"] for r in refused)
    greeting = statistics.median(r["from_start"] for r in baseline)
    print(f"ratio job start->apology / job start->greeting (medians): {apology / greeting:.2f}")
    median = statistics.median(r["from_refusal"] for r in refused)
    verdict = "met" if median <= TARGET_S else "NOT met"
    print(f"refusal -> apology median {median:.3f} s; target <= {TARGET_S:.1f} s: {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="runs timed per way")
    parser.add_argument("--quick", action="store_true", help="3 runs per way")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 3
    asyncio.run(main(args.repeat))
