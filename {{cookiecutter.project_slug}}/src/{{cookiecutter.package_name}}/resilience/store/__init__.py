"""Participant session records: in memory by default, Redis for many workers."""
