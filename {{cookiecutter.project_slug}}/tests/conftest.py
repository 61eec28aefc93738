"""Shared fixtures: every test runs with a clean environment in an empty folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.log import configure_identity_hash
from {{ cookiecutter.package_name }}.settings import load_settings

# Settings the worker reads; a developer's shell or .env.local must not leak into tests.
SETTING_PREFIXES = (
    "LIVEKIT_",
    "GOOGLE_",
    "OPENAI_",
    "GEMINI_",
    "REDIS_",
    "SESSION_",
    "IDENTITY_",
    "MODEL_STACK",
    "AGENT_NAME",
    "ROOM_MODE",
    "LOG_LEVEL",
)


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith(SETTING_PREFIXES):
            monkeypatch.delenv(name)
    # scenarios are about one conversation unless a test says otherwise (the multi tests
    # pass room_mode themselves), whatever ROOM_MODE this project was generated with
    monkeypatch.setenv("ROOM_MODE", "one-to-one")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    # identity hashes under the development key, whatever an earlier test configured
    configure_identity_hash(load_settings())
    return workdir
