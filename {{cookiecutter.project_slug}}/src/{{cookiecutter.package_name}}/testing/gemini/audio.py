"""Audio for the local Gemini Live server: hearing where a user's turn ends, and a voice.

Gemini takes 16 kHz 16-bit mono PCM in and speaks 24 kHz 16-bit mono PCM out. The server
does not understand speech: a turn is "loud samples, then enough quiet" (or an explicit
activityEnd / audioStreamEnd), and a reply is a quiet tone as long as its chunk.
"""

from __future__ import annotations

import math
from array import array

__all__ = ["AudioTurnDetector", "tone"]


def tone(duration_ms: int, *, sample_rate: int = 24000, hz: float = 440.0) -> bytes:
    """A sine tone at a tenth of full scale, as 16-bit little-endian mono PCM."""
    count = sample_rate * duration_ms // 1000
    samples = array(
        "h", (int(3276 * math.sin(2 * math.pi * hz * i / sample_rate)) for i in range(count))
    )
    return samples.tobytes()


class AudioTurnDetector:
    """Collects user audio and says when a turn ends.

    With ``automatic`` on (the Live API default), a turn ends after ``silence_ms`` of quiet
    that follows at least one loud chunk. Either way :meth:`end` closes the turn at once,
    for activityEnd and audioStreamEnd. Samples are 16-bit little-endian mono.
    """

    def __init__(self, *, automatic: bool, silence_ms: int = 400, threshold: int = 500) -> None:
        self._automatic = automatic
        self._silence_ms = silence_ms
        self._threshold = threshold
        self._pcm = bytearray()
        self._rate = 16000
        self._heard_speech = False
        self._quiet_ms = 0.0

    @property
    def pending(self) -> bool:
        """Whether speech has been collected that no turn has taken yet."""
        return self._heard_speech

    def push(self, pcm: bytes, sample_rate: int) -> bytes | None:
        """Add a chunk; return the turn's audio when this chunk ends it, else None."""
        samples = array("h")
        # an odd trailing byte cannot be a sample; drop it rather than fail the turn
        samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
        loud = any(abs(s) > self._threshold for s in samples)
        if loud:
            self._heard_speech = True
            self._quiet_ms = 0.0
        if not self._heard_speech:
            return None  # leading silence belongs to no turn
        self._pcm += pcm
        self._rate = sample_rate
        if not loud and self._automatic:
            self._quiet_ms += len(samples) * 1000 / sample_rate
            if self._quiet_ms >= self._silence_ms:
                return self.end()
        return None

    def end(self) -> bytes | None:
        """Close the current turn; return its audio, or None when nothing was heard."""
        if not self._heard_speech:
            return None
        pcm = bytes(self._pcm)
        self._pcm.clear()
        self._heard_speech = False
        self._quiet_ms = 0.0
        return pcm

    @property
    def sample_rate(self) -> int:
        """Sample rate of the audio collected last."""
        return self._rate
