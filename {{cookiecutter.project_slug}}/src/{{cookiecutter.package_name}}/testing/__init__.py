"""Offline kit: run the real livekit-agents code without a LiveKit server."""
