"""The LiveKit server's dispatch and room lifecycle, for tests with real worker processes.

- :mod:`.server`: :class:`~.server.LocalLiveKitServer` (the worker protocol, rooms and their
  departure timeout, dispatch, scripted participants); :mod:`.rooms`: what it keeps;
  :mod:`.twirp`: its Twirp API (``RoomService``, ``AgentDispatchService``);
- :mod:`.kit_worker`: the production worker with the kit's room and models
  (``python -m <package>.testing.livekit_server.kit_worker``); :mod:`.kit_models`: the models
  it answers with; :mod:`.worker_process`: start, kill and restart such workers.

A job's room in those workers is ``testing.room.bridged.BridgedRoom``. This module imports
nothing, so its modules import each other without a circle.
"""
