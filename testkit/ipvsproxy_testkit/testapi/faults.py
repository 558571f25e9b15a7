"""Faults the test API server can be told to show, each counted down or timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Faults"]


class Faults:
    """Switches read by every request; thread-safe. Control requests are never affected.

    Counted faults apply to the next `count` requests of their kind; timed ones until a
    deadline on the injected clock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.delay_seconds = 0.0
        self._fail_count = 0
        self._fail_until = 0.0
        self._fail_code = 500
        self._watch_gone = 0
        self._truncate = 0
        self._empty_list = 0

    def delay(self, seconds: float) -> None:
        """Delay every response by seconds (0 to stop)."""
        with self._lock:
            self.delay_seconds = max(0.0, seconds)

    def fail(self, *, count: int = 0, seconds: float = 0.0, code: int = 500) -> None:
        """Answer the next count requests, or every request for seconds, with an error."""
        with self._lock:
            self._fail_count = max(0, count)
            self._fail_until = self._clock() + seconds if seconds > 0 else 0.0
            self._fail_code = code

    def watch_gone(self, count: int = 1) -> None:
        """Answer the next count watches with an ERROR event, Status 410 Expired."""
        with self._lock:
            self._watch_gone = max(0, count)

    def truncate(self, count: int = 1) -> None:
        """Cut the next count responses (or watch events) halfway through their JSON."""
        with self._lock:
            self._truncate = max(0, count)

    def empty_list(self, count: int = 1) -> None:
        """Answer the next count lists with no items, as a buggy server might."""
        with self._lock:
            self._empty_list = max(0, count)

    def clear(self) -> None:
        with self._lock:
            self.delay_seconds = 0.0
            self._fail_count = self._watch_gone = self._truncate = self._empty_list = 0
            self._fail_until = 0.0

    # --- consulted by the server -------------------------------------------------------------

    def take_failure(self) -> int | None:
        with self._lock:
            if self._fail_count > 0:
                self._fail_count -= 1
                return self._fail_code
            if self._fail_until and self._clock() < self._fail_until:
                return self._fail_code
            return None

    def take_watch_gone(self) -> bool:
        return self._take("_watch_gone")

    def take_truncate(self) -> bool:
        return self._take("_truncate")

    def take_empty_list(self) -> bool:
        return self._take("_empty_list")

    def _take(self, name: str) -> bool:
        with self._lock:
            left: int = getattr(self, name)
            if left <= 0:
                return False
            setattr(self, name, left - 1)
            return True

    def state(self) -> dict[str, object]:
        with self._lock:
            return {
                "delaySeconds": self.delay_seconds,
                "failCount": self._fail_count,
                "failSecondsLeft": max(0.0, self._fail_until - self._clock()),
                "failCode": self._fail_code,
                "watchGone": self._watch_gone,
                "truncate": self._truncate,
                "emptyList": self._empty_list,
            }
