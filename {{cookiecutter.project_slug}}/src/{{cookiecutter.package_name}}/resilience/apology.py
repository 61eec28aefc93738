"""What the caller hears when a conversation gives up: a short apology, then the call ends.

The supervisor gives up when its restart budget is spent (a model that fails on every
start, a restart loop): the session still running apologises, or one started only for it.
With a TTS the apology is synthesised from the text. A realtime model speaks for itself, and
a model that is gone cannot apologise, so a session without a TTS plays a recorded clip,
``apology.wav`` next to this module (the transcript and the chat context get ``APOLOGY`` as
its text); without a readable clip the realtime model is asked to say the text. When the
model is gone for good (an invalid API key), a session with no model at all plays the clip.
It never blocks the end of the call for longer than ``APOLOGY_TIMEOUT_S``.

The clip is ``APOLOGY`` read by espeak-ng: mono 16-bit PCM WAV at 16 kHz. Replace it with
your own recording (any mono 16-bit PCM WAV, any sample rate; keep the words of ``APOLOGY``,
or change both), or make it again with::

    espeak-ng -v en-us -w /tmp/apology.wav "<the APOLOGY text>"
    sox /tmp/apology.wav -r 16000 -c 1 -b 16 apology.wav \\
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse
"""

from __future__ import annotations

import asyncio
import functools
import wave
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.voice import SpeechHandle

from ..log import get_logger

__all__ = [
    "APOLOGY",
    "APOLOGY_TIMEOUT_S",
    "CLIP_PATH",
    "GAVE_UP",
    "load_clip",
    "say_apology",
]

logger = get_logger(__name__)

# the ``closed`` reason when the restart budget is spent (the agent apologised)
GAVE_UP = "restart_budget_exhausted"
APOLOGY = (
    "I'm sorry, I'm having technical trouble and need to end our call now. "
    "Please try again in a moment."
)
APOLOGY_TIMEOUT_S = 15.0
CLIP_PATH = Path(__file__).with_name("apology.wav")
"""``APOLOGY`` recorded, for a session whose realtime model cannot speak (see above)."""
CLIP_FRAME_MS = 20


async def say_apology(
    session: AgentSession, text: str = APOLOGY, *, clip: Path | None = CLIP_PATH
) -> None:
    """Interrupt whatever ``session`` is saying and say ``text``; log when it cannot.

    Without a TTS the recorded ``clip`` is played with ``text`` as its transcript; with no
    clip (None, missing, unreadable) the realtime model is asked to say ``text``.
    """
    try:
        await asyncio.wait_for(session.interrupt(force=True), APOLOGY_TIMEOUT_S)
        handle = _speak(session, text, clip)
        await asyncio.wait_for(handle.wait_for_playout(), APOLOGY_TIMEOUT_S)
    except Exception as exc:
        logger.warning("apology not spoken", error=repr(exc))


def _speak(session: AgentSession, text: str, clip: Path | None) -> SpeechHandle:
    if session.tts is not None:
        return session.say(text, allow_interruptions=False)
    frames = _clip_frames(clip)
    if frames:  # the recording needs no model
        return session.say(text, audio=_play(frames), allow_interruptions=False)
    # a realtime model speaks for itself
    return session.generate_reply(
        instructions=f"Say exactly this and nothing else: {text}",
        allow_interruptions=False,
    )


@functools.cache
def load_clip(path: Path = CLIP_PATH) -> tuple[rtc.AudioFrame, ...]:
    """The WAV file at ``path`` as 20 ms frames, read once per path.

    Raises OSError (missing), ``wave.Error`` or EOFError (not a WAV file) or ValueError (not
    mono 16-bit PCM, or empty).
    """
    with wave.open(str(path), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        pcm = wav.readframes(wav.getnframes())
    if channels != 1 or width != 2:
        raise ValueError(f"needs mono 16-bit PCM, has {channels} channel(s) of {width * 8} bits")
    if not pcm:
        raise ValueError("the clip holds no audio")
    step = rate * CLIP_FRAME_MS // 1000 * 2  # bytes per frame
    chunks = (pcm[i : i + step] for i in range(0, len(pcm), step))
    return tuple(rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2) for chunk in chunks)


def _clip_frames(clip: Path | None) -> tuple[rtc.AudioFrame, ...]:
    if clip is None:
        return ()
    try:
        return load_clip(clip)
    except (OSError, EOFError, wave.Error, ValueError) as exc:
        logger.warning(
            "apology clip unreadable; asking the model to apologise", clip=str(clip), error=str(exc)
        )
        return ()


async def _play(frames: Sequence[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
    for frame in frames:
        yield frame
