"""CircuitBreaker under a burst of simultaneous calls, on stdlib asyncio and on uvloop.

A thousand tasks are started at once; the trial calls that get in wait on a gate, so
the test decides exactly when they complete. The clock is fake: the assertions are
about counts and states, never about time.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import pytest

from bluewren.breaker import BreakerConfig, BreakerState, CircuitBreaker, EventKind
from bluewren.errors import CircuitOpenError
from conftest import Run

T = TypeVar("T")
BURST = 1000


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Down(ConnectionError):
    pass


def make(clock: FakeClock, permits: int, **settings: Any) -> CircuitBreaker:
    config = BreakerConfig(
        window_size=settings.pop("window_size", 2),
        minimum_calls=settings.pop("minimum_calls", 2),
        failure_rate_threshold=50.0,
        slow_call_duration=1.0,
        wait_duration_open=10.0,
        permitted_calls_in_half_open=permits,
        **settings,
    )
    return CircuitBreaker("store", config, clock=clock)


async def open_then_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    async def down() -> None:
        raise Down("store unreachable")

    for _ in range(breaker.config.minimum_calls):
        with pytest.raises(Down):
            await breaker.call(down)
    assert breaker.state is BreakerState.OPEN
    clock.now += breaker.config.wait_duration_open
    assert breaker.state is BreakerState.HALF_OPEN


class Burst:
    """BURST calls started at once; those admitted block until released."""

    def __init__(self, breaker: CircuitBreaker, size: int = BURST) -> None:
        self.gates: list[asyncio.Future[BaseException | None]] = []
        loop = asyncio.get_running_loop()

        async def work() -> str:
            gate: asyncio.Future[BaseException | None] = loop.create_future()
            self.gates.append(gate)
            error = await gate
            if error is not None:
                raise error
            return "ok"

        self.tasks = [asyncio.ensure_future(breaker.call(work)) for _ in range(size)]

    async def settle(self) -> None:
        # Every task takes its first step (admitted or rejected) in the next loop pass;
        # a few more passes show that nothing else gets in afterwards.
        for _ in range(5):
            await asyncio.sleep(0)

    def rejections(self) -> list[CircuitOpenError]:
        done = [t for t in self.tasks if t.done()]
        errors = [t.exception() for t in done]
        assert all(isinstance(e, CircuitOpenError) for e in errors), errors[:3]
        return [e for e in errors if isinstance(e, CircuitOpenError)]

    def release(self, index: int, error: BaseException | None = None) -> None:
        self.gates[index].set_result(error)

    async def finish(self) -> list[object]:
        return await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.mark.parametrize("permits", [1, 3, 10])
def test_half_open_admits_exactly_k_of_a_thousand_simultaneous_calls(
    run: Run, permits: int
) -> None:
    clock = FakeClock()
    breaker = make(clock, permits)

    async def scenario() -> None:
        await open_then_half_open(breaker, clock)
        burst = Burst(breaker)
        await burst.settle()
        assert len(burst.gates) == permits
        rejections = burst.rejections()
        assert len(rejections) == BURST - permits
        assert all(e.retry_after > 0 for e in rejections)
        assert all(e.name == "store" and e.state == BreakerState.HALF_OPEN for e in rejections)
        assert breaker.state is BreakerState.HALF_OPEN
        for i in range(permits):
            burst.release(i)
        results = await burst.finish()
        assert results.count("ok") == permits

    run(scenario())
    assert breaker.state is BreakerState.CLOSED
    assert breaker.metrics().not_permitted_calls == BURST - permits


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(4, BreakerState.CLOSED), (5, BreakerState.OPEN), (10, BreakerState.OPEN)],
)
def test_half_open_decides_on_the_k_trials_once_all_complete(
    run: Run, failures: int, expected: BreakerState
) -> None:
    clock = FakeClock()
    breaker = make(clock, 10)

    async def scenario() -> None:
        await open_then_half_open(breaker, clock)
        burst = Burst(breaker)
        await burst.settle()
        # Complete the trials out of order, failures interleaved with successes.
        order = list(range(1, 10, 2)) + list(range(0, 10, 2))
        for n, i in enumerate(order):
            burst.release(i, Down("still down") if n < failures else None)
            await asyncio.sleep(0)
            if n < 9:
                assert breaker.state is BreakerState.HALF_OPEN
        await burst.finish()

    run(scenario())
    assert breaker.state is expected


def test_reopened_breaker_rejects_a_whole_burst_with_the_time_left(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, 3)

    async def scenario() -> None:
        await open_then_half_open(breaker, clock)
        trials = Burst(breaker, 3)
        await trials.settle()
        for i in range(3):
            trials.release(i, Down("still down"))
        await trials.finish()
        assert breaker.state is BreakerState.OPEN
        clock.now += 4.0
        burst = Burst(breaker)
        await burst.settle()
        assert burst.gates == []
        assert {e.retry_after for e in burst.rejections()} == {6.0}

    run(scenario())


def test_cancelled_trials_hand_their_permits_to_the_next_burst(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, 5)

    async def scenario() -> None:
        await open_then_half_open(breaker, clock)
        first = Burst(breaker)
        await first.settle()
        admitted = [t for t in first.tasks if not t.done()]
        assert len(admitted) == 5
        admitted[0].cancel()
        admitted[1].cancel()
        await first.settle()
        second = Burst(breaker)
        await second.settle()
        assert len(second.gates) == 2
        assert len(second.rejections()) == BURST - 2
        for gate in first.gates[2:] + second.gates:
            if not gate.done():
                gate.set_result(None)
        await first.finish()
        await second.finish()

    run(scenario())
    assert breaker.state is BreakerState.CLOSED


def test_completed_trials_keep_their_permits_until_the_decision(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, 5)

    async def scenario() -> None:
        await open_then_half_open(breaker, clock)
        first = Burst(breaker, 5)
        await first.settle()
        for i in range(3):
            first.release(i)
        await first.settle()
        second = Burst(breaker)
        await second.settle()
        assert second.gates == []
        assert len(second.rejections()) == BURST
        first.release(3)
        first.release(4)
        await first.finish()

    run(scenario())
    assert breaker.state is BreakerState.CLOSED


def test_slow_trials_reopen_the_breaker(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, 4)

    async def scenario() -> None:
        await open_then_half_open(breaker, clock)
        burst = Burst(breaker)
        await burst.settle()
        clock.now += 1.0  # every trial in flight is now slow
        for i in range(4):
            burst.release(i)
        await burst.finish()

    run(scenario())
    assert breaker.state is BreakerState.OPEN
    assert breaker.metrics().slow_call_rate == 100.0


def test_closed_breaker_admits_a_whole_burst_and_opens_exactly_once(run: Run) -> None:
    clock = FakeClock()
    breaker = make(clock, 5, window_size=50, minimum_calls=50)
    transitions: list[tuple[BreakerState, BreakerState]] = []
    breaker.on_state_change(lambda old, new: transitions.append((old, new)))
    kinds: list[EventKind] = []
    breaker.add_listener(lambda e: kinds.append(e.kind))

    async def scenario() -> None:
        burst = Burst(breaker)
        await burst.settle()
        assert len(burst.gates) == BURST
        for i in range(BURST):
            burst.release(i, Down("down"))
        results = await burst.finish()
        assert all(isinstance(r, Down) for r in results)

    run(scenario())
    assert transitions == [(BreakerState.CLOSED, BreakerState.OPEN)]
    assert kinds.count(EventKind.FAILURE) == BURST
    snapshot = breaker.metrics()
    assert snapshot.failed_calls_total == BURST
    assert snapshot.buffered_calls == 50  # calls finishing after the opening stay out
