"""Build the model stack the settings choose.

The stack is what an AgentSession needs to hear and speak: a realtime model (Gemini
Live, OpenAI Realtime) or an STT + LLM + TTS pipeline with a VAD. `simulate` and the
tests build a scripted stack instead and hand it to the same composition root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit.agents import NOT_GIVEN, NotGivenOr, llm, stt, tts, vad
from livekit.agents.voice.turn import TurnDetectionMode
from pydantic import SecretStr

from .settings import Settings


@dataclass(frozen=True)
class ModelStack:
    """The models for one AgentSession; ``llm`` may be a realtime model."""

    name: str
    llm: llm.LLM | llm.RealtimeModel
    stt: stt.STT | None = None
    tts: tts.TTS | None = None
    vad: vad.VAD | None = None
    turn_detection: TurnDetectionMode | None = None
    """None: a realtime model's own turn detection when it has one, else livekit's default
    (its TurnDetector, with the VAD, for a pipeline)."""

    def __post_init__(self) -> None:
        # livekit's default is a TurnDetector, which needs a VAD: a realtime model without
        # one would log "TurnDetector requires a VAD model" at every session start, then
        # fall back to the model's own turn detection anyway. Ask for that directly.
        model = self.llm
        if (
            self.turn_detection is None
            and self.vad is None
            and isinstance(model, llm.RealtimeModel)
            and model.capabilities.turn_detection
        ):
            object.__setattr__(self, "turn_detection", "realtime_llm")

    def session_options(self) -> dict[str, Any]:
        """The AgentSession keywords that run this stack (livekit's NOT_GIVEN where a
        pipeline part is missing, its default turn handling unless one is chosen)."""
        options: dict[str, Any] = {
            "llm": self.llm,
            "stt": self.stt if self.stt is not None else NOT_GIVEN,
            "tts": self.tts if self.tts is not None else NOT_GIVEN,
            "vad": self.vad,
        }
        if self.turn_detection is not None:
            options["turn_handling"] = {"turn_detection": self.turn_detection}
        return options


ModelSource = ModelStack | Callable[[], ModelStack]
"""A stack, or a factory building one (called for each session)."""


def as_factory(models: ModelSource) -> Callable[[], ModelStack]:
    """``models`` as a factory; TypeError for anything else."""
    if isinstance(models, ModelStack):
        return lambda: models
    if callable(models):
        return models
    raise TypeError(f"models must be a ModelStack or a factory returning one, not {models!r}")


# what each stack imports when a job builds it: loaded once by the worker's process pool
# (ServerOptions.preload_modules), so a job does not pay for it (~0.7 s for google.genai)
PRELOAD_MODULES = {
    "gemini-live": ["google.genai", "livekit.plugins.google"],
    "openai-realtime": ["livekit.plugins.openai"],
    "openai-pipeline": ["livekit.plugins.openai", "livekit.plugins.silero"],
}


def modules_to_preload(settings: Settings) -> list[str]:
    """The heavy modules every job of this worker imports (its stack and fallback)."""
    stacks = [settings.model_stack, settings.fallback_model_stack]
    modules = [m for stack in stacks if stack for m in PRELOAD_MODULES[stack]]
    if settings.room_mode == "multi-participant":
        modules += PRELOAD_MODULES["openai-pipeline"]
    return list(dict.fromkeys(modules))


def build_models(settings: Settings, *, vad_model: vad.VAD | None = None) -> ModelStack:
    """The model stack for ``settings.model_stack``; keys must already be checked.

    ``vad_model`` is a VAD loaded once per process (see ``worker.prewarm``); the
    pipeline stack loads one itself when none is given.
    """
    if settings.model_stack == "gemini-live":
        return ModelStack(name="gemini-live", llm=_gemini_live(settings))
    if settings.model_stack == "openai-realtime":
        from livekit.plugins import openai

        return ModelStack(
            name="openai-realtime",
            llm=openai.realtime.RealtimeModel(
                model=settings.openai_realtime_model,
                voice=settings.openai_voice,
                api_key=_secret(settings.openai_api_key),
            ),
        )
    from livekit.plugins import openai, silero

    key = _secret(settings.openai_api_key)
    api_key: NotGivenOr[str] = key if key is not None else NOT_GIVEN  # the plugins' "unset"
    return ModelStack(
        name="openai-pipeline",
        llm=openai.LLM(model=settings.openai_llm_model, api_key=api_key),
        stt=openai.STT(model=settings.openai_stt_model, api_key=api_key),
        tts=openai.TTS(
            model=settings.openai_tts_model, voice=settings.openai_voice, api_key=api_key
        ),
        vad=vad_model or silero.VAD.load(),
    )


def _gemini_live(settings: Settings) -> llm.RealtimeModel:
    from google.genai import types

    from .resilience.gemini import gemini_realtime_model

    kwargs: dict[str, Any] = {}
    if settings.gemini_base_url:
        # A proxy or a local Live-protocol server; TLS trust comes from SSL_CERT_FILE.
        kwargs["http_options"] = types.HttpOptions(base_url=settings.gemini_base_url)
    # the plugin's model with the resume handler's connection loop; a job binds it to its
    # conversation's handler through SessionSupervisor(before_start=resume.before_start)
    return gemini_realtime_model(
        model=settings.gemini_model,
        voice=settings.gemini_voice,
        api_key=_secret(settings.google_api_key),
        # Without compression an audio session ends after about 15 minutes.
        context_window_compression=types.ContextWindowCompressionConfig(
            sliding_window=types.SlidingWindow(),
        ),
        **kwargs,
    )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
