"""The one module that touches livekit-agents internals (checked against 1.8.9).

The supervisor and the shared room output need four things livekit has no public API for:

- RoomIO's audio sink (``_ParticipantAudioOutput``) and transcription sink
  (``_ParticipantTranscriptionOutput``), built once per conversation instead of once per
  session, so the agent's track is published once and its SID never changes;
- the SID of the track that audio sink published;
- the job's primary session (``JobContext._primary_agent_session``): livekit makes the first
  session started in a job primary forever, so a restart hands the designation over;
- unhooking the wrappers a session put around a shared audio sink (RecorderIO's), which
  subscribe to the sink's playback events and would otherwise outlive their session.

Every function checks what it relies on and raises :class:`LivekitInternalsChanged` naming
the missing piece; ``tests/test_livekit_adapter.py`` exercises each one against the installed
livekit, so an upgrade that changes them fails there first, loudly.
"""

from __future__ import annotations

from typing import Any, Literal

from livekit import rtc
from livekit.agents import AgentSession, JobContext
from livekit.agents.voice import io
from livekit.agents.voice.room_io import _output as room_io_output

CHECKED_VERSION = "1.8.9"

# the playback events an AudioOutput wrapper subscribes to on the sink below it, and the
# bound method it subscribes with (io.AudioOutput.__init__)
_PlaybackEvent = Literal["playback_finished", "playback_started", "playback_progressed"]
_WRAPPER_SUBSCRIPTIONS: tuple[tuple[_PlaybackEvent, str], ...] = (
    ("playback_finished", "_dispatch_playback_finished"),
    ("playback_started", "_forward_next_playback_started"),
    ("playback_progressed", "_forward_next_playback_progressed"),
)


class LivekitInternalsChanged(RuntimeError):
    """A livekit-agents internal this template relies on is gone or changed shape."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"livekit-agents internals changed: {what} (checked against {CHECKED_VERSION}); "
            "see resilience/_livekit.py and run tests/test_livekit_adapter.py"
        )


def _require(obj: object, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise LivekitInternalsChanged(what) from None


# -- room sinks ---------------------------------------------------------------------------


def new_audio_output(
    room: rtc.Room,
    *,
    sample_rate: int = 24000,
    num_channels: int = 1,
    track_name: str = "roomio_audio",
) -> io.AudioOutput:
    """RoomIO's own audio sink: publishes a microphone-source track and plays audio on it."""
    cls = _require(room_io_output, "_ParticipantAudioOutput", "RoomIO audio sink class")
    return cls(
        room,
        sample_rate=sample_rate,
        num_channels=num_channels,
        track_publish_options=rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
        track_name=track_name,
    )


async def start_audio_output(output: io.AudioOutput) -> None:
    """Publish the sink's track and wait until someone subscribes (RoomIO does the same)."""
    await _require(output, "start", "RoomIO audio sink start()")()


async def close_audio_output(output: io.AudioOutput) -> None:
    """Stop the sink's playout tasks and its audio source (the track stays published)."""
    await _require(output, "aclose", "RoomIO audio sink aclose()")()


def published_track_sid(output: io.AudioOutput) -> str | None:
    """The SID of the track the sink published, or None before it has."""
    publication = _require(output, "_publication", "RoomIO audio sink _publication")
    return publication.sid if publication is not None else None


def subscribed(output: io.AudioOutput) -> Any:
    """The future RoomIO's sink resolves once its track is published and subscribed."""
    return _require(output, "subscribed", "RoomIO audio sink subscribed future")


def new_user_transcription_output(room: rtc.Room, identity: str) -> io.TextOutput:
    """RoomIO's sink for a participant's transcript: ``lk.transcription`` streams (and the
    legacy packets old clients need) sent on the participant's behalf."""
    cls = _require(
        room_io_output, "_ParticipantTranscriptionOutput", "RoomIO transcription sink class"
    )
    return cls(room=room, is_delta_stream=False, participant=identity)


def set_transcription_participant(output: io.TextOutput, identity: str) -> None:
    """Publish a RoomIO transcription sink's text on ``identity``'s behalf from now on."""
    _require(output, "set_participant", "RoomIO transcription sink set_participant()")(identity)


async def close_text_output(output: io.TextOutput) -> None:
    """Close a RoomIO transcription sink, ending any stream it holds open."""
    await _require(output, "aclose", "RoomIO transcription sink aclose()")()


# -- primary session ----------------------------------------------------------------------


def primary_session(job_ctx: JobContext) -> AgentSession | None:
    """The session livekit treats as the job's primary (reports, recording, shutdown)."""
    return _require(job_ctx, "_primary_agent_session", "JobContext._primary_agent_session")


def hand_over_primary(job_ctx: JobContext, old: AgentSession | None, new: AgentSession) -> bool:
    """Make ``new`` the job's primary when ``old`` was (or none is); call before ``new.start``.

    ``AgentSession.start`` keeps a primary that is already set to the starting session, so
    ``new`` gets the SessionHost and recording the old one had. Returns whether it did.
    """
    current = primary_session(job_ctx)
    if current is not None and current is not old:
        return False  # another conversation's session is primary: leave it
    job_ctx._primary_agent_session = new
    return True


# -- audio wrappers -----------------------------------------------------------------------


def unhook_audio_wrappers(head: io.AudioOutput | None, base: io.AudioOutput) -> int:
    """Unsubscribe from ``base`` the wrapper a session stacked on it (``head`` is the top).

    An ``io.AudioOutput`` built with ``next_in_chain=base`` listens to base's playback events
    for good; once its session is gone it would log "playback_finished called more times
    than..." for every later segment. Returns the number of wrappers unhooked (0 or 1).
    """
    wrapper = head
    while wrapper is not None and wrapper is not base and wrapper.next_in_chain is not base:
        wrapper = wrapper.next_in_chain
    if wrapper is None or wrapper is base:
        return 0
    for event, method in _WRAPPER_SUBSCRIPTIONS:
        base.off(event, _require(wrapper, method, f"io.AudioOutput.{method}"))
    return 1


# -- election (primary/election.py) ------------------------------------------------------


def set_primary(job_ctx: JobContext, session: AgentSession | None) -> None:
    """Designate the job's primary session outright (``None``: the next session started is).

    ``AgentSession.start`` makes a session primary when the designation is None or already
    that session; any other value makes it start without a SessionHost and with recording off.
    The election uses this to hand the designation between the job's sessions, which livekit
    never does by itself.
    """
    _require(job_ctx, "_primary_agent_session", "JobContext._primary_agent_session")
    job_ctx._primary_agent_session = session


def has_session_host(session: AgentSession) -> bool:
    """Whether ``session`` runs a SessionHost (the ``lk.agent.session`` byte stream handler
    a RemoteSession drives the session through); only a primary session gets one."""
    return _require(session, "_session_host", "AgentSession._session_host") is not None
