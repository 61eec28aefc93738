"""Gemini Live resume: reconnect by handle with no history replay, survive goAway, fall back.

``resume.GeminiResume`` is one conversation's handle, reconnect policy and events;
``connection_loop`` connects, serves and reconnects one session; ``_catch_up`` is what a
reconnect sends (the missing chat items, the re-ask of a cut reply); ``_plugin`` is the only
place that touches livekit-plugins-google's internals. :func:`gemini_realtime_model` is the
drop-in ``google.realtime.RealtimeModel`` with these reconnects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._plugin import ResumableRealtimeModel
    from .resume import GeminiResume

__all__ = ["gemini_realtime_model"]


def gemini_realtime_model(
    resume: GeminiResume | None = None, **plugin_kwargs: Any
) -> ResumableRealtimeModel:
    """``google.realtime.RealtimeModel`` with the resume handler's reconnects (same keywords).

    Context-window compression is on unless ``context_window_compression`` is given. The
    Google plugin is imported here, when a model is built, never at import.
    """
    from ._plugin import ResumableRealtimeModel

    return ResumableRealtimeModel(resume=resume, **plugin_kwargs)
