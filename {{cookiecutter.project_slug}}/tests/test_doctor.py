"""`doctor` and the checks before `dev`/`start`, against real servers: the kit's LiveKit
server, a plain HTTP server that is not LiveKit, the local Gemini server, a Redis that is up
or down."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from google import genai
from google.genai import errors, types

# plugins register on the main thread only, and doctor runs in a thread in these tests
from livekit.plugins import google as _register_google  # noqa: F401
from livekit.plugins import openai as _register_openai  # noqa: F401
from livekit.protocol import models as models_pb
from typer.testing import CliRunner

from {{ cookiecutter.package_name }}.cli import app
from {{ cookiecutter.package_name }}.cli._checks import check_rooms_outlive_retention
from {{ cookiecutter.package_name }}.settings import load_settings
from {{ cookiecutter.package_name }}.testing.gemini.server import LocalGeminiLiveServer
from {{ cookiecutter.package_name }}.testing.livekit_server.server import (
    LocalLiveKitServer,
)
from {{ cookiecutter.package_name }}.testing.redis_server import RedisServer

runner = CliRunner()
ROW = re.compile(r"^(OK|WARN|FAIL|SKIP)\s+([^:]+): (.*)$")


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def doctor(*args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run `doctor` (in a thread: the servers answer from this event loop); its exit code,
    its rows by check name as (label, detail), and its whole output."""
    result = await asyncio.to_thread(runner.invoke, app, ["doctor", *args])
    rows: dict[str, tuple[str, str]] = {}
    for line in result.stdout.splitlines():
        if match := ROW.match(line):
            label, name, detail = match.groups()
            rows.setdefault(name, (label, detail))
    return result.exit_code, rows, result.stdout


@pytest.fixture
async def not_livekit() -> AsyncIterator[str]:
    """An ordinary web server: a page at /, 404 pages elsewhere."""

    async def page(request: web.Request) -> web.Response:
        status = 200 if request.path == "/" else 404
        return web.Response(status=status, text="<html>hello</html>", content_type="text/html")

    site_app = web.Application()
    site_app.router.add_route("*", "/{tail:.*}", page)
    site_runner = web.AppRunner(site_app)
    await site_runner.setup()
    await web.TCPSite(site_runner, "127.0.0.1", 0).start()
    port = site_runner.addresses[0][1]
    yield f"ws://127.0.0.1:{port}"
    await site_runner.cleanup()


@pytest.fixture
async def livekit(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalLiveKitServer]:
    """A LiveKit server, with LIVEKIT_* pointing at it."""
    async with LocalLiveKitServer() as server:
        monkeypatch.setenv("LIVEKIT_URL", server.url)
        monkeypatch.setenv("LIVEKIT_API_KEY", server.api_key)
        monkeypatch.setenv("LIVEKIT_API_SECRET", server.api_secret)
        yield server


@pytest.fixture
async def gemini(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalGeminiLiveServer]:
    """A Gemini endpoint that knows one key, "the-real-key"; GEMINI_BASE_URL points at it."""
    async with LocalGeminiLiveServer(api_key="the-real-key") as server:
        monkeypatch.setenv("GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_path))
        yield server


@pytest.fixture
def redis_up() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(autouse=True)
def offline_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model keys are checked against local endpoints only: never the internet."""
    monkeypatch.setenv("MODEL_STACK", "gemini-live")
    monkeypatch.setenv("GEMINI_BASE_URL", f"https://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")


async def test_a_web_server_that_is_not_livekit_is_not_taken_for_one(
    monkeypatch: pytest.MonkeyPatch, not_livekit: str
) -> None:
    monkeypatch.setenv("LIVEKIT_URL", not_livekit)
    monkeypatch.setenv("LIVEKIT_API_KEY", "devkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "a-secret-long-enough-for-hs256-signing!!")
    code, rows, _ = await doctor()
    assert code == 1
    label, detail = rows["LiveKit server"]
    assert label == "FAIL"
    assert "is not a LiveKit server" in detail
    assert "HTTP 404 (text/html)" in detail
    assert rows["LiveKit API key and secret"][0] == "SKIP"


async def test_a_livekit_server_and_its_keys_pass(
    monkeypatch: pytest.MonkeyPatch, livekit: LocalLiveKitServer
) -> None:
    monkeypatch.setenv("SESSION_RETENTION_S", "15")  # within LiveKit's default 20 s
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    code, rows, output = await doctor()
    assert rows["LiveKit server"][0] == "OK", output
    assert rows["LiveKit API key and secret"] == ("OK", "accepted by the server")
    assert rows["rooms outlive SESSION_RETENTION_S"][0] == "OK"
    assert code == 0, output  # the key could only be checked for presence: a warning


async def test_keys_of_another_project_are_refused(
    monkeypatch: pytest.MonkeyPatch, livekit: LocalLiveKitServer
) -> None:
    monkeypatch.setenv("LIVEKIT_API_SECRET", "another-projects-secret-long-enough-!!")
    code, rows, _ = await doctor()
    assert code == 1
    assert rows["LiveKit server"][0] == "OK"  # it is LiveKit; it refuses these keys
    label, detail = rows["LiveKit API key and secret"]
    assert label == "FAIL"
    assert "the server refused them (HTTP 401" in detail


async def test_the_dev_servers_short_secret_is_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with LocalLiveKitServer(api_secret="secret") as server:
        monkeypatch.setenv("LIVEKIT_URL", server.url)
        monkeypatch.setenv("LIVEKIT_API_KEY", server.api_key)
        monkeypatch.setenv("LIVEKIT_API_SECRET", "secret")
        _, rows, _ = await doctor()
    label, detail = rows["LiveKit API key and secret"]
    assert label == "WARN"
    assert "shorter than 32 bytes: fine for livekit-server --dev" in detail


async def test_a_fake_gemini_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, gemini: LocalGeminiLiveServer
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-made-up")
    code, rows, _ = await doctor()
    assert code == 1
    label, detail = rows["GOOGLE_API_KEY"]
    assert label == "FAIL"
    assert "Google refused it (API_KEY_INVALID" in detail


async def test_a_working_gemini_key_is_accepted(
    monkeypatch: pytest.MonkeyPatch, gemini: LocalGeminiLiveServer
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "the-real-key")
    _, rows, _ = await doctor()
    label, detail = rows["GOOGLE_API_KEY"]
    assert label == "OK"
    assert detail.startswith("accepted by 127.0.0.1:")


async def test_the_local_gemini_server_answers_models_get_like_google(
    gemini: LocalGeminiLiveServer,
) -> None:
    """google-genai's own models.get (its sync client, in a thread: the server answers from
    this loop), against the local server: the model for the right key, Google's
    API_KEY_INVALID refusal for another. SSL_CERT_FILE trusts the server (fixture)."""
    model = "gemini-2.5-flash-native-audio-preview-12-2025"
    options = types.HttpOptions(base_url=gemini.base_url)
    good = genai.Client(api_key="the-real-key", http_options=options)
    found = await asyncio.to_thread(good.models.get, model=model)
    assert found.name == f"models/{model}"
    bad = genai.Client(api_key="AIza-made-up", http_options=options)
    with pytest.raises(errors.ClientError) as refused:
        await asyncio.to_thread(bad.models.get, model=model)
    assert refused.value.code == 400
    assert refused.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


async def test_an_unreachable_model_endpoint_leaves_presence_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-made-up")  # GEMINI_BASE_URL: a closed port
    _, rows, _ = await doctor()
    label, detail = rows["GOOGLE_API_KEY"]
    assert label == "WARN"
    assert "present; could only check presence" in detail


async def test_an_endpoint_that_is_not_the_gemini_api_leaves_presence_only(
    monkeypatch: pytest.MonkeyPatch, not_livekit: str
) -> None:
    monkeypatch.setenv("GEMINI_BASE_URL", not_livekit.replace("ws://", "http://"))
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-made-up")
    _, rows, _ = await doctor()
    label, detail = rows["GOOGLE_API_KEY"]
    assert label == "WARN"
    assert "answered HTTP 404, not as the Gemini API does" in detail


async def test_a_refused_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI answers 401 with invalid_api_key for a key it does not know."""

    async def models(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") == "Bearer sk-good":
            return web.json_response({"object": "list", "data": []})
        error = {"message": "Incorrect API key provided", "type": "invalid_request_error",
                 "param": None, "code": "invalid_api_key"}  # fmt: skip
        return web.json_response({"error": error}, status=401)

    openai_app = web.Application()
    openai_app.router.add_get("/v1/models", models)
    openai_runner = web.AppRunner(openai_app)
    await openai_runner.setup()
    await web.TCPSite(openai_runner, "127.0.0.1", 0).start()
    port = openai_runner.addresses[0][1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("MODEL_STACK", "openai-realtime")
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-made-up")
        _, refused, _ = await doctor()
        monkeypatch.setenv("OPENAI_API_KEY", "sk-good")
        _, accepted, _ = await doctor()
    finally:
        await openai_runner.cleanup()
    assert refused["OPENAI_API_KEY"] == ("FAIL", "OpenAI refused it (invalid_api_key)")
    assert accepted["OPENAI_API_KEY"][0] == "OK"


async def test_redis_down_fails_and_redis_up_passes(
    monkeypatch: pytest.MonkeyPatch, redis_up: RedisServer
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    _, down, _ = await doctor()
    monkeypatch.setenv("REDIS_URL", redis_up.url)
    _, up, _ = await doctor()
    assert down["Redis reachable"][0] == "FAIL"
    assert "PING failed" in down["Redis reachable"][1]
    assert up["Redis reachable"] == ("OK", "PING answered")


async def test_every_problem_at_once(monkeypatch: pytest.MonkeyPatch, not_livekit: str) -> None:
    """An invalid setting does not hide the rest: each problem is a row of its own."""
    monkeypatch.setenv("ROOM_LEASE_S", "soon")
    monkeypatch.setenv("LIVEKIT_URL", not_livekit)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    code, _, output = await doctor()
    assert code == 1
    failed = [line for line in output.splitlines() if line.startswith("FAIL")]
    assert any("ROOM_LEASE_S is invalid" in line for line in failed)
    assert any("LIVEKIT_API_KEY is not set" in line for line in failed)
    assert any("LIVEKIT_API_SECRET is not set" in line for line in failed)
    assert any(line.startswith("FAIL  LiveKit server:") for line in failed)
    assert any("GOOGLE_API_KEY is not set" in line for line in failed)
    assert any(line.startswith("FAIL  Redis reachable:") for line in failed)
    assert "fix: " in output
    assert "Traceback" not in output


async def test_an_invalid_url_skips_what_needs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "localhost:7880")  # no scheme
    _, rows, output = await doctor()
    assert "LIVEKIT_URL is invalid" in output
    assert rows["LiveKit server"] == ("SKIP", "skipped: LIVEKIT_URL is invalid")


def test_rooms_that_close_before_the_retention_fail() -> None:
    settings = load_settings(session_retention_s=300)
    early = models_pb.Room(name="support-1", departure_timeout=20)
    waiting = models_pb.Room(name="support-2", departure_timeout=300)
    failed = check_rooms_outlive_retention(settings, [early, waiting])
    assert failed.label == "FAIL"
    assert "'support-1' (20 s)" in failed.detail
    assert "departure_timeout=300" in failed.fix
    # none open, or none saying: doctor cannot know, and says so
    unknown = check_rooms_outlive_retention(settings, [])
    assert unknown.label == "WARN"
    assert "doctor cannot see how your backend mints tokens" in unknown.detail
    assert check_rooms_outlive_retention(settings, [waiting]).label == "WARN"


async def test_dev_checks_redis_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, livekit: LocalLiveKitServer
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    result = await asyncio.to_thread(runner.invoke, app, ["dev"])
    assert result.exit_code == 1
    assert "error: Redis reachable: PING failed" in result.stderr
    assert "fix: check REDIS_URL" in result.stderr
    assert not livekit.workers  # it never registered


async def test_dev_refuses_a_fake_model_key_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, livekit: LocalLiveKitServer, gemini: LocalGeminiLiveServer
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-made-up")
    result = await asyncio.to_thread(runner.invoke, app, ["dev"])
    assert result.exit_code == 1
    assert "error: GOOGLE_API_KEY: Google refused it (API_KEY_INVALID" in result.stderr
    assert not livekit.workers
