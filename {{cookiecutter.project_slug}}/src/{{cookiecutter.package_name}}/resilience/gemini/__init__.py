"""Gemini Live resume: reconnect by handle with no history replay, survive goAway, fall back."""
