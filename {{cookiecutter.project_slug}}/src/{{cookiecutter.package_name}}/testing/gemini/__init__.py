"""A local Gemini Live server (TLS, the Live protocol, resumption handles, faults on demand).

- :mod:`.server`: :class:`~.server.LocalGeminiLiveServer`; :mod:`.connection`: one client
  connection; :mod:`.protocol`: the Live protocol's messages; :mod:`.state`: conversations and
  handles kept per server; :mod:`.faults`: what can be injected; :mod:`.audio`: tones and turn
  detection for audio input; :mod:`.tls`: the self-signed certificate; :mod:`.chaos`: seeded
  random faults (server- and client-side) and the check that every user turn got its reply.

This module imports nothing, so its modules import each other without a circle;
``LocalGeminiLiveServer`` is also in ``testing``.
"""
