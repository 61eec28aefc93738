"""What the Gemini resume adapter relies on in livekit-plugins-google's internals.

Each test names one thing ``resilience/gemini/_plugin.py`` uses; when a plugin upgrade
changes it, the test fails here, loudly, instead of the handler failing in a call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from google.genai import types
from livekit.agents import llm
from livekit.plugins.google.realtime import realtime_api
from livekit.plugins.google.version import __version__

from {{ cookiecutter.package_name }}.resilience.gemini._plugin import (
    PLUGIN_VERSION_RANGE,
    ResumableRealtimeModel,
    ResumableRealtimeSession,
    UnsupportedPluginVersionError,
    check_plugin_version,
)

SESSION = realtime_api.RealtimeSession


def params(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


def model() -> ResumableRealtimeModel:
    return ResumableRealtimeModel(api_key="k", modalities=[types.Modality.TEXT])


def test_installed_plugin_is_in_the_pinned_range() -> None:
    check_plugin_version()
    low, high = PLUGIN_VERSION_RANGE
    assert low <= tuple(int(p) for p in __version__.split(".")[:3]) < high


@pytest.mark.parametrize("version", ["1.8.8", "1.9.0", "2.0.0"])
def test_other_plugin_versions_are_refused_with_a_clear_message(version: str) -> None:
    with pytest.raises(UnsupportedPluginVersionError, match="test_gemini_plugin_adapter"):
        check_plugin_version(version)


def test_private_methods_keep_their_signatures() -> None:
    assert params(SESSION._main_task) == ["self"]
    assert params(SESSION._recv_task) == ["self", "session"]
    assert params(SESSION._sync_chat_ctx) == ["self", "chat_ctx", "known"]
    assert params(SESSION._build_connect_config) == ["self"]
    assert params(SESSION._report_connection_acquired) == ["self", "acquire_time"]
    assert params(SESSION._emit_error) == ["self", "error", "recoverable"]
    assert params(SESSION._mark_restart_needed) == ["self", "on_error"]
    assert params(SESSION._send_client_event) == ["self", "event"]
    assert "item_ids" in realtime_api._ChatCtxContent.model_fields
    assert "item_ids" in realtime_api._ChatCtxToolResponse.model_fields
    # a held reply: the receive path starts generations here, and the adapter builds one
    assert params(SESSION._start_new_generation) == ["self"]
    assert params(SESSION._mark_current_generation_done) == ["self"]
    fields = {f.name for f in dataclasses.fields(realtime_api._ResponseGeneration)}
    assert {
        "message_ch",
        "function_ch",
        "response_id",
        "input_id",
        "text_ch",
        "audio_ch",
        "output_text",
        "_done",
    } <= fields


async def test_session_state_the_adapter_reads_exists_and_our_loop_runs() -> None:
    m = model()
    sess = m.session()
    try:
        assert isinstance(sess, ResumableRealtimeSession) and sess in m._sessions
        for name in (
            "_msg_ch",
            "_chat_ctx",
            "_pending_chat_ctx",
            "_unsent_item_ids",
            "_active_session",
            "_session_lock",
            "_session_should_close",
            "_session_error",
            "_pending_generation_fut",
            "_current_generation",
            "_client",
            "_opts",
            "_main_atask",
        ):
            assert hasattr(sess, name), name
        # the base __init__ starts self._main_task(): ours, not the plugin's loop
        coro = sess._main_atask.get_coro()
        assert inspect.iscoroutine(coro)
        assert coro.__qualname__.startswith("ResumableRealtimeSession._main_task")
        assert m._opts.context_window_compression is not None, "compression on by default"
    finally:
        await sess.aclose()


async def test_chat_ctx_while_disconnected_is_pending_and_the_diff_carries_ids() -> None:
    sess = model().session()
    try:
        await asyncio.sleep(0)
        sess._main_atask.cancel()  # no connection: inspect the queue alone
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="user", content="one", id="u1")
        ctx.add_message(role="assistant", content="two", id="a1")
        await sess.update_chat_ctx(ctx)
        assert sess._pending_chat_ctx is not None and sess._active_session is None
        known = llm.ChatContext([ctx.items[0]])
        sess._sync_chat_ctx(ctx, known=known)
        queued = sess._msg_ch.recv_nowait()
        assert isinstance(queued, realtime_api._ChatCtxContent)
        assert queued.item_ids == {"a1"} and sess._unsent_item_ids == {"a1"}
        fut = sess.generate_reply()
        trigger = sess._msg_ch.recv_nowait()
        assert isinstance(trigger, types.LiveClientContent) and trigger.turn_complete
        assert sess._pending_generation_fut is fut
        fut.cancel()
    finally:
        await sess.aclose()


async def test_recv_task_records_the_error_and_asks_for_a_restart() -> None:
    sess = model().session()

    class Broken:
        async def receive(self):
            raise ConnectionError("dropped")
            yield

    try:
        await asyncio.sleep(0)
        sess._main_atask.cancel()
        broken: Any = Broken()  # stands in for genai's AsyncSession (duck-typed)
        sess._active_session = broken
        sess._session_should_close.clear()
        await sess._recv_task(broken)
        assert sess._session_should_close.is_set()
        error = sess.take_error()
        assert isinstance(error, ConnectionError), "our _mark_restart_needed took the error"
    finally:
        sess._active_session = None
        await sess.aclose()


def test_the_plugin_still_logs_drops_as_receive_task_errors() -> None:
    """The filter that turns recovered drops into warnings matches the plugin's message."""
    import inspect
    import logging

    from livekit.plugins.google.realtime import realtime_api

    from {{ cookiecutter.package_name }}.resilience.gemini._plugin import (
        RECEIVE_ERROR_PREFIX,
        RecoveredDropsAreWarnings,
    )

    assert f'logger.error(f"{RECEIVE_ERROR_PREFIX}: ' in inspect.getsource(realtime_api)
    record = logging.LogRecord(
        "livekit.plugins.google", logging.ERROR, "", 0, f"{RECEIVE_ERROR_PREFIX}: 1006", (), None
    )
    assert RecoveredDropsAreWarnings().filter(record)
    assert (record.levelname, record.exc_info) == ("WARNING", None)
