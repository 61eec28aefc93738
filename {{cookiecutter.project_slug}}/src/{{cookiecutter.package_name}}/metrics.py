"""What the worker counts, served on livekit's own Prometheus endpoint.

With ``METRICS_PORT`` set, the worker's main process serves ``/metrics`` on that port
(livekit's ``prometheus_port``) in prometheus_client's multiprocess mode: every job process
writes its values to a directory of the worker's own, and a scrape adds them up, so counters
survive the end of each job and gauges drop a dead process's share. livekit's own metrics
(jobs running, CPU load, process start times) are served beside these.

Every name starts ``lkagent_``. The resilience parts do not know about Prometheus: the
composition root (``worker.py``) hands their events to the ``watch_*`` functions here; only
the store's write queue and the room watcher count directly (they have no events).
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .resilience.gemini.resume import GeminiResume
    from .resilience.supervisor import SessionSupervisor

__all__ = ["multiprocess_dir", "watch_gemini", "watch_supervisor"]

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RESTARTS = Counter("lkagent_restarts", "Session restarts, by reason.", ["reason"])
RESTART_BLACKOUT = Histogram(
    "lkagent_restart_blackout_seconds", "From a restart's start to the new session listening.",
    buckets=_SECONDS,
)  # fmt: skip
GEMINI_RECONNECTS = Counter(
    "lkagent_gemini_reconnects", "Gemini Live (re)connects by reason (drop, go_away, "
    "handle_refused, start: a session resumed after a crash...), resumed by handle or replayed.",
    ["reason", "resumed"],
)  # fmt: skip
GEMINI_ITEMS_REPLAYED = Counter(
    "lkagent_gemini_items_replayed", "Chat items sent to bring a reconnected session up to date."
)
GEMINI_HANDLE_AGE = Histogram(
    "lkagent_gemini_handle_age_seconds", "Age of the resumption handle a reconnect used.",
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200),
)  # fmt: skip
RETURNING = Counter("lkagent_returning_participants", "Joins of participants the store knew.")
WELCOME_BACKS = Counter("lkagent_welcome_backs", "Welcome-back greetings started.")
LEASES_ACQUIRED = Counter("lkagent_room_leases_acquired", "Room leases taken by this worker.")
LEASES_LOST = Counter("lkagent_room_leases_lost", "Room leases lost to another worker.")
LEASES_HELD = Gauge(
    "lkagent_room_leases_held", "Rooms this worker serves now.", multiprocess_mode="livesum"
)
REDISPATCHES = Counter(
    "lkagent_room_redispatches", "Rooms given a new job after their worker died."
)
STORE_WRITES = Counter(
    "lkagent_store_writes", "Session store writes, by outcome: sent, queued (the store "
    "could not answer), retried (a queued write replayed), refused (dropped).",
    ["outcome"],
)  # fmt: skip
STORE_QUEUE_DEPTH = Gauge(
    "lkagent_store_queue_depth", "Writes waiting for the store to answer.",
    multiprocess_mode="livesum",
)  # fmt: skip
STORE_WRITE_SECONDS = Histogram(
    "lkagent_store_write_seconds", "Time a session store write took when sent.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)  # fmt: skip
TRANSCRIPT_LINES = Counter("lkagent_transcript_lines", "Final transcript lines, by role.", ["role"])


def multiprocess_dir() -> str:
    """The directory this worker's processes write their values to: PROMETHEUS_MULTIPROC_DIR,
    else one made for this worker (livekit empties it at start, so workers never share one).

    Values are multiprocess only in processes that import prometheus_client after it is set:
    job processes always; the main process when it is set before the worker starts, as
    ``agent.py start|dev`` does.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="lkagent-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def watch_supervisor(supervisor: SessionSupervisor) -> None:
    """Count a conversation's restarts and transcript lines."""

    def restarted(ev: Any) -> None:
        RESTARTS.labels(reason=ev.reason.split(":", 1)[0]).inc()
        RESTART_BLACKOUT.observe(ev.blackout)

    supervisor.on("restarted", restarted)
    supervisor.on("transcript_segment", lambda ev: TRANSCRIPT_LINES.labels(ev.segment.role).inc())


def watch_gemini(gemini: GeminiResume) -> None:
    """Count Gemini Live reconnects: resumed or replayed, items replayed, handle age."""

    def reconnected(ev: Any) -> None:
        GEMINI_RECONNECTS.labels(reason=ev.reason, resumed=str(ev.resumed).lower()).inc()
        GEMINI_ITEMS_REPLAYED.inc(ev.items_replayed)
        if ev.handle_age is not None:
            GEMINI_HANDLE_AGE.observe(ev.handle_age)

    gemini.on("reconnected", reconnected)
