"""Shared fixtures: every test runs with a clean environment in an empty folder, and whatever
it changes in the process (environment, logging, the identity-hash key, caches) is put back."""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from {{ cookiecutter.package_name }}.log import configure_identity_hash, setup_structlog
from {{ cookiecutter.package_name }}.settings import Settings, load_settings

PACKAGE = "{{ cookiecutter.package_name }}"
# Every variable the settings read, and those the livekit plugins and prometheus_client read:
# a developer's shell or .env.local must not leak into tests.
SETTING_NAMES = tuple(name.upper() for name in Settings.model_fields)
SETTING_PREFIXES = ("LIVEKIT_", "GOOGLE_", "OPENAI_", "GEMINI_", "PROMETHEUS_")
EXIT_GRACE_S = 120


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.upper() in SETTING_NAMES or name.upper().startswith(SETTING_PREFIXES):
            monkeypatch.delenv(name)
    # scenarios are about one conversation unless a test says otherwise (the multi tests
    # pass room_mode themselves), whatever ROOM_MODE this project was generated with
    monkeypatch.setenv("ROOM_MODE", "one-to-one")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@pytest.fixture(autouse=True)
def reset_global_state(clean_settings: Path) -> Iterator[None]:
    """Each test starts from the same process state and leaves it as it found it."""
    environ = dict(os.environ)
    levels = _logger_levels()
    handlers = list(logging.getLogger().handlers)
    setup_structlog()  # structlog as the package configures it, kept from test to test
    structlog_config = structlog.get_config()
    structlog.contextvars.clear_contextvars()
    # identity hashes under the development key, whatever an earlier test configured
    configure_identity_hash(load_settings())
    _clear_package_caches()  # some cache values computed under an earlier test's key
    yield
    _restore_environ(environ)  # monkeypatch puts back only what it set itself
    for logger in _logger_levels():
        logger.setLevel(levels.get(logger, logging.NOTSET))  # a new logger's level: NOTSET
    for handler in list(logging.getLogger().handlers):
        # configure_logging's handler, a test's own; pytest's capture handlers are its own
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            logging.getLogger().removeHandler(handler)
    structlog.configure(**structlog_config)
    structlog.contextvars.clear_contextvars()


def _logger_levels() -> dict[logging.Logger, int]:
    loggers = logging.Logger.manager.loggerDict.values()
    every = [logging.getLogger(), *(lg for lg in loggers if isinstance(lg, logging.Logger))]
    return {logger: logger.level for logger in every}


def _restore_environ(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _clear_package_caches() -> None:
    """``cache_clear()`` every ``functools.lru_cache`` function of the package."""
    for name, module in list(sys.modules.items()):
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        for value in vars(module).values():
            if getattr(value, "__module__", None) == name and hasattr(value, "cache_clear"):
                value.cache_clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Should anything still keep the process alive two minutes after the run (a thread
    that never ends), every thread's traceback is printed and the process exits 1, rather
    than a CI job waiting on it with no clue."""
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """No process a test started may outlive the run: Python's exit would wait for it, and so
    would whoever reads pytest's output through a pipe it holds. Any left is named and ended."""
    children = multiprocessing.active_children()
    if children:
        terminalreporter.write_sep("=", "processes left running after the tests", yellow=True)
    for child in children:
        terminalreporter.write_line(f"process {child.pid} ({child.name}): killed")
        child.kill()
        child.join(5)
