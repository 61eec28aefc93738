"""Settings: read once, every problem named with what to set."""

from __future__ import annotations

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.settings import SettingsError, load_settings


def test_defaults_need_nothing_to_load() -> None:
    settings = load_settings()
    assert settings.model_stack == "{{ cookiecutter.model_stack }}"
    assert settings.redis_url is None
    assert settings.session_retention_s == 300


def test_missing_livekit_settings_are_each_named() -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings().require(livekit=True)
    problems = exc.value.problems
    assert [p.split(" ", 1)[0] for p in problems] == [
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
    ]
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize(
    ("stack", "variable"),
    [("gemini-live", "GOOGLE_API_KEY"), ("openai-realtime", "OPENAI_API_KEY")],
)
def test_model_key_required_for_the_chosen_stack(
    monkeypatch: pytest.MonkeyPatch, stack: str, variable: str
) -> None:
    monkeypatch.setenv("MODEL_STACK", stack)
    with pytest.raises(SettingsError) as exc:
        load_settings().require(models=True)
    assert exc.value.problems[0].startswith(f"{variable} is not set")
    monkeypatch.setenv(variable, "k")
    load_settings().require(models=True)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("LIVEKIT_URL", "localhost:7880", "LIVEKIT_URL is invalid: must be a LiveKit server URL"),
        ("MODEL_STACK", "gpt-voice", "MODEL_STACK is invalid"),
        ("REDIS_URL", "http://cache:6379", "REDIS_URL is invalid: must be a Redis URL"),
        ("SESSION_RETENTION_S", "-5", "SESSION_RETENTION_S is invalid"),
        ("SESSION_QUARANTINE_S", "0", "SESSION_QUARANTINE_S is invalid"),
        ("IDENTITY_HASH_KEY", "short", "IDENTITY_HASH_KEY is invalid: must be at least 16"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL is invalid"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert len(exc.value.problems) == 1
    assert exc.value.problems[0].startswith(says)


def test_credentials_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2@cache:6379")
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert "hunter2" not in str(exc.value)


def test_quarantine_lasts_as_long_as_retention_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from {{ cookiecutter.package_name }}.backends import open_session_store
    from {{ cookiecutter.package_name }}.resilience.store import MemoryStore, SqliteStore

    monkeypatch.setenv("SESSION_RETENTION_S", "120")
    store = open_session_store(load_settings())
    assert isinstance(store, MemoryStore | SqliteStore) and store.quarantine_ttl == 120
    monkeypatch.setenv("SESSION_QUARANTINE_S", "3600")
    store = open_session_store(load_settings())
    assert isinstance(store, MemoryStore | SqliteStore) and store.quarantine_ttl == 3600


def test_env_local_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, clean_settings: Path
) -> None:
    (clean_settings / ".env.local").write_text(
        "LIVEKIT_URL=wss://from-file.livekit.cloud\nLIVEKIT_API_KEY=file-key\n"
    )
    monkeypatch.setenv("LIVEKIT_API_KEY", "env-key")
    settings = load_settings()
    assert settings.livekit_url == "wss://from-file.livekit.cloud"
    assert settings.livekit_api_key == "env-key"


def test_multi_participant_mode_needs_an_openai_key_for_transcribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROOM_MODE", "multi-participant")
    monkeypatch.setenv("MODEL_STACK", "gemini-live")
    monkeypatch.setenv("GOOGLE_API_KEY", "g")
    with pytest.raises(SettingsError) as exc:
        load_settings().require(models=True)
    assert exc.value.problems[0].startswith("OPENAI_API_KEY is not set: ROOM_MODE=multi")
    monkeypatch.setenv("OPENAI_API_KEY", "o")
    load_settings().require(models=True)


def test_a_fallback_stack_needs_its_key_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_STACK", "gemini-live")
    monkeypatch.setenv("GOOGLE_API_KEY", "g")
    monkeypatch.setenv("FALLBACK_MODEL_STACK", "openai-realtime")
    with pytest.raises(SettingsError) as exc:
        load_settings().require(models=True)
    assert exc.value.problems == [
        "OPENAI_API_KEY is not set: MODEL_STACK=openai-realtime needs an OpenAI API key "
        "(https://platform.openai.com/api-keys) (FALLBACK_MODEL_STACK=openai-realtime)"
    ]
    fallback = load_settings().fallback_settings()
    assert fallback is not None and fallback.model_stack == "openai-realtime"
