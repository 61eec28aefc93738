"""The simulated room: an ``rtc.Room`` with no server, its participants and streams.

- :mod:`.simulated`: :class:`~.simulated.SimulatedRoom`, with :mod:`.local_participant` (the
  agent's participant), :mod:`.streams` (what the agent writes), :mod:`.inbound` (what
  participants send), :mod:`.rpc` and :mod:`.sfu` (ids, membership, attribute merges);
- :mod:`.records`: what the room records; :mod:`.frontend`: the transcript a frontend shows;
- :mod:`.speech`: participants whose microphones carry real audio, and an STT that hears it;
- :mod:`.job`: a job context around the room whose ``shutdown`` calls are recorded;
- :mod:`.bridged`: the room of a real job process under the kit's LiveKit server;
- :mod:`._sdk`: every livekit internal the above touches, version-pinned.

This module imports nothing, so its modules import each other without a circle; the kit's
public names are in ``testing``.
"""
