"""The CLI: one-line errors and exit codes a user can act on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app

AGENT_PY = Path(__file__).resolve().parents[1] / "agent.py"
runner = CliRunner()


class _NotYourLiveKit(BaseHTTPRequestHandler):
    """Answers like a LiveKit server that rejects the API key."""

    def do_GET(self) -> None:
        self._reply(200, b"OK")

    def do_POST(self) -> None:
        self._reply(401, json.dumps({"code": "unauthenticated", "msg": "invalid token"}).encode())

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def rejecting_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotYourLiveKit)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def livekit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_API_KEY", "devkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "a-secret-long-enough-for-hs256-signing!!")
    monkeypatch.setenv("GOOGLE_API_KEY", "g")
    monkeypatch.setenv("OPENAI_API_KEY", "o")


def test_dev_without_settings_names_what_to_set() -> None:
    result = runner.invoke(app, ["dev"])
    assert result.exit_code == 2
    assert "LIVEKIT_URL is not set" in result.stderr
    assert "Traceback" not in result.output


def test_dev_with_an_unreachable_server_fails_fast(
    monkeypatch: pytest.MonkeyPatch, livekit_env: None
) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:9")
    result = runner.invoke(app, ["dev"])
    assert result.exit_code == 1
    assert "cannot reach http://127.0.0.1:9" in result.stderr


def test_start_with_rejected_keys_says_so(
    monkeypatch: pytest.MonkeyPatch, livekit_env: None, rejecting_server: str
) -> None:
    monkeypatch.setenv("LIVEKIT_URL", rejecting_server)
    result = runner.invoke(app, ["start"])
    assert result.exit_code == 1
    assert "LiveKit API key and secret: the server refused them" in result.stderr


def test_console_points_to_the_livekit_cli() -> None:
    result = runner.invoke(app, ["console"])
    assert result.exit_code == 2
    assert "lk agent console" in result.stderr


def test_token_grants_the_identity_and_room(
    monkeypatch: pytest.MonkeyPatch, livekit_env: None
) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "wss://example.livekit.cloud")
    monkeypatch.setenv("AGENT_NAME", "front-desk")
    result = runner.invoke(app, ["token", "--identity", "alice", "--room", "support-1"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    claims = jwt.decode(token, os.environ["LIVEKIT_API_SECRET"], algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["video"] == {
        "roomJoin": True,
        "room": "support-1",
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
    }
    assert claims["roomConfig"]["agents"][0]["agentName"] == "front-desk"
    # the room outlives a dropped participant as long as their conversation is kept
    assert claims["roomConfig"]["departureTimeout"] == 300
    assert "meet.livekit.io/custom?liveKitUrl=" in result.stderr


def test_token_refuses_a_blank_identity(monkeypatch: pytest.MonkeyPatch, livekit_env: None) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "wss://example.livekit.cloud")
    result = runner.invoke(app, ["token", "--identity", "  ", "--room", "r"])
    assert result.exit_code == 2
    assert "--identity" in result.stderr


def test_doctor_lists_each_failure_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, livekit_env: None
) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:9")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "FAIL" in rows["LiveKit server reachable"]
    assert "FAIL" in rows["Redis reachable"]
    assert "OK" in rows["model plugins installed"]


def test_a_second_worker_on_a_busy_port_says_how_to_move_it(
    monkeypatch: pytest.MonkeyPatch, livekit_env: None
) -> None:
    with socket.socket() as first_worker:
        first_worker.bind(("127.0.0.1", 0))
        first_worker.listen()
        port = first_worker.getsockname()[1]
        monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:9")
        monkeypatch.setenv("WORKER_HOST", "127.0.0.1")
        monkeypatch.setenv("WORKER_PORT", str(port))
        result = runner.invoke(app, ["start"])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "WORKER_PORT=0" in result.stderr


def test_real_process_dev_without_settings() -> None:
    """The README path, as a user runs it: one line per problem, exit 2, no warnings."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, str(AGENT_PY), "dev"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: LIVEKIT_URL is not set" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "DeprecationWarning" not in proc.stderr
