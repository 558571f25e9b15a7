"""A bounded-frequency runner: kube-proxy's BoundedFrequencyRunner (pkg/proxy/runner).

One worker thread runs a function when asked, with three guarantees:

1. at least `min_interval` from the end of one run to the start of the next; requests
   made meanwhile are coalesced into one run at the next opportunity;
2. at least one run per `max_interval` (counted from the end of the last run), with no
   request at all: the periodic full sync;
3. after a failed run (the function returns False), another no later than
   `retry_interval` unless something else triggers it sooner; a success cancels that.

As upstream, the first run waits for a request (or for max_interval). The clock is
injected: tests drive the runner with a fake clock and `step()`, never sleeping on timers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from loguru import logger


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


class BoundedFrequencyRunner:
    """Runs `fn` on request, at most once per min_interval, at least once per max_interval."""

    def __init__(
        self,
        fn: Callable[[], bool],
        *,
        min_interval: float,
        max_interval: float,
        retry_interval: float,
        clock: Clock | None = None,
        name: str = "sync",
    ) -> None:
        if max_interval < min_interval:
            raise ValueError(f"{name}: max_interval {max_interval} < min_interval {min_interval}")
        self._fn = fn
        self._min = min_interval
        self._max = max_interval
        self._retry = retry_interval
        self._clock = clock or MonotonicClock()
        self._name = name
        self._cond = threading.Condition()
        self._requested = False
        self._stopping = False
        self._last_end: float | None = None
        self._max_deadline = self._clock.now() + max_interval
        self._retry_deadline: float | None = None
        self._run_by: float | None = None  # a run asked for at a time of the caller's
        self._thread: threading.Thread | None = None

    # -- requests (any thread)

    def run(self) -> None:
        """Ask for a run as soon as allowed; requests pending together make one run."""
        with self._cond:
            self._requested = True
            self._cond.notify()

    def run_by(self, when: float) -> None:
        """Ask for a run no later than `when` (on the clock's scale), however many runs come
        before it: for work of the caller's own period, shorter than max_interval."""
        with self._cond:
            self._run_by = when if self._run_by is None else min(self._run_by, when)
            self._cond.notify()

    def stop(self) -> None:
        """Make loop() return after the run in progress, if any."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    # -- scheduling (pure given the clock)

    def next_run_at(self) -> float:
        """When the next run is due, on the clock's scale."""
        with self._cond:
            return self._due_at()

    def _due_at(self) -> float:
        if self._requested:
            trigger = -float("inf")
        else:
            trigger = self._max_deadline
            if self._retry_deadline is not None:
                trigger = min(trigger, self._retry_deadline)
            if self._run_by is not None:
                trigger = min(trigger, self._run_by)
        earliest = -float("inf") if self._last_end is None else self._last_end + self._min
        return max(trigger, earliest)

    def step(self) -> bool:
        """Run the function if a run is due now; whether it ran."""
        with self._cond:
            now = self._clock.now()
            if self._stopping or now < self._due_at():
                return False
            if self._run_by is not None and now >= self._run_by:
                self._run_by = None
            # Cleared before the run: a request arriving during it gets a run of its own.
            self._requested = False
        try:
            ok = self._fn()
        except Exception:
            logger.exception("{name} failed with an unexpected error", name=self._name)
            ok = False
        with self._cond:
            end = self._clock.now()
            self._last_end = end
            self._max_deadline = end + self._max
            self._retry_deadline = None if ok else end + self._retry
        return True

    # -- the worker

    def loop(self) -> None:
        """Run until stop(): sleep until a run is due or a request arrives, then run."""
        while True:
            with self._cond:
                while not self._stopping:
                    wait = self._due_at() - self._clock.now()
                    if wait <= 0:
                        break
                    self._cond.wait(timeout=wait)
                if self._stopping:
                    return
            self.step()

    def start(self) -> threading.Thread:
        """loop() on a daemon thread, so that exiting never waits for a sync to finish."""
        self._thread = threading.Thread(target=self.loop, name=self._name, daemon=True)
        self._thread.start()
        return self._thread
