"""Whether the model keys the settings need work, for `doctor` and before a worker starts.

Each key is tried with the cheapest authenticated request its provider has (Gemini: get the
model; OpenAI: list the models), at the endpoint the worker uses (GEMINI_BASE_URL,
OPENAI_BASE_URL). A refusal is a failure; when the endpoint cannot be reached, or answers
unlike the provider's API (a Live-only proxy), the result says the key could only be checked
for presence (a warning, never a failure).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from ._checks import CheckResult, reason

if TYPE_CHECKING:
    from ..settings import Settings

TIMEOUT_S = 5.0
GEMINI_API = "https://generativelanguage.googleapis.com"
GEMINI_API_VERSION = "v1beta"
OPENAI_API = "https://api.openai.com/v1"
# a missing key the settings do not name: they name one per model stack, so with
# ROOM_MODE=multi-participant and MODEL_STACK=gemini-live only GOOGLE_API_KEY
MISSING = {
    "GOOGLE_API_KEY": "GOOGLE_API_KEY is not set: get a Gemini API key at "
    "https://aistudio.google.com/apikey",
    "OPENAI_API_KEY": "OPENAI_API_KEY is not set: ROOM_MODE=multi-participant transcribes each "
    "participant with OpenAI speech-to-text (https://platform.openai.com/api-keys)",
}


async def check_model_keys(settings: Settings) -> list[CheckResult]:
    """One result per key the model stacks (and the transcribers) need, checked at once."""
    problems = settings.model_problems()
    checks = {"GOOGLE_API_KEY": check_gemini_key, "OPENAI_API_KEY": check_openai_key}
    keys = {"GOOGLE_API_KEY": settings.google_api_key, "OPENAI_API_KEY": settings.openai_api_key}

    async def check(variable: str) -> CheckResult:
        if keys[variable] is None:
            said = [p for p in problems if p.startswith(f"{variable} is not set")]
            what, _, fix = (said or [MISSING[variable]])[0].partition(": ")
            return CheckResult(variable, False, what, fix)
        return await checks[variable](settings)

    return list(await asyncio.gather(*(check(v) for v in _needed_keys(settings))))


def _needed_keys(settings: Settings) -> list[str]:
    stacks = {s for s in (settings.model_stack, settings.fallback_model_stack) if s is not None}
    needed = []
    if "gemini-live" in stacks:
        needed.append("GOOGLE_API_KEY")
    if any(s.startswith("openai") for s in stacks) or settings.room_mode == "multi-participant":
        needed.append("OPENAI_API_KEY")
    return needed


async def check_gemini_key(settings: Settings) -> CheckResult:
    """GET the model GEMINI_MODEL names: 200 means the key works and the model exists."""
    name = "GOOGLE_API_KEY"
    assert settings.google_api_key is not None
    base = (
        settings.gemini_base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or GEMINI_API
    ).rstrip("/")
    host = urlsplit(base).netloc
    model = settings.gemini_model.removeprefix("models/")
    url = f"{base}/{GEMINI_API_VERSION}/models/{quote(model)}"
    headers = {"x-goog-api-key": settings.google_api_key.get_secret_value()}
    answer = await _get(url, headers)
    if isinstance(answer, str):
        return _presence_only(name, answer)
    status, body = answer
    if status == 200 and isinstance(body, dict) and "name" in body:
        return CheckResult(name, True, f"accepted by {host} ({model} found)")
    # Google's errors are google.rpc.Status JSON; anything else did not come from the API
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or "status" not in error:
        return _presence_only(name, f"{host} answered HTTP {status}, not as the Gemini API does")
    message = error.get("message") or f"HTTP {status}"
    if error["status"] == "NOT_FOUND":
        return CheckResult(
            "GEMINI_MODEL",
            False,
            f"the API does not know the model {model!r} ({message})",
            "set GEMINI_MODEL to a Live model, e.g. gemini-2.5-flash-native-audio-preview-12-2025",
        )
    if status == 429:
        return CheckResult(name, True, f"accepted, but rate limited now: {message}", warning=True)
    if status >= 500:
        return _presence_only(name, f"{host} failed (HTTP {status}: {message})")
    details = [d for d in error.get("details", []) if isinstance(d, dict)]
    reason = next((d["reason"] for d in details if d.get("reason")), error["status"])
    return CheckResult(
        name,
        False,
        f"Google refused it ({reason}: {message})",
        "create a key at https://aistudio.google.com/apikey and set GOOGLE_API_KEY",
    )


async def check_openai_key(settings: Settings) -> CheckResult:
    """GET /v1/models: 200 means the key works."""
    name = "OPENAI_API_KEY"
    assert settings.openai_api_key is not None
    # the openai SDK reads OPENAI_BASE_URL itself, so the worker goes there too
    base = (os.environ.get("OPENAI_BASE_URL") or OPENAI_API).rstrip("/")
    host = urlsplit(base).netloc
    headers = {"Authorization": f"Bearer {settings.openai_api_key.get_secret_value()}"}
    answer = await _get(f"{base}/models", headers)
    if isinstance(answer, str):
        return _presence_only(name, answer)
    status, body = answer
    if status == 200 and isinstance(body, dict) and "data" in body:
        return CheckResult(name, True, f"accepted by {host}")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return _presence_only(name, f"{host} answered HTTP {status}, not as the OpenAI API does")
    message = error.get("message") or f"HTTP {status}"
    if status == 429:
        return CheckResult(name, True, f"accepted, but rate limited now: {message}", warning=True)
    if status >= 500:
        return _presence_only(name, f"{host} failed (HTTP {status}: {message})")
    return CheckResult(
        name,
        False,
        f"OpenAI refused it ({error.get('code') or error.get('type') or f'HTTP {status}'})",
        "create a key at https://platform.openai.com/api-keys and set OPENAI_API_KEY",
    )


def _presence_only(name: str, why: str) -> CheckResult:
    return CheckResult(
        name,
        True,
        f"present; could only check presence: {why}",
        "run doctor where the worker runs, with its network, to check the key itself",
        warning=True,
    )


async def _get(url: str, headers: dict[str, str]) -> tuple[int, object] | str:
    """(status, JSON body or None), or why the endpoint could not be reached."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http,
            http.get(url, headers=headers, ssl=_ssl_context()) as response,
        ):
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            return response.status, body
    except TimeoutError:
        return f"{urlsplit(url).netloc} did not answer within {TIMEOUT_S:g} s"
    except (aiohttp.ClientError, OSError) as exc:
        return reason(exc)


def _ssl_context() -> ssl.SSLContext:
    # as google-genai and httpx do: SSL_CERT_FILE when set, else certifi's bundle
    import certifi

    return ssl.create_default_context(
        cafile=os.environ.get("SSL_CERT_FILE", certifi.where()),
        capath=os.environ.get("SSL_CERT_DIR"),
    )
