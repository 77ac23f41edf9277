"""Behaviour of bluewren.breaker.CircuitBreaker.

Every async test runs twice, on stdlib asyncio and on uvloop. Time is a fake clock, so
windows, slow calls and open waits are exact; only the timeout tests use the real loop
clock, and they assert outcomes, never durations.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import uvloop

from bluewren.breaker import (
    BreakerConfig,
    BreakerEvent,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    EventKind,
    WindowType,
)
from bluewren.errors import BreakerConfigError, CallTimeoutError, CircuitOpenError
from conftest import Run

T = TypeVar("T")


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Down(ConnectionError):
    """The dependency failed."""


class BadRequest(Exception):
    """The caller's fault, not the dependency's."""


SMALL: dict[str, Any] = {
    "window_size": 4,
    "minimum_calls": 4,
    "failure_rate_threshold": 50.0,
    "slow_call_duration": 1.0,
    "wait_duration_open": 10.0,
    "permitted_calls_in_half_open": 2,
}


def make(
    clock: FakeClock, rng: Callable[[], float] = lambda: 0.5, **settings: Any
) -> CircuitBreaker:
    config = BreakerConfig(**{**SMALL, **settings})
    return CircuitBreaker("store", config, clock=clock, rng=rng)


async def succeed(breaker: CircuitBreaker, clock: FakeClock, takes: float = 0.0) -> None:
    async def work() -> str:
        clock.advance(takes)
        return "ok"

    assert await breaker.call(work) == "ok"


async def fail(
    breaker: CircuitBreaker,
    clock: FakeClock,
    takes: float = 0.0,
    error: BaseException | None = None,
) -> None:
    err = error if error is not None else Down("store unreachable")

    async def work() -> None:
        clock.advance(takes)
        raise err

    with pytest.raises(type(err)):
        await breaker.call(work)


async def trip(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(breaker.config.minimum_calls):
        await fail(breaker, clock)
    assert breaker.state is BreakerState.OPEN


async def to_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await trip(breaker, clock)
    clock.advance(breaker.config.max_wait_duration_open or breaker.config.wait_duration_open * 2)
    assert breaker.state is BreakerState.HALF_OPEN


async def rejected(breaker: CircuitBreaker) -> CircuitOpenError:
    called = False

    async def work() -> None:
        nonlocal called
        called = True

    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(work)
    assert not called
    return info.value


class Pending:
    """A call through the breaker that stays in flight until finished."""

    def __init__(self, breaker: CircuitBreaker, clock: FakeClock) -> None:
        self.clock = clock
        self.release = asyncio.Event()
        self.entered = False
        self.error: BaseException | None = None
        self.task = asyncio.ensure_future(breaker.call(self._work))

    async def _work(self) -> str:
        self.entered = True
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return "ok"

    async def started(self) -> Pending:
        await asyncio.sleep(0)
        return self

    async def finish(self, error: BaseException | None = None, takes: float = 0.0) -> None:
        self.clock.advance(takes)
        self.error = error
        self.release.set()
        await asyncio.wait([self.task])


# -- the loops -------------------------------------------------------------------------


def test_runs_on_the_requested_event_loop(run: Run, loop_name: str) -> None:
    async def loop_type() -> type[asyncio.AbstractEventLoop]:
        return type(asyncio.get_running_loop())

    expected = uvloop.Loop if loop_name == "uvloop" else asyncio.BaseEventLoop
    assert issubclass(run(loop_type()), expected)
    if loop_name == "asyncio":
        assert not issubclass(run(loop_type()), uvloop.Loop)


# -- closed state, count window ----------------------------------------------------------


def test_stays_closed_below_minimum_calls_even_when_every_call_fails(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, window_size=10, minimum_calls=5)

    async def scenario() -> None:
        for _ in range(4):
            await fail(breaker, clock)
        assert breaker.state is BreakerState.CLOSED
        assert breaker.metrics().failure_rate is None
        await fail(breaker, clock)
        assert breaker.state is BreakerState.OPEN

    run(scenario())


def test_opens_when_failure_rate_reaches_threshold_after_minimum_calls(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)

    async def scenario() -> None:
        await succeed(breaker, clock)
        await succeed(breaker, clock)
        await fail(breaker, clock)
        assert breaker.state is BreakerState.CLOSED
        await fail(breaker, clock)  # 2 of 4 = 50%: exactly the threshold
        assert breaker.state is BreakerState.OPEN
        assert breaker.metrics().failure_rate == 50.0

    run(scenario())


@pytest.mark.parametrize("window_type", [WindowType.COUNT, WindowType.TIME])
def test_success_that_completes_minimum_calls_can_open_the_breaker(
    run: Run, window_type: WindowType
) -> None:
    clock = FakeClock()
    breaker = make(clock, window_type=window_type, window_size=4, minimum_calls=4)

    async def scenario() -> None:
        for _ in range(3):
            await fail(breaker, clock)
        assert breaker.state is BreakerState.CLOSED
        await succeed(breaker, clock)  # 3 of 4 failed

    run(scenario())
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(40.0, BreakerState.OPEN), (40.01, BreakerState.CLOSED)],
)
def test_failure_threshold_is_inclusive_at_its_exact_edge(
    run: Run, threshold: float, expected: BreakerState
) -> None:
    clock = FakeClock()
    breaker = make(clock, window_size=5, minimum_calls=5, failure_rate_threshold=threshold)

    async def scenario() -> None:
        for _ in range(3):
            await succeed(breaker, clock)
        await fail(breaker, clock)
        await fail(breaker, clock)  # 2 of 5 = 40%

    run(scenario())
    assert breaker.state is expected


@pytest.mark.parametrize(
    ("takes", "expected"),
    [(1.0, BreakerState.OPEN), (0.75, BreakerState.CLOSED)],
)
def test_call_taking_exactly_slow_call_duration_is_slow(
    run: Run, takes: float, expected: BreakerState
) -> None:
    clock = FakeClock()
    breaker = make(clock, slow_call_rate_threshold=50.0)

    async def scenario() -> None:
        await succeed(breaker, clock)
        await succeed(breaker, clock)
        await succeed(breaker, clock, takes=takes)
        await succeed(breaker, clock, takes=takes)

    run(scenario())
    assert breaker.state is expected


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(50.0, BreakerState.OPEN), (50.01, BreakerState.CLOSED)],
)
def test_slow_call_threshold_is_inclusive_at_its_exact_edge(
    run: Run, threshold: float, expected: BreakerState
) -> None:
    clock = FakeClock()
    breaker = make(clock, slow_call_rate_threshold=threshold)

    async def scenario() -> None:
        await succeed(breaker, clock)
        await succeed(breaker, clock, takes=2.0)
        await succeed(breaker, clock)
        await succeed(breaker, clock, takes=2.0)  # 2 of 4 slow = 50%

    run(scenario())
    assert breaker.state is expected


def test_slow_failures_count_toward_both_rates(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, window_size=4, minimum_calls=4, failure_rate_threshold=100.0)

    async def scenario() -> None:
        await fail(breaker, clock, takes=3.0)
        await succeed(breaker, clock)
        await succeed(breaker, clock, takes=1.5)

    run(scenario())
    snapshot = breaker.metrics()
    assert (snapshot.buffered_calls, snapshot.failed_calls, snapshot.slow_calls) == (3, 1, 2)
    assert snapshot.failure_rate is None  # still below minimum_calls


def test_count_window_forgets_its_oldest_outcome(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)

    async def scenario() -> None:
        await fail(breaker, clock)
        for _ in range(3):
            await succeed(breaker, clock)
        await fail(breaker, clock)  # evicts the first failure: still 1 of 4
        snapshot = breaker.metrics()
        assert (snapshot.buffered_calls, snapshot.failed_calls) == (4, 1)
        assert breaker.state is BreakerState.CLOSED
        await fail(breaker, clock)  # 2 of 4
        assert breaker.state is BreakerState.OPEN

    run(scenario())


def test_success_evicting_a_failure_lowers_the_failure_count(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, failure_rate_threshold=100.0)

    async def scenario() -> None:
        await fail(breaker, clock)
        await fail(breaker, clock)
        await succeed(breaker, clock)
        await succeed(breaker, clock)
        await succeed(breaker, clock)  # evicts the first failure

    run(scenario())
    snapshot = breaker.metrics()
    assert (snapshot.buffered_calls, snapshot.failed_calls) == (4, 1)
    assert snapshot.failure_rate == 25.0


def test_metrics_report_rates_counts_and_totals(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, window_size=8, minimum_calls=4, ignore_exceptions=(BadRequest,))

    async def scenario() -> None:
        await succeed(breaker, clock)
        await succeed(breaker, clock, takes=1.0)
        await fail(breaker, clock)
        await fail(breaker, clock, error=BadRequest("no"))
        await succeed(breaker, clock)

    run(scenario())
    snapshot = breaker.metrics()
    assert snapshot.name == "store"
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.buffered_calls == 4
    assert snapshot.failure_rate == 25.0
    assert snapshot.slow_call_rate == 25.0
    assert (snapshot.successful_calls_total, snapshot.failed_calls_total) == (3, 1)
    assert snapshot.ignored_calls_total == 1
    assert snapshot.not_permitted_calls == 0


# -- closed state, time window -----------------------------------------------------------


@pytest.mark.parametrize(
    ("gap", "expected"),
    [(9.5, BreakerState.OPEN), (10.0, BreakerState.CLOSED)],
)
def test_time_window_forgets_calls_older_than_window_size_seconds(
    run: Run, gap: float, expected: BreakerState
) -> None:
    clock = FakeClock()
    breaker = make(clock, window_type=WindowType.TIME, window_size=10, minimum_calls=2)

    async def scenario() -> None:
        await fail(breaker, clock)
        clock.advance(gap)
        await fail(breaker, clock)

    run(scenario())
    assert breaker.state is expected


def test_time_window_expires_one_second_bucket_at_a_time(run: Run) -> None:
    clock = FakeClock(1000.0)
    breaker = make(clock, window_type="time", window_size=10, minimum_calls=100)

    async def scenario() -> None:
        for at in (1000.2, 1003.5, 1003.9, 1007.9):
            clock.now = at
            await fail(breaker, clock)

    run(scenario())
    buffered = []
    for at in (1009.9, 1010.0, 1012.99, 1013.0, 1016.99, 1017.0):
        clock.now = at
        buffered.append(breaker.metrics().buffered_calls)
    assert buffered == [4, 3, 3, 1, 1, 0]


def test_time_window_counts_rates_over_surviving_calls(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, window_type=WindowType.TIME, window_size=5, minimum_calls=3)

    async def scenario() -> None:
        await fail(breaker, clock)
        await fail(breaker, clock)
        clock.advance(5.0)  # both failures expire
        await succeed(breaker, clock)
        await succeed(breaker, clock)
        await fail(breaker, clock)  # 1 of 3, not 3 of 5
        assert breaker.state is BreakerState.CLOSED
        await fail(breaker, clock)  # 2 of 4
        assert breaker.state is BreakerState.OPEN

    run(scenario())


# -- open state ----------------------------------------------------------------------


def test_open_rejects_without_calling_and_says_when_to_retry(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)

    async def scenario() -> CircuitOpenError:
        await trip(breaker, clock)
        clock.advance(2.5)
        return await rejected(breaker)

    error = run(scenario())
    assert error.retry_after == pytest.approx(7.5)
    assert error.name == "store"
    assert error.state == BreakerState.OPEN
    assert "store" in str(error)
    assert breaker.metrics().not_permitted_calls == 1


def test_open_moves_to_half_open_once_the_wait_has_elapsed(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)

    run(trip(breaker, clock))
    clock.advance(9.75)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.25)
    assert breaker.state is BreakerState.HALF_OPEN


def test_first_call_once_the_wait_has_elapsed_is_a_trial(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=1)

    async def scenario() -> None:
        await trip(breaker, clock)
        clock.advance(10.0)  # exactly the wait; no state read before the call
        await succeed(breaker, clock)

    run(scenario())
    assert breaker.state is BreakerState.CLOSED


def test_open_wait_jitter_spreads_the_wait_within_its_bounds(run: Run) -> None:
    clock = FakeClock()
    draws = iter([0.0, 0.5, 0.75])
    breaker = make(clock, rng=lambda: next(draws), open_jitter=0.2)

    async def wait_after_opening() -> float:
        await trip(breaker, clock)
        wait = (await rejected(breaker)).retry_after
        breaker.reset()
        return wait

    waits = [run(wait_after_opening()) for _ in range(3)]
    assert waits == pytest.approx([8.0, 10.0, 11.0])


def test_open_wait_jitter_never_leaves_its_bounds_with_a_real_rng(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, rng=random.Random(7).random, open_jitter=0.3)

    async def waits() -> list[float]:
        seen = []
        for _ in range(200):
            await trip(breaker, clock)
            seen.append((await rejected(breaker)).retry_after)
            breaker.reset()
        return seen

    seen = run(waits())
    assert all(7.0 <= w <= 13.0 for w in seen)
    assert len(set(seen)) > 100  # the draws actually vary


def test_repeated_reopens_grow_the_wait_by_the_multiplier_up_to_the_cap(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, open_backoff_multiplier=2.0, max_wait_duration_open=35.0, open_jitter=0.0)

    async def reopen_wait() -> float:
        clock.advance(1000.0)
        assert breaker.state is BreakerState.HALF_OPEN
        await fail(breaker, clock)
        await fail(breaker, clock)
        assert breaker.state is BreakerState.OPEN
        return (await rejected(breaker)).retry_after

    async def scenario() -> list[float]:
        await trip(breaker, clock)
        waits = [(await rejected(breaker)).retry_after]
        waits += [await reopen_wait() for _ in range(3)]
        # Closing ends the backoff: the next open waits the base time again.
        clock.advance(1000.0)
        await succeed(breaker, clock)
        await succeed(breaker, clock)
        assert breaker.state is BreakerState.CLOSED
        await trip(breaker, clock)
        waits.append((await rejected(breaker)).retry_after)
        return waits

    assert run(scenario()) == [10.0, 20.0, 35.0, 35.0, 10.0]


# -- half-open state ---------------------------------------------------------------------


def test_half_open_closes_with_an_empty_window_when_the_trials_succeed(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=3)

    async def scenario() -> None:
        await to_half_open(breaker, clock)
        for _ in range(3):
            await succeed(breaker, clock)

    run(scenario())
    assert breaker.state is BreakerState.CLOSED
    assert breaker.metrics().buffered_calls == 0


def test_half_open_decides_only_after_all_trials_complete(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=3)

    async def scenario() -> None:
        await to_half_open(breaker, clock)
        await fail(breaker, clock)
        await fail(breaker, clock)
        assert breaker.state is BreakerState.HALF_OPEN
        await succeed(breaker, clock)
        assert breaker.state is BreakerState.OPEN

    run(scenario())


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(2, BreakerState.OPEN), (1, BreakerState.CLOSED)],
)
def test_half_open_trials_use_the_failure_threshold(
    run: Run, failures: int, expected: BreakerState
) -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=4)

    async def scenario() -> None:
        await to_half_open(breaker, clock)
        for _ in range(failures):
            await fail(breaker, clock)
        for _ in range(4 - failures):
            await succeed(breaker, clock)

    run(scenario())
    assert breaker.state is expected


def test_half_open_reopens_when_the_trials_are_slow(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, slow_call_rate_threshold=50.0)

    async def scenario() -> None:
        await to_half_open(breaker, clock)
        await succeed(breaker, clock, takes=1.0)
        await succeed(breaker, clock)

    run(scenario())
    assert breaker.state is BreakerState.OPEN
    assert breaker.metrics().slow_call_rate == 50.0


@pytest.mark.parametrize(("timeout", "hint"), [(None, 1.0), (0.5, 0.5)])
def test_half_open_rejects_calls_beyond_its_trial_permits(
    run: Run, timeout: float | None, hint: float
) -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=timeout)

    async def scenario() -> None:
        await to_half_open(breaker, clock)
        first = await Pending(breaker, clock).started()
        second = await Pending(breaker, clock).started()
        assert first.entered
        assert second.entered
        error = await rejected(breaker)
        assert error.state == BreakerState.HALF_OPEN
        assert error.retry_after == hint
        await first.finish()
        await second.finish()
        assert breaker.state is BreakerState.CLOSED

    run(scenario())
    assert breaker.metrics().not_permitted_calls == 1


def test_call_permitted_before_opening_is_not_counted_as_a_trial(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=1)

    async def scenario() -> None:
        straggler = await Pending(breaker, clock).started()
        await to_half_open(breaker, clock)
        await straggler.finish()
        assert breaker.state is BreakerState.HALF_OPEN
        await fail(breaker, clock)  # the real trial, still permitted
        assert breaker.state is BreakerState.OPEN

    run(scenario())
    assert breaker.metrics().successful_calls_total == 1


@pytest.mark.parametrize("form", ["call", "async with"])
def test_call_in_flight_across_a_reset_is_not_recorded_in_the_new_window(
    run: Run, form: str
) -> None:
    clock = FakeClock()
    breaker = make(clock)
    entered, leave = asyncio.Event(), asyncio.Event()

    async def in_flight() -> None:
        if form == "call":

            async def work() -> None:
                entered.set()
                await leave.wait()

            await breaker.call(work)
        else:
            async with breaker:
                entered.set()
                await leave.wait()

    async def scenario() -> None:
        task = asyncio.create_task(in_flight())
        await entered.wait()
        breaker.reset()
        leave.set()
        await task

    run(scenario())
    snapshot = breaker.metrics()
    assert snapshot.buffered_calls == 0
    assert snapshot.successful_calls_total == 1


# -- classifying outcomes --------------------------------------------------------------


def test_ignored_exceptions_propagate_but_are_not_counted(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, ignore_exceptions=(BadRequest,))

    async def scenario() -> None:
        for _ in range(10):
            await fail(breaker, clock, error=BadRequest("missing field"))

    run(scenario())
    snapshot = breaker.metrics()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.buffered_calls == 0
    assert snapshot.ignored_calls_total == 10


def test_ignore_exceptions_win_over_record_exceptions(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, record_exceptions=(Exception,), ignore_exceptions=(Down,))

    async def scenario() -> None:
        for _ in range(4):
            await fail(breaker, clock, error=Down("ignored"))

    run(scenario())
    assert breaker.state is BreakerState.CLOSED
    assert breaker.metrics().ignored_calls_total == 4


def test_ignored_exception_gives_back_its_half_open_permit(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=1, ignore_exceptions=(BadRequest,))

    async def scenario() -> None:
        await to_half_open(breaker, clock)
        await fail(breaker, clock, error=BadRequest("not a trial"))
        assert breaker.state is BreakerState.HALF_OPEN
        await succeed(breaker, clock)

    run(scenario())
    assert breaker.state is BreakerState.CLOSED


def test_exceptions_outside_record_exceptions_count_as_successes(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, record_exceptions=(ConnectionError,))

    async def scenario() -> None:
        for _ in range(4):
            await fail(breaker, clock, error=LookupError("no such user"))

    run(scenario())
    snapshot = breaker.metrics()
    assert snapshot.state is BreakerState.CLOSED
    assert (snapshot.buffered_calls, snapshot.failed_calls) == (4, 0)
    assert snapshot.successful_calls_total == 4


def test_record_predicate_narrows_the_recorded_exceptions(run: Run) -> None:
    class HttpError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(status)
            self.status = status

    def server_side(exc: BaseException) -> bool:
        return isinstance(exc, HttpError) and exc.status >= 500

    clock = FakeClock()
    breaker = make(clock, record_predicate=server_side)

    async def scenario() -> None:
        for _ in range(4):
            await fail(breaker, clock, error=HttpError(404))
        assert breaker.state is BreakerState.CLOSED
        for _ in range(2):
            await fail(breaker, clock, error=HttpError(503))

    run(scenario())
    assert breaker.state is BreakerState.OPEN


def test_base_exceptions_that_are_not_exceptions_are_ignored(run: Run) -> None:
    class Shutdown(BaseException):
        pass

    clock = FakeClock()
    breaker = make(clock, minimum_calls=1, window_size=1)

    run(fail(breaker, clock, error=Shutdown()))
    snapshot = breaker.metrics()
    assert snapshot.buffered_calls == 0
    assert snapshot.ignored_calls_total == 1


def test_cancelled_call_in_closed_state_is_neither_success_nor_failure(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)

    async def scenario() -> None:
        pending = await Pending(breaker, clock).started()
        pending.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending.task

    run(scenario())
    snapshot = breaker.metrics()
    assert snapshot.buffered_calls == 0
    assert (snapshot.successful_calls_total, snapshot.failed_calls_total) == (0, 0)


def test_cancelled_trial_releases_its_half_open_permit(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, permitted_calls_in_half_open=1)

    async def scenario() -> None:
        await to_half_open(breaker, clock)
        trial = await Pending(breaker, clock).started()
        await rejected(breaker)  # the only permit is taken
        trial.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial.task
        assert breaker.state is BreakerState.HALF_OPEN
        await succeed(breaker, clock)  # the permit came back

    run(scenario())
    assert breaker.state is BreakerState.CLOSED


# -- timeouts -------------------------------------------------------------------------


def test_timeout_cancels_the_call_counts_a_failure_and_raises_call_timeout_error(
    run: Run,
) -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=0.01, minimum_calls=1, window_size=1)
    cancelled = False

    async def stalls() -> None:
        nonlocal cancelled
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    async def scenario() -> CallTimeoutError:
        with pytest.raises(CallTimeoutError) as info:
            await breaker.call(stalls)
        return info.value

    error = run(scenario())
    assert isinstance(error, TimeoutError)
    assert error.name == "store"
    assert error.timeout == 0.01
    assert cancelled
    assert breaker.metrics().failed_calls_total == 1
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize("form", ["call", "async with", "guard"])
def test_timeout_counts_as_failure_even_when_not_a_recorded_exception(run: Run, form: str) -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=0.01, record_exceptions=(Down,))

    async def stalls() -> None:
        await asyncio.Event().wait()

    async def guarded() -> None:
        if form == "call":
            await breaker.call(stalls)
        elif form == "async with":
            async with breaker:
                await stalls()
        else:
            async with breaker.guard():
                await stalls()

    async def scenario() -> None:
        with pytest.raises(CallTimeoutError):
            await guarded()

    run(scenario())
    snapshot = breaker.metrics()
    assert (snapshot.failed_calls, snapshot.failed_calls_total) == (1, 1)


def test_timeout_error_raised_by_the_callee_is_not_the_breaker_timeout(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=60.0)

    async def scenario() -> None:
        async def upstream_timeout() -> None:
            raise TimeoutError("upstream gave up")

        with pytest.raises(TimeoutError) as info:
            await breaker.call(upstream_timeout)
        assert not isinstance(info.value, CallTimeoutError)

    run(scenario())
    assert breaker.metrics().failed_calls == 1


def test_caller_cancellation_under_a_timeout_is_not_a_failure(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=60.0)

    async def scenario() -> None:
        pending = await Pending(breaker, clock).started()
        pending.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending.task

    run(scenario())
    assert breaker.metrics().failed_calls_total == 0
    assert breaker.metrics().ignored_calls_total == 1


def test_guard_timeout_overrides_the_configured_timeout(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=None)

    async def scenario() -> None:
        with pytest.raises(CallTimeoutError):
            async with breaker.guard(timeout=0.01):
                await asyncio.Event().wait()

    run(scenario())
    assert breaker.metrics().failed_calls == 1


def test_context_manager_applies_the_configured_timeout(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=0.01)

    async def scenario() -> None:
        with pytest.raises(CallTimeoutError):
            async with breaker:
                await asyncio.Event().wait()

    run(scenario())
    assert breaker.metrics().failed_calls == 1


# -- manual control ----------------------------------------------------------------------


def test_forced_open_rejects_every_call_until_closed(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)

    async def scenario() -> None:
        breaker.force_open()
        clock.advance(10_000.0)
        error = await rejected(breaker)
        assert error.state == BreakerState.FORCED_OPEN
        assert error.retry_after > 0
        assert breaker.state is BreakerState.FORCED_OPEN
        breaker.transition_to_closed()
        await succeed(breaker, clock)

    run(scenario())
    assert breaker.state is BreakerState.CLOSED


def test_disabled_permits_every_call_and_records_nothing(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)

    async def scenario() -> None:
        breaker.disable()
        for _ in range(10):
            await fail(breaker, clock)

    run(scenario())
    snapshot = breaker.metrics()
    assert snapshot.state is BreakerState.DISABLED
    assert snapshot.buffered_calls == 0
    assert snapshot.failed_calls_total == 0


def test_reset_clears_window_totals_and_backoff(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, open_backoff_multiplier=3.0, max_wait_duration_open=100.0)

    async def scenario() -> float:
        await to_half_open(breaker, clock)
        await fail(breaker, clock)
        await fail(breaker, clock)  # re-open: wait is now 30
        await rejected(breaker)
        breaker.reset()
        assert breaker.state is BreakerState.CLOSED
        snapshot = breaker.metrics()
        assert snapshot.buffered_calls == snapshot.failed_calls_total == 0
        assert snapshot.not_permitted_calls == 0
        await trip(breaker, clock)
        return (await rejected(breaker)).retry_after

    assert run(scenario()) == 10.0


def test_transition_to_closed_keeps_totals_but_empties_the_window(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)

    run(trip(breaker, clock))
    breaker.transition_to_closed()
    snapshot = breaker.metrics()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.buffered_calls == 0
    assert snapshot.failed_calls_total == 4


# -- events ---------------------------------------------------------------------------


def test_state_change_callbacks_see_every_transition_in_order(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)
    seen: list[tuple[BreakerState, BreakerState]] = []
    breaker.on_state_change(lambda old, new: seen.append((old, new)))

    async def scenario() -> None:
        await to_half_open(breaker, clock)
        await succeed(breaker, clock)
        await succeed(breaker, clock)
        breaker.force_open()
        breaker.disable()
        breaker.reset()

    run(scenario())
    S = BreakerState
    assert seen == [
        (S.CLOSED, S.OPEN),
        (S.OPEN, S.HALF_OPEN),
        (S.HALF_OPEN, S.CLOSED),
        (S.CLOSED, S.FORCED_OPEN),
        (S.FORCED_OPEN, S.DISABLED),
        (S.DISABLED, S.CLOSED),
    ]


def test_listeners_receive_call_rejection_and_reset_events(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, window_size=2, minimum_calls=2, ignore_exceptions=(BadRequest,))
    events: list[BreakerEvent] = []
    breaker.add_listener(events.append)
    bad = BadRequest("bad")

    async def scenario() -> None:
        await succeed(breaker, clock, takes=1.5)
        await fail(breaker, clock, error=bad)
        await fail(breaker, clock)
        await rejected(breaker)
        breaker.reset()

    run(scenario())
    assert [e.kind for e in events] == [
        EventKind.SUCCESS,
        EventKind.IGNORED,
        EventKind.FAILURE,
        EventKind.STATE_CHANGE,
        EventKind.REJECTED,
        EventKind.STATE_CHANGE,
        EventKind.RESET,
    ]
    success, ignored, failure, opened, rejection = events[:5]
    assert all(e.name == "store" for e in events)
    assert (success.duration, success.slow, success.error) == (1.5, True, None)
    assert ignored.error is bad
    assert isinstance(failure.error, Down)
    assert (opened.previous_state, opened.state) == (BreakerState.CLOSED, BreakerState.OPEN)
    assert rejection.retry_after == 10.0
    assert rejection.state is BreakerState.OPEN


def test_listener_that_raises_does_not_break_the_call(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    breaker = make(clock)

    def broken(event: BreakerEvent) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="bluewren.breaker"):
        run(succeed(breaker, clock))
    assert breaker.metrics().successful_calls_total == 1
    assert "listener bug" in caplog.text


def test_unsubscribed_listener_gets_no_more_events(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)
    events: list[BreakerEvent] = []
    unsubscribe = breaker.add_listener(events.append)

    run(succeed(breaker, clock))
    unsubscribe()
    run(succeed(breaker, clock))
    assert len(events) == 1


# -- the three ways to call ----------------------------------------------------------------


def test_call_passes_arguments_and_returns_the_result(run: Run) -> None:
    breaker = make(FakeClock())

    async def add(a: int, b: int, *, scale: int) -> int:
        return (a + b) * scale

    assert run(breaker.call(add, 2, 3, scale=10)) == 50


def test_decorator_routes_every_call_through_the_breaker(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)
    calls = 0

    @breaker
    async def fetch(user: str) -> str:
        """Fetch a user."""
        nonlocal calls
        calls += 1
        if user == "bad":
            raise Down("store down")
        return user.upper()

    async def scenario() -> None:
        assert await fetch("ann") == "ANN"
        for _ in range(3):
            with pytest.raises(Down):
                await fetch("bad")
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(CircuitOpenError):
            await fetch("ann")

    run(scenario())
    assert calls == 4
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch a user."


def test_decorator_refuses_a_plain_function(run: Run) -> None:
    breaker = make(FakeClock())

    async def scenario() -> None:
        def not_async() -> int:
            return 1

        with pytest.raises(TypeError, match="async def"):
            breaker(not_async)  # type: ignore[arg-type]

    run(scenario())


def test_context_manager_measures_duration_and_classifies_the_exception(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, window_size=8, ignore_exceptions=(BadRequest,))

    async def scenario() -> None:
        async with breaker:
            clock.advance(1.0)
        with pytest.raises(Down):
            async with breaker:
                raise Down("lost connection")
        with pytest.raises(BadRequest):
            async with breaker:
                raise BadRequest("bad")

    run(scenario())
    snapshot = breaker.metrics()
    assert (snapshot.buffered_calls, snapshot.failed_calls, snapshot.slow_calls) == (2, 1, 1)
    assert snapshot.ignored_calls_total == 1


def test_context_manager_rejects_without_running_the_block_when_open(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock)
    ran = False

    async def scenario() -> None:
        nonlocal ran
        await trip(breaker, clock)
        with pytest.raises(CircuitOpenError):
            async with breaker:
                ran = True

    run(scenario())
    assert not ran


@pytest.mark.parametrize(
    ("leaves_first", "expected"),
    [("a", [3.0, 2.5]), ("b", [2.0, 3.5])],
)
def test_context_manager_times_each_task_separately(
    run: Run, leaves_first: str, expected: list[float]
) -> None:
    clock = FakeClock()
    breaker = make(clock, slow_call_duration=2.75)
    recorded: list[float | None] = []
    breaker.add_listener(lambda e: recorded.append(e.duration))
    entered = {name: asyncio.Event() for name in "ab"}
    leave = {name: asyncio.Event() for name in "ab"}

    async def guarded(name: str) -> None:
        async with breaker:
            entered[name].set()
            await leave[name].wait()

    async def scenario() -> None:
        tasks = {"a": asyncio.create_task(guarded("a"))}
        await entered["a"].wait()
        clock.advance(1.0)
        tasks["b"] = asyncio.create_task(guarded("b"))
        await entered["b"].wait()
        clock.advance(2.0)
        leaves_second = "b" if leaves_first == "a" else "a"
        leave[leaves_first].set()
        await tasks[leaves_first]
        clock.advance(0.5)
        leave[leaves_second].set()
        await tasks[leaves_second]

    run(scenario())
    # a entered at 0 and b at 1; the first to leave does so at 3, the other at 3.5.
    assert recorded == expected
    assert breaker.metrics().slow_calls == 1


def test_nested_context_managers_on_one_breaker_record_both_blocks(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, window_size=8)
    durations: list[float | None] = []
    breaker.add_listener(lambda e: durations.append(e.duration))

    async def scenario() -> None:
        async with breaker:
            clock.advance(1.0)
            async with breaker:
                clock.advance(2.0)

    run(scenario())
    assert durations == [2.0, 3.0]


# -- registry --------------------------------------------------------------------------


def test_registry_builds_named_breakers_from_per_dependency_tables(run: Run) -> None:
    clock = FakeClock()
    registry = BreakerRegistry.from_table(
        {
            "default": {"window_size": 5, "minimum_calls": 5, "wait_duration_open": 3},
            "store": {"failure_rate_threshold": 20, "window_type": "time", "window_size": 30},
        },
        clock=clock,
    )
    store = registry["store"]
    assert store is registry.get("store")
    assert store.config.window_type is WindowType.TIME
    assert (store.config.window_size, store.config.minimum_calls) == (30, 5)
    assert store.config.failure_rate_threshold == 20.0
    assert store.config.wait_duration_open == 3.0
    webhooks = registry["webhooks"]
    assert webhooks.config == registry.config_for("webhooks")
    assert webhooks.config.window_size == 5
    assert set(registry.metrics()) == {"store", "webhooks"}

    async def scenario() -> None:
        await fail(store, clock)
        await fail(webhooks, clock)

    run(scenario())
    assert registry.metrics()["store"].failed_calls == 1


def test_registry_listeners_hear_every_breaker_present_and_future(run: Run) -> None:
    clock = FakeClock()
    registry = BreakerRegistry({"store": BreakerConfig(**SMALL)}, clock=clock)
    names: list[str] = []
    registry.add_listener(lambda e: names.append(e.name))

    async def scenario() -> None:
        await succeed(registry["store"], clock)
        await succeed(registry["redis"], clock)

    run(scenario())
    assert names == ["store", "redis"]
    assert len(registry) == 2


# -- configuration (pure validation: no event loop involved) -------------------------------


@pytest.mark.parametrize(
    ("settings", "field", "hint"),
    [
        ({"window_type": "sliding"}, "window_type", "'count' or 'time'"),
        ({"window_size": 0}, "window_size", "at least 1"),
        ({"window_size": 2.5}, "window_size", "whole number"),
        ({"window_size": 10, "minimum_calls": 11}, "minimum_calls", "lower minimum_calls"),
        ({"minimum_calls": 0}, "minimum_calls", "at least 1"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold", "(0, 100]"),
        ({"failure_rate_threshold": 150}, "failure_rate_threshold", "(0, 100]"),
        ({"slow_call_rate_threshold": -5}, "slow_call_rate_threshold", "(0, 100]"),
        ({"slow_call_duration": 0}, "slow_call_duration", "positive"),
        ({"wait_duration_open": float("inf")}, "wait_duration_open", "positive"),
        ({"open_jitter": 1.0}, "open_jitter", "[0, 1)"),
        ({"open_backoff_multiplier": 0.5}, "open_backoff_multiplier", ">= 1"),
        ({"open_backoff_multiplier": 2.0}, "max_wait_duration_open", "must be set"),
        ({"max_wait_duration_open": 5.0}, "max_wait_duration_open", "at least wait_duration"),
        ({"permitted_calls_in_half_open": 0}, "permitted_calls_in_half_open", "at least 1"),
        ({"timeout": 0}, "timeout", "or None"),
        ({"record_exceptions": ValueError}, "record_exceptions", "tuple of exception"),
        ({"ignore_exceptions": ("ValueError",)}, "ignore_exceptions", "tuple of exception"),
        ({"record_predicate": 3}, "record_predicate", "callable"),
        ({"failure_rate_threshold": True}, "failure_rate_threshold", "percentage"),
    ],
)
def test_invalid_config_names_the_field_and_what_to_change(
    settings: dict[str, Any], field: str, hint: str
) -> None:
    with pytest.raises(BreakerConfigError) as info:
        BreakerConfig(**settings)
    assert info.value.field == field
    assert field in str(info.value)
    assert hint in str(info.value)
    assert isinstance(info.value, ValueError)


def test_time_window_may_require_more_calls_than_it_has_seconds() -> None:
    config = BreakerConfig(window_type=WindowType.TIME, window_size=10, minimum_calls=500)
    assert config.minimum_calls == 500


def test_config_from_a_file_names_the_section_and_suggests_the_key() -> None:
    with pytest.raises(BreakerConfigError) as info:
        BreakerRegistry.from_table({"store": {"minimum_call": 5}})
    assert info.value.field == "breakers.store.minimum_call"
    assert "did you mean 'minimum_calls'" in str(info.value)

    with pytest.raises(BreakerConfigError) as info:
        BreakerRegistry.from_table({"default": {"window_size": 0}})
    assert info.value.field == "breakers.default.window_size"
    assert "[breakers.default]" in str(info.value)

    with pytest.raises(BreakerConfigError) as info:
        BreakerConfig.from_mapping({"ignore_exceptions": []}, section="breakers.redis")
    assert "set it in code" in str(info.value)
