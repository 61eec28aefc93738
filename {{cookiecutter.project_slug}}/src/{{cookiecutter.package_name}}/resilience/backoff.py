"""Retry delays: the one :class:`Backoff`, and how often a conversation may restart.

Every retry in the project (session restarts, Gemini reconnects, the store's write replay)
waits a :class:`Backoff` delay. A budget of ``max_restarts`` per sliding ``window`` stops a
restart loop (a model that fails on every start, a frontend spamming ``session.restart``);
within the window each restart after the first waits a jittered, exponentially growing
delay, so many conversations hit by the same outage do not reconnect in lockstep.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter.

    Retry ``n`` (1 = the first retry) waits ``base * 2 ** (n - 1)`` seconds, at most ``cap``;
    ``jitter`` is the fraction taken off at random (0 = none, 1 = anywhere in [0, delay]), so
    many clients hit by the same outage do not retry in lockstep.
    """

    base: float
    cap: float
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < self.base:
            raise ValueError("need 0 <= base delay <= max delay")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def delay(self, n: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``n``; 0 for ``n`` <= 0."""
        if n <= 0:
            return 0.0
        delay = min(self.cap, self.base * 2 ** min(n - 1, 62))
        return delay * (1 - self.jitter * (rng or random).random())


@dataclass(frozen=True)
class RestartPolicy:
    """Restart budget and backoff.

    max_restarts: restarts allowed within any ``window`` seconds; one more ends the call.
    base_delay: delay before the second restart in a window; it doubles for each further one.
    max_delay: the delay never exceeds this.
    jitter: fraction of the delay taken off at random (0 = none, 1 = anywhere in [0, delay]).
    """

    max_restarts: int = 5
    window: float = 300.0
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if self.window <= 0:
            raise ValueError("window must be positive seconds")
        Backoff(self.base_delay, self.max_delay, self.jitter)  # validates the three

    def delay(self, previous: int, rng: random.Random) -> float:
        """Seconds to wait before a restart that follows ``previous`` restarts in the window
        (the first restart is immediate: the user is waiting)."""
        return Backoff(self.base_delay, self.max_delay, self.jitter).delay(previous, rng)


class RestartBudget:
    """The restarts one conversation has taken, against its :class:`RestartPolicy`."""

    def __init__(
        self,
        policy: RestartPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._taken: deque[float] = deque()

    def _expire(self) -> None:
        horizon = self._clock() - self.policy.window
        while self._taken and self._taken[0] <= horizon:
            self._taken.popleft()

    @property
    def used(self) -> int:
        """Restarts taken within the current window."""
        self._expire()
        return len(self._taken)

    def acquire(self) -> float | None:
        """Take one restart: the delay to wait first, or None when the budget is spent."""
        previous = self.used
        if previous >= self.policy.max_restarts:
            return None
        self._taken.append(self._clock())
        return self.policy.delay(previous, self._rng)
