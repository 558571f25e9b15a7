"""Pacing API requests: a client-side token bucket (clientConnection qps and burst), and
the backoff between attempts after errors.

client-go puts one such bucket in front of every request a client makes, watches included
(flowcontrol.NewTokenBucketRateLimiter); kube-proxy's defaults are 5 requests/s with a
burst of 10. Callers ask how long to wait and do the waiting themselves, so that a
stopping thread is never stuck in here.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

__all__ = ["Backoff", "TokenBucket"]


class TokenBucket:
    """`burst` tokens, refilled at `qps` per second; each request takes one.

    reserve() takes a token now or books the next one and returns the seconds to wait
    for it, like Go's rate.Limiter.Reserve. Thread-safe; clock is monotonic seconds.
    """

    def __init__(
        self, *, qps: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if qps <= 0:
            raise ValueError(f"qps must be > 0, got {qps}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self._qps = qps
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._last = clock()

    def reserve(self) -> float:
        """Take one token; the seconds to wait before using it (0.0 when one was there)."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._tokens = min(float(self._burst), self._tokens + elapsed * self._qps)
            self._last = now
            self._tokens -= 1.0
            # A negative balance is a queue of booked tokens: each waits its turn.
            return 0.0 if self._tokens >= 0 else -self._tokens / self._qps


class Backoff:
    """Capped exponential delays with jitter (client-go's reflector: 0.8 s to 30 s)."""

    def __init__(
        self,
        *,
        initial: float,
        cap: float,
        reset_after: float,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._initial = initial
        self._cap = cap
        self._reset_after = reset_after
        self._clock = clock
        self._rng = rng
        self._next = initial
        self._last: float | None = None

    def delay(self) -> float:
        """The next delay: the base doubles each time, jitter adds up to 100%, capped."""
        now = self._clock()
        if self._last is not None and now - self._last > self._reset_after:
            self._next = self._initial
        self._last = now
        base = self._next
        self._next = min(self._cap, base * 2)
        return min(self._cap, base * (1.0 + self._rng.random()))

    def reset(self) -> None:
        self._next = self._initial
        self._last = None
