"""A kit worker process: ``python -m <package>.testing.livekit_server.kit_worker``.

It is the production worker, started the way ``agent.py start`` starts it (livekit's own
entry point, ``AgentServer`` from ``worker.build_server``, one process per job from livekit's
pool, the crash watcher in the main process) and configured by the same settings, with two
stand-ins:

- each job's room is a ``testing.room.bridged.BridgedRoom`` joined through
  :class:`~.server.LocalLiveKitServer` (``LIVEKIT_URL`` points there);
- the model stack is scripted (:mod:`.kit_models`), so a test reads from the room's transcript
  what the model knew; with ``KIT_MODELS=gemini-text`` it is the real Gemini Live plugin with
  the resume handler (text out, a scripted voice) against ``GEMINI_BASE_URL`` (a
  ``LocalGeminiLiveServer``; TLS trust through ``SSL_CERT_FILE``).

``run_job`` is called exactly as ``worker.entrypoint`` calls it.
"""

from __future__ import annotations

import os
import sys

from livekit.agents import JobContext

from ...models import ModelStack
from ...settings import Settings, load_settings
from ...worker import build_server, run_job
from ..models import ScriptedTTS
from ..room.bridged import install_bridged_room
from .kit_models import scripted_models

__all__ = ["main", "server"]


def gemini_text_models(settings: Settings) -> ModelStack:
    """The real Gemini Live plugin and resume handler, text out, a scripted voice."""
    from google.genai import types

    from ...resilience.gemini import gemini_realtime_model

    key = settings.google_api_key.get_secret_value() if settings.google_api_key else None
    model = gemini_realtime_model(
        model=settings.gemini_model,
        api_key=key,
        http_options=types.HttpOptions(base_url=settings.gemini_base_url),
        modalities=[types.Modality.TEXT],
    )
    return ModelStack(name="gemini-live", llm=model, tts=ScriptedTTS())


async def kit_entrypoint(ctx: JobContext) -> None:
    """A job: the room is bridged to the kit server; the rest is ``worker.entrypoint``."""
    install_bridged_room(ctx)
    settings = load_settings()
    if os.environ.get("KIT_MODELS") == "gemini-text":
        models = lambda: gemini_text_models(settings)  # noqa: E731 - one per session
    else:
        stack = scripted_models()
        models = lambda: stack  # noqa: E731
    await run_job(ctx, settings=settings, models=models)


server = build_server(load_settings())
server.rtc_session(agent_name=load_settings().agent_name)(kit_entrypoint)


def main() -> None:
    """``agent.py start`` for this module: livekit's entry point finds ``server`` here."""
    from ...cli.run import run_livekit

    level = sys.argv[1] if len(sys.argv) > 1 else "INFO"
    sys.exit(run_livekit(["start", __file__, "--log-level", level, "--log-format", "json"]))


if __name__ == "__main__":
    # run under the package's name, so job processes import the same module
    from importlib import import_module

    if not __package__:
        sys.exit("run it as a module: python -m <package>.testing.livekit_server.kit_worker")
    import_module(__package__ + ".kit_worker").main()
