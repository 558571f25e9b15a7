"""A client-side token bucket in front of API requests (clientConnection qps and burst).

client-go puts one such bucket in front of every request a client makes, watches included
(flowcontrol.NewTokenBucketRateLimiter); kube-proxy's defaults are 5 requests/s with a
burst of 10. Callers ask how long to wait and do the waiting themselves, so that a
stopping thread is never stuck in here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


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
