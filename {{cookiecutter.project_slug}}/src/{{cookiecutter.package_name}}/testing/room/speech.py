"""Participants who speak: real audio tracks into the agent, heard by a scripted STT.

The simulated room carries no media on its own. :class:`ParticipantMicrophone` gives a
participant's publication a real ``rtc.LocalAudioTrack`` on an ``rtc.AudioSource``, so
RoomIO's own input path opens an ``rtc.AudioStream`` on it, runs its audio processing and
feeds the session's STT. :class:`ToneSTT` is that STT: it finds each utterance by loudness
and tells which line was said by the tone's pitch, from the :class:`SpeechCodebook` the
microphones speak with, so a line only reaches a transcript if that participant's audio
carried it. Giving the publication its track is an SDK internal (``_sdk.attach_track``).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions, LanguageCode, stt
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from . import _sdk
from .simulated import SimulatedRoom

__all__ = ["ParticipantMicrophone", "SpeechCodebook", "ToneSTT"]

STT_SAMPLE_RATE = 16000


class SpeechCodebook:
    """The lines participants can say, each spoken as a tone of its own pitch."""

    def __init__(self, base_hz: float = 400.0, step_hz: float = 60.0) -> None:
        self._base, self._step = base_hz, step_hz
        self._lines: list[str] = []

    def pitch_for(self, text: str) -> float:
        """The tone that says ``text`` (a new line gets the next pitch)."""
        if text not in self._lines:
            self._lines.append(text)
        return self._base + self._step * self._lines.index(text)

    def text_for(self, pitch: float) -> str | None:
        """The line a tone of ``pitch`` says, or None when it is none of them."""
        index = round((pitch - self._base) / self._step)
        if 0 <= index < len(self._lines) and abs(pitch - self.pitch_for(self._lines[index])) < (
            self._step / 3
        ):
            return self._lines[index]
        return None


class ToneSTT(stt.STT):
    """A streaming STT that transcribes the tones of a :class:`SpeechCodebook`.

    An utterance is a run of frames louder than ``threshold`` (RMS) ended by ``end_silence``
    seconds of quiet (or a flush); its pitch (from zero crossings) names the line. A flush
    always gets a final transcript (empty when nothing was said), as Deepgram's finalize does.
    """

    def __init__(
        self, codebook: SpeechCodebook, *, threshold: float = 300.0, end_silence: float = 0.25
    ) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True,
                interim_results=False,
                offline_recognize=False,
                manual_flush=True,
            )
        )
        self.codebook = codebook
        self.threshold = threshold
        self.end_silence = end_silence

    @property
    def model(self) -> str:
        return "tone"

    @property
    def provider(self) -> str:
        return "offline-kit"

    async def _recognize_impl(self, buffer: Any, *, language: Any = NOT_GIVEN,
                              conn_options: APIConnectOptions) -> stt.SpeechEvent:  # fmt: skip
        raise NotImplementedError("ToneSTT only streams")

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> stt.RecognizeStream:
        return _ToneStream(stt=self, conn_options=conn_options, sample_rate=STT_SAMPLE_RATE)


class _ToneStream(stt.RecognizeStream):
    async def _run(self) -> None:
        owner = self._stt
        assert isinstance(owner, ToneSTT)  # the only STT that opens this stream
        pitches: list[float] = []  # one per loud frame; the median ignores the edge frames
        quiet = 0.0
        async for data in self._input_ch:
            if isinstance(data, self._FlushSentinel):
                # like a streaming STT's "finalize": the utterance so far, or an empty final
                self._final(owner, pitches)
                pitches = []
                continue
            pcm = np.frombuffer(data.data, dtype=np.int16).astype(np.float64)
            if pcm.size and math.sqrt(float(np.mean(pcm**2))) >= owner.threshold:
                if not pitches:
                    self._event_ch.send_nowait(
                        stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH)
                    )
                crossings = int(np.count_nonzero(np.diff(np.signbit(pcm))))
                pitches.append(crossings / 2 / (pcm.size / data.sample_rate))
                quiet = 0.0
            elif pitches:
                quiet += data.duration
                if quiet >= owner.end_silence:
                    self._final(owner, pitches)
                    pitches = []

    def _final(self, owner: ToneSTT, pitches: list[float]) -> None:
        text = ""
        if pitches:
            text = owner.codebook.text_for(float(np.median(pitches))) or "(unintelligible)"
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                alternatives=[stt.SpeechData(language=LanguageCode("en"), text=text)],
            )
        )
        if pitches:
            self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH))


class ParticipantMicrophone:
    """A participant's live microphone in a :class:`SimulatedRoom`, carrying real audio.

    The kit's participant publications carry no track; this one gets a ``LocalAudioTrack``
    on an ``rtc.AudioSource`` and is announced with ``track_subscribed``, as the SDK does for
    a subscribed remote track, so RoomIO opens an ``rtc.AudioStream`` on it. Like a real
    microphone it sends audio all the time (silence between lines), paced by the source.
    """

    def __init__(
        self, room: SimulatedRoom, identity: str, codebook: SpeechCodebook,
        *, sample_rate: int = 48000,
    ) -> None:  # fmt: skip
        self.identity = identity
        self.codebook = codebook
        self.sample_rate = sample_rate
        self.source = rtc.AudioSource(sample_rate, 1, queue_size_ms=100)
        self.track = rtc.LocalAudioTrack.create_audio_track("microphone", self.source)
        publication = room.publish_participant_track(identity)
        _sdk.attach_track(publication, self.track)
        self._pending: deque[np.ndarray] = deque()
        self._drained = asyncio.Event()
        self._task = asyncio.create_task(self._pump(), name="participant_microphone")
        room.emit("track_subscribed", self.track, publication, room.remote_participants[identity])

    async def say(self, text: str, *, seconds: float = 0.4, pause: float = 0.4) -> None:
        """Speak ``text`` (a tone of its pitch), then stay quiet for ``pause`` seconds."""
        pitch = self.codebook.pitch_for(text)
        per_frame = self.sample_rate // 100
        for index in range(int(seconds * 100)):
            t = (np.arange(per_frame) + index * per_frame) / self.sample_rate
            self._pending.append((np.sin(2 * np.pi * pitch * t) * 8000).astype(np.int16))
        self._pending.extend(np.zeros(per_frame, dtype=np.int16) for _ in range(int(pause * 100)))
        self._drained.clear()
        await self._drained.wait()

    async def _pump(self) -> None:
        silence = np.zeros(self.sample_rate // 100, dtype=np.int16)
        while True:
            if self._pending:
                samples = self._pending.popleft()
            else:
                samples = silence
                self._drained.set()
            frame = rtc.AudioFrame(samples.tobytes(), self.sample_rate, 1, samples.size)
            await self.source.capture_frame(frame)

    async def aclose(self) -> None:
        """Stop sending and close the source."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.source.aclose()
