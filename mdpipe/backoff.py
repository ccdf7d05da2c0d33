"""Capped exponential backoff with jitter, reset after a healthy period.

Sans-I/O: the caller says when a connection came up (``up``) and went down (``down``), and asks for
the next delay. Delay n (from 0) is drawn uniformly from [d/2, d] with d = min(cap, initial * 2**n):
the jitter spreads a fleet's reconnects apart, the floor keeps retries from collapsing to zero. A
connection that stayed up for ``healthy`` seconds resets n, so one drop after a day of service
reconnects fast, while a server that accepts and drops at once is retried ever more slowly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator


class Backoff:
    def __init__(
        self,
        initial: float,
        cap: float,
        healthy: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError("need 0 < initial <= cap")
        self.initial, self.cap, self.healthy = initial, cap, healthy
        self.attempts = 0
        self._clock = clock
        self._rng = rng or random.Random()
        self._up_since: float | None = None

    def up(self) -> None:
        self._up_since = self._clock()

    def down(self) -> None:
        if self._up_since is not None and self._clock() - self._up_since >= self.healthy:
            self.attempts = 0
        self._up_since = None

    def reset(self) -> None:
        """A success that needs no healthy period (a request answered): start again from ``initial``."""
        self.attempts = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * 2 ** min(self.attempts, 62))
        self.attempts += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def delays(self) -> Iterator[float]:
        """An endless iterator of delays drawn from this backoff (for ``websockets`` reconnects)."""
        while True:
            yield self.next_delay()
