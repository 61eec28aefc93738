"""The CLI: one-line errors and exit codes a user can act on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.settings import Settings

AGENT_PY = Path(__file__).resolve().parents[1] / "agent.py"
WORKER = "{{ cookiecutter.package_name }}.worker"
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


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def livekit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_API_KEY", "devkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "a-secret-long-enough-for-hs256-signing!!")
    monkeypatch.setenv("GOOGLE_API_KEY", "g")
    monkeypatch.setenv("OPENAI_API_KEY", "o")
    # the keys are checked before a worker starts: against nothing, never the internet
    monkeypatch.setenv("GEMINI_BASE_URL", f"https://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")


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
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    rows = {line[6:].split(":", 1)[0]: line for line in lines if line[:4] in ("OK  ", "FAIL")}
    assert rows["LiveKit server"].startswith("FAIL")
    assert rows["Redis reachable"].startswith("FAIL")
    assert rows["model plugins installed"].startswith("OK")
    fixes = [line for line in lines if line.strip().startswith("fix: ")]
    assert len(fixes) >= 2
    assert lines[-1].startswith("doctor: 2 failed")


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


def test_a_busy_metrics_port_is_named_before_the_worker_starts(
    monkeypatch: pytest.MonkeyPatch, livekit_env: None
) -> None:
    with socket.socket() as other_worker:
        other_worker.bind(("127.0.0.1", 0))
        other_worker.listen()
        port = other_worker.getsockname()[1]
        monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:9")
        monkeypatch.setenv("WORKER_HOST", "127.0.0.1")
        monkeypatch.setenv("WORKER_PORT", "0")
        monkeypatch.setenv("METRICS_PORT", str(port))
        started = runner.invoke(app, ["start"])
        doctor = runner.invoke(app, ["doctor"])
    assert started.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in started.stderr
    assert "set another METRICS_PORT" in started.stderr
    (row,) = [line for line in doctor.stdout.splitlines() if "metrics port free" in line]
    assert row.startswith("FAIL") and f"127.0.0.1:{port}" in row


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


def test_a_bad_flag_is_one_line() -> None:
    cases = {
        ("simulate", "--log-level", "bogus"): "--log-level (or LOG_LEVEL) must be one of",
        ("simulate", "--json", "no-such-folder/sim.json"): "the folder no-such-folder does not",
        ("simulate", "--scenario", "nope"): "--scenario must be one of basic",
        ("simulate", "--no-such-flag"): "No such option: --no-such-flag",
        ("dev", "--log-level", "loud"): "--log-level (or LOG_LEVEL) must be one of",
        ("token", "--room", "r"): "Missing option '--identity'",
        ("no-such-command",): "No such command 'no-such-command'",
    }
    for args, expected in cases.items():
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2, args
        assert result.stdout == "", args
        assert result.stderr.count("\n") == 1, (args, result.stderr)
        assert result.stderr.startswith("error: ") and expected in result.stderr, args


def test_an_invalid_setting_is_one_line_in_any_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOM_LEASE_S", "soon")
    for args in (["sessions", "list"], ["simulate"], ["token", "--identity", "a", "--room", "r"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert "error: ROOM_LEASE_S is invalid" in result.stderr, args
        assert result.exception is None or isinstance(result.exception, SystemExit)


# every command, with arguments that get it as far as reading the settings
COMMANDS = {
    "dev": ["dev"],
    "start": ["start"],
    "console": ["console", "--connect-addr", "127.0.0.1:9"],
    "download-files": ["download-files"],
    "token": ["token", "--identity", "ada", "--room", "r"],
    "simulate": ["simulate"],
    "sessions-list": ["sessions", "list"],
    "sessions-show": ["sessions", "show", "ada", "--room", "r"],
    "sessions-purge": ["sessions", "purge", "--room", "r", "--yes"],
    "sessions-quarantine": ["sessions", "quarantine"],
    "sessions-restore": ["sessions", "restore", "a-key"],
    "sessions-export": ["sessions", "export", "ada", "--room", "r"],
    "sessions-import": ["sessions", "import", "f.json"],
    "sessions-stats": ["sessions", "stats"],
    "transcript": ["transcript", "ada", "--room", "r"],
}
# a value outside a choice; a LiveKit URL with no scheme
BAD_SETTINGS = {"ROOM_STANDBY": "bogus", "LIVEKIT_URL": "localhost:7880"}
LIVEKIT_COMMANDS = ("dev", "start", "console", "token")


def only(**settings: str) -> dict[str, str]:
    """This environment with ``settings`` as the only ones set."""
    ours = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in ours} | settings


def run_agent(args: list[str], cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """`python agent.py ARGS` in ``cwd`` (no .env.local) with only ``settings`` set."""
    return subprocess.run(
        [sys.executable, str(AGENT_PY), *args],
        capture_output=True,
        text=True,
        env=only(**settings),
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "variable"),
    [(command, "ROOM_STANDBY") for command in COMMANDS]
    + [(command, "LIVEKIT_URL") for command in LIVEKIT_COMMANDS],
)
def test_a_bad_setting_is_one_line_in_every_command(
    tmp_path: Path, command: str, variable: str
) -> None:
    """A real process, as a user runs it: one line naming the setting, exit 2."""
    proc = run_agent(COMMANDS[command], tmp_path, **{variable: BAD_SETTINGS[variable]})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {variable} is invalid: "), proc.stderr


def test_help_and_doctor_with_bad_settings(tmp_path: Path) -> None:
    """`--help` needs no setting; `doctor` names each bad one and still checks the rest."""
    helped = run_agent(["--help"], tmp_path, **BAD_SETTINGS)
    assert helped.returncode == 0, helped.stderr
    assert all(command in helped.stdout for command in ("dev", "doctor", "sessions"))
    checked = run_agent(["doctor"], tmp_path, **BAD_SETTINGS)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    rows = checked.stdout.splitlines()
    for variable in BAD_SETTINGS:
        named = [row for row in rows if row.startswith(f"FAIL  settings: {variable} is invalid")]
        assert len(named) == 1, checked.stdout
    assert any(row.startswith("OK    model plugins installed") for row in rows)
    assert "Traceback" not in checked.stdout + checked.stderr


def test_only_the_commands_that_run_the_worker_import_it(tmp_path: Path) -> None:
    """`doctor`, `token` and `sessions` never import worker.py (nor livekit.agents, but for
    doctor's plugin check): only the commands that run the worker do."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['agent.py', *sys.argv[1:]]\n"
        "try:\n"
        f"    runpy.run_path({str(AGENT_PY)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('loaded:', [m for m in {[WORKER, 'livekit.agents']!r} if m in sys.modules])\n"
    )
    livekit = {
        "LIVEKIT_URL": "ws://127.0.0.1:9",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "a-secret-long-enough-for-hs256-signing!!",
    }
    for args, expect in (
        (["token", "--identity", "ada", "--room", "r"], "loaded: []"),
        (["sessions", "list"], "loaded: []"),
        (["doctor"], "loaded: ['livekit.agents']"),
    ):
        proc = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=only(**livekit),
            timeout=120,
        )
        assert expect in proc.stdout, (args, proc.stdout, proc.stderr)


def test_help_imports_no_livekit_and_livekit_still_finds_the_server() -> None:
    """`python agent.py --help` loads no livekit code; `python -m livekit.agents start
    agent.py` still finds `server` (livekit's own discovery, in a fresh process)."""
    project = AGENT_PY.parent
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['agent.py', '--help']\n"
        "try:\n"
        "    runpy.run_path('agent.py', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "heavy = ('livekit.agents', 'livekit.rtc', 'google.genai')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    helped = subprocess.run(
        [sys.executable, "-c", probe], cwd=project, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    assert "heavy: []" in helped.stdout
    assert "simulate" in helped.stdout
    discover = (
        "from pathlib import Path\n"
        "from livekit.agents import AgentServer\n"
        "from livekit.agents.cli.discover import get_import_data\n"
        "import importlib\n"
        "data = get_import_data(path=Path('agent.py'))\n"
        "module = importlib.import_module(data.module_data.module_import_str)\n"
        "print(data.app_name, isinstance(getattr(module, data.app_name), AgentServer))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", discover], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().endswith("server True")


def test_token_with_the_dev_servers_secret_says_so_once(tmp_path: Path) -> None:
    """`livekit-server --dev`'s secret is 6 bytes: one clear line, not PyJWT's warning."""
    env = {
        **os.environ,
        "PYTHONWARNINGS": "default",
        "LIVEKIT_URL": "ws://localhost:7880",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "secret",
    }
    proc = subprocess.run(
        [sys.executable, str(AGENT_PY), "token", "--identity", "ada", "--room", "r"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with warnings.catch_warnings():  # the same PyJWT warning, here for the test's decode
        warnings.simplefilter("ignore")
        jwt.decode(proc.stdout.strip(), "secret", algorithms=["HS256"])
    assert proc.stderr.count("LIVEKIT_API_SECRET is shorter than 32 bytes") == 1
    assert "InsecureKeyLengthWarning" not in proc.stderr


def test_simulate_shows_the_conversation_and_keeps_logs_apart(tmp_path: Path) -> None:
    """stdout holds the conversation only; the logs (a Gemini scenario has warnings: it
    drops connections on purpose) go to the log file, and stderr says where."""
    log = tmp_path / "sim.log"
    proc = subprocess.run(
        [sys.executable, str(AGENT_PY), "simulate", "--scenario", "gemini-faults",
         "--log-file", str(log)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    conversation = proc.stdout.splitlines()
    assert conversation[0].startswith("simulate gemini-faults:")
    assert any(line.startswith("[agent] reply to: ") for line in conversation)
    assert all(line.startswith(("simulate", "[", "  ..", "ok:")) for line in conversation)
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["event"] == "gemini handle refused; replaying the history" for r in logged)
    # the template asks for the realtime model's own turn detection: no VAD warning
    assert not any("TurnDetector requires a VAD" in r["event"] for r in logged)
    assert proc.stderr.strip().startswith(f"logs: {log} (")
    assert "Traceback" not in proc.stderr
