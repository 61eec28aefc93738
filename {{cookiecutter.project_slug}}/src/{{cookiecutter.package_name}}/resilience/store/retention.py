"""Retention that grows with engagement: how long a record is kept after its participant left.

``SESSION_RETENTION_TIERS`` lists engagement scores and how long a record reaching each is
kept, e.g. ``3:1d,20:30d``. The score counts what the record holds:

    score = returns + turns // 10

- returns: the participant's joins after their first (``reconnect_count``: a refreshed page,
  a dropped network, another device, a call on another day);
- turns: the longer of their two lists, conversation items or transcript lines (a listen-only
  participant of a meeting has lines only), counting the entries the storage limits dropped.

A caller who came back twice and exchanged 40 messages scores 2 + 40 // 10 = 6. A record is
kept as long as the highest tier its score reaches says, and ``SESSION_RETENTION_S`` below
the first tier. Tiers only lengthen retention: each is at least ``SESSION_RETENTION_S`` and
longer than the one before. Without tiers every record is kept ``SESSION_RETENTION_S``.

``RetentionTiers`` is a ``RetentionPolicy``: every store applies this one rule, on its own
clock, when the participant leaves (``retention_for``) and again when a record is written
while they are away (``kept_after_write``: a late transcript line may raise the score; a write
never shortens what the record had left).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .base import InvalidInputError, LeaveInfo, RetentionPolicy, SessionRecord, retention_for

__all__ = [
    "TURNS_PER_POINT",
    "RetentionTiers",
    "Tier",
    "engagement",
    "format_duration",
    "kept_after_write",
    "parse_duration",
    "record_engagement",
]

TURNS_PER_POINT = 10
_MAX_SECONDS = 3650 * 86400  # ten years: beyond it, a typo more likely than a wish
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
EXAMPLE = "0:1d,3:7d,20:30d"


def engagement(returns: int, items: int, segments: int) -> int:
    """The engagement score: ``returns + max(items, segments) // TURNS_PER_POINT``."""
    return max(0, returns) + max(items, segments, 0) // TURNS_PER_POINT


def record_engagement(record: SessionRecord) -> int:
    """The score of a stored record (what ``sessions list`` shows)."""
    return engagement(
        record.reconnect_count,
        len(record.items) + record.items_trimmed,
        len(record.transcript) + record.transcript_trimmed,
    )


def kept_after_write(
    remaining: float, base: float, policy: RetentionPolicy | None, info: LeaveInfo
) -> float:
    """Seconds from now a record written while its participant is away is kept: what it had
    left, at least ``base``, longer when the policy says so for its engagement now."""
    return max(remaining, base, retention_for(policy, base, info))


@dataclass(frozen=True, slots=True)
class Tier:
    """Records whose score reaches ``score`` are kept ``seconds`` after their leave."""

    score: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.score}:{format_duration(self.seconds)}"


@dataclass(frozen=True, slots=True)
class RetentionTiers:
    """``SESSION_RETENTION_TIERS`` over ``SESSION_RETENTION_S`` (``base``): a retention policy.

    Build it with ``parse``, which checks the rules of the module docstring.
    """

    base: float
    tiers: tuple[Tier, ...] = ()

    @classmethod
    def parse(cls, text: str | None, *, base: float) -> RetentionTiers:
        """Tiers from ``score:duration,...`` (unset or blank: none); InvalidInputError (a
        ValueError) in one line saying what is wrong."""
        tiers: list[Tier] = []
        if not text or not text.strip():
            return cls(base)
        for part in text.split(","):
            tier = _tier(part.strip())
            if tiers and tier.score <= tiers[-1].score:
                raise InvalidInputError(
                    f"scores must increase from one tier to the next: {tier} after {tiers[-1]}"
                )
            if tier.seconds < base:
                raise InvalidInputError(
                    f"{tier} keeps records less than SESSION_RETENTION_S "
                    f"({format_duration(base)}); tiers only lengthen retention"
                )
            if tiers and tier.seconds <= tiers[-1].seconds:
                raise InvalidInputError(
                    f"retention must grow with the score: {tier} is not longer than {tiers[-1]}"
                )
            tiers.append(tier)
        return cls(base, tuple(tiers))

    def seconds_for(self, score: int) -> float:
        """How long a record of ``score`` is kept after its leave."""
        kept = self.base
        for tier in self.tiers:
            if score < tier.score:
                break
            kept = tier.seconds
        return kept

    def __call__(self, info: LeaveInfo) -> float:
        """The ``RetentionPolicy``: seconds to keep the record ``info`` describes."""
        return self.seconds_for(
            engagement(info.reconnect_count, info.item_count, info.transcript_count)
        )

    def describe(self, record: SessionRecord) -> str:
        """A record's score and how long it is kept after a leave, e.g. ``6, kept 7d``."""
        score = record_engagement(record)
        return f"{score}, kept {format_duration(self.seconds_for(score))}"

    def __str__(self) -> str:
        return ",".join(str(tier) for tier in self.tiers)


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h`` or ``7d`` (InvalidInputError if not)."""
    found = _DURATION.match(text.strip().lower())
    if found is None:
        raise InvalidInputError(
            f"{text!r} is not a duration: write seconds or a number with s, m, h or d "
            "(e.g. 90m, 7d)"
        )
    seconds = float(found[1]) * _UNITS[found[2]]
    if not 0 < seconds <= _MAX_SECONDS:
        raise InvalidInputError(f"{text!r} must be more than 0 and at most 3650d")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it: ``7d``, ``12h``, ``90m``, ``300s``."""
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _tier(part: str) -> Tier:
    score, colon, duration = part.partition(":")
    if not colon:
        raise InvalidInputError(
            f"{part!r} is not score:duration; write tiers like {EXAMPLE} "
            f"(score = returns + turns // {TURNS_PER_POINT})"
        )
    if not (score.strip().isascii() and score.strip().isdigit()):
        raise InvalidInputError(f"score {score.strip()!r} in {part!r} must be a whole number >= 0")
    return Tier(int(score), parse_duration(duration))
