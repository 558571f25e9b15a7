"""The bounded-frequency runner, driven by a fake clock: no test sleeps on a timer."""

from __future__ import annotations

import threading

import pytest

from ipvsproxy.agent.runner import BoundedFrequencyRunner


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Recorder:
    """The runner's function: records run times; returns the next scripted outcome."""

    def __init__(self, clock: FakeClock, outcomes: list[bool] | None = None) -> None:
        self.clock = clock
        self.times: list[float] = []
        self.outcomes = outcomes or []

    def __call__(self) -> bool:
        self.times.append(self.clock.now())
        return self.outcomes.pop(0) if self.outcomes else True


def make(
    min_interval: float = 1.0,
    max_interval: float = 30.0,
    retry_interval: float = 5.0,
    outcomes: list[bool] | None = None,
) -> tuple[BoundedFrequencyRunner, FakeClock, Recorder]:
    clock = FakeClock()
    fn = Recorder(clock, outcomes)
    runner = BoundedFrequencyRunner(
        fn,
        min_interval=min_interval,
        max_interval=max_interval,
        retry_interval=retry_interval,
        clock=clock,
    )
    return runner, clock, fn


def test_nothing_runs_before_a_request_or_max_interval() -> None:
    runner, clock, fn = make()
    assert not runner.step()
    clock.advance(29.9)
    assert not runner.step()
    clock.advance(0.1)
    assert runner.step()
    assert fn.times == [1030.0]


def test_request_runs_at_once_then_requests_within_min_interval_coalesce() -> None:
    runner, clock, fn = make(min_interval=1.0)
    runner.run()
    assert runner.step()
    for _ in range(100):
        runner.run()
        clock.advance(0.005)
        assert not runner.step()
    assert runner.next_run_at() == pytest.approx(1001.0)
    clock.t = 1001.0
    assert runner.step()
    assert not runner.step()  # the hundred requests made one run
    assert len(fn.times) == 2


def test_min_interval_counts_from_the_end_of_a_run() -> None:
    clock = FakeClock()

    def slow() -> bool:
        clock.advance(3.0)  # the run itself takes 3 s
        return True

    runner = BoundedFrequencyRunner(
        slow, min_interval=2.0, max_interval=60.0, retry_interval=5.0, clock=clock
    )
    runner.run()
    assert runner.step()
    runner.run()
    assert runner.next_run_at() == pytest.approx(1005.0)


def test_max_interval_runs_without_requests_and_restarts_after_each_run() -> None:
    runner, clock, fn = make(max_interval=30.0)
    clock.advance(10)
    runner.run()
    runner.step()
    assert runner.next_run_at() == pytest.approx(1040.0)
    clock.advance(30)
    assert runner.step()
    assert fn.times == [1010.0, 1040.0]


def test_run_by_holds_across_earlier_runs_and_is_spent_by_the_run_at_it() -> None:
    runner, clock, fn = make(min_interval=1.0, max_interval=30.0)
    runner.run_by(1027.0)
    runner.run_by(1028.0)  # the earlier of the two holds
    clock.advance(10)
    runner.run()
    assert runner.step()  # a requested run before it does not spend it
    assert runner.next_run_at() == pytest.approx(1027.0)
    clock.t = 1027.0
    assert runner.step()
    assert runner.next_run_at() == pytest.approx(1057.0)  # back to max_interval
    runner.run_by(1027.5)  # within min_interval of the last run: waits for it
    assert runner.next_run_at() == pytest.approx(1028.0)
    assert fn.times == [1010.0, 1027.0]


def test_failure_retries_after_retry_interval_and_success_cancels_it() -> None:
    runner, clock, _ = make(min_interval=1.0, retry_interval=5.0, outcomes=[False, True])
    runner.run()
    runner.step()
    assert runner.next_run_at() == pytest.approx(1005.0)
    clock.advance(4.9)
    assert not runner.step()
    clock.advance(0.1)
    assert runner.step()  # the retry
    assert runner.next_run_at() == pytest.approx(1035.0)  # back to max_interval


def test_retry_interval_never_beats_min_interval() -> None:
    runner, _, _ = make(min_interval=10.0, retry_interval=2.0, outcomes=[False])
    runner.run()
    runner.step()
    assert runner.next_run_at() == pytest.approx(1010.0)


def test_an_exception_counts_as_a_failure() -> None:
    clock = FakeClock()

    def boom() -> bool:
        raise RuntimeError("bug")

    runner = BoundedFrequencyRunner(
        boom, min_interval=0.0, max_interval=60.0, retry_interval=3.0, clock=clock
    )
    runner.run()
    assert runner.step()
    assert runner.next_run_at() == pytest.approx(1003.0)


def test_request_during_a_run_gets_a_run_of_its_own() -> None:
    clock = FakeClock()
    runs: list[float] = []
    runner: BoundedFrequencyRunner

    def fn() -> bool:
        runs.append(clock.now())
        if len(runs) == 1:
            runner.run()  # a change recorded while the sync runs
        return True

    runner = BoundedFrequencyRunner(
        fn, min_interval=0.0, max_interval=60.0, retry_interval=3.0, clock=clock
    )
    runner.run()
    assert runner.step()
    assert runner.step()
    assert not runner.step()
    assert len(runs) == 2


def test_max_interval_below_min_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        make(min_interval=10, max_interval=5)


def test_worker_thread_runs_requests_and_stops() -> None:
    # Real clock, but min_interval 0 and a long max_interval: the worker only runs on
    # request, and the test waits on events, never on the runner's timers.
    ran = threading.Event()
    runner = BoundedFrequencyRunner(
        lambda: ran.set() or True, min_interval=0.0, max_interval=3600.0, retry_interval=1.0
    )
    thread = runner.start()
    runner.run()
    assert ran.wait(5)
    runner.stop()
    thread.join(5)
    assert not thread.is_alive()
