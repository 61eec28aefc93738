"""Metrics: scraped from a real worker's /metrics while a job process runs a call.

A kit worker process (the production worker: livekit's AgentServer and job process pool,
its Prometheus endpoint in multiprocess mode) serves a call on the real Gemini Live plugin
against the local Live server. The counters must move through a restart by RPC, a dropped
Gemini connection and a participant who comes back.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path

import aiohttp
from kit_helpers import kit_server
from prometheus_client.metrics import MetricWrapperBase

from {{ cookiecutter.package_name }} import metrics
from {{ cookiecutter.package_name }}.testing import LocalGeminiLiveServer
from {{ cookiecutter.package_name }}.testing.gemini.faults import Drop
from {{ cookiecutter.package_name }}.testing.livekit_server.worker_process import (
    start_workers,
)

LOCAL_API_KEY = "local-test-key"
PROJECT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of every sample /metrics serves."""
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)", line)
        if match and not line.startswith("#"):
            samples[match.group(1)] = float(match.group(2))
    return samples


async def until(port: int, sample: str, at_least: float, within: float = 30.0) -> float:
    """Scrape until ``sample`` reaches ``at_least``; its value."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = (await scrape(port)).get(sample, 0.0)
        if value >= at_least or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.3)


async def test_counters_move_through_a_restart_a_gemini_reconnect_and_a_return(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with LocalGeminiLiveServer() as gemini, kit_server() as server:
        env = {
            "SESSION_DB_PATH": str(tmp_path / "s.sqlite3"),
            "METRICS_PORT": str(port),
            "KIT_MODELS": "gemini-text",
            "GEMINI_BASE_URL": gemini.base_url,
            "GOOGLE_API_KEY": LOCAL_API_KEY,
            "SSL_CERT_FILE": str(gemini.cert_path),
        }
        (worker,) = await start_workers(server, 1, env=env, log_dir=tmp_path)
        try:
            ada = await server.join("desk", "ada", departure_timeout=60)
            await server.wait_for(lambda: len(ada.room.agent_lines()) >= 1, 30)
            await ada.say("Hello there.")
            await server.wait_for(lambda: len(ada.room.agent_lines()) >= 2, 30)

            await ada.rpc("session.restart", '{"reason": "frontend"}')
            assert await until(port, 'lkagent_restarts_total{reason="rpc"}', 1) == 1
            await ada.say("Still there?")  # answered: the new session is connected
            await server.wait_for(lambda: len(ada.room.agent_lines()) >= 3, 30)

            await gemini.inject(Drop())
            resumed = 'lkagent_gemini_reconnects_total{reason="drop",resumed="true"}'
            assert await until(port, resumed, 1) >= 1

            await ada.leave()
            ada = await server.join("desk", "ada", departure_timeout=60)
            assert await until(port, "lkagent_welcome_backs_total", 1) == 1
            assert await until(port, "lkagent_returning_participants_total", 1) == 1

            seen = await scrape(port)
            assert seen["lkagent_room_leases_acquired_total"] == 1
            assert seen["lkagent_room_leases_held"] == 1
            assert seen['lkagent_store_writes_total{outcome="sent"}'] > 0
            assert seen['lkagent_transcript_lines_total{role="agent"}'] >= 2
            assert seen["lkagent_restart_blackout_seconds_count"] == 1
            assert any(name.startswith("lk_agents_") for name in seen)  # livekit's own
        finally:
            worker.stop()


def test_the_dashboard_only_charts_metrics_the_worker_serves() -> None:
    dashboard = json.loads((PROJECT / "observability" / "grafana-dashboard.json").read_text())
    charted = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"lkagent_\w+", target["expr"])
    }
    served = {
        family.name
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    }
    assert charted == served  # every metric has a panel, and every panel a metric
