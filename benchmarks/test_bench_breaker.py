"""What a closed CircuitBreaker costs per call, against a bare ``await``.

Each benchmark round awaits the same trivial coroutine CALLS times inside one
``loop.run_until_complete``, so event-loop start-up is paid once per round, not per call;
divide a round's time by CALLS for the cost of one call. Every variant runs on stdlib
asyncio and on uvloop, and the variants of one loop share a group so they print side by
side::

    python -m pytest benchmarks/test_bench_breaker.py --benchmark-only
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
import uvloop
from pytest_benchmark.fixture import BenchmarkFixture

from bluewren.breaker import BreakerConfig, BreakerState, CircuitBreaker, WindowType

CALLS = 1000

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    name: str = request.param
    event_loop = LOOPS[name]()
    yield name, event_loop
    event_loop.close()


async def answer() -> int:
    return 42


def bench(
    benchmark: BenchmarkFixture,
    loop: tuple[str, asyncio.AbstractEventLoop],
    batch: Callable[[], Awaitable[int]],
) -> None:
    name, event_loop = loop
    benchmark.group = f"breaker closed-state overhead on {name} ({CALLS} awaits per round)"
    benchmark.extra_info["awaits_per_round"] = CALLS

    def one_round() -> int:
        return event_loop.run_until_complete(batch())

    total = benchmark(one_round)
    assert total == 42 * CALLS


def closed_breaker(**settings: object) -> CircuitBreaker:
    return CircuitBreaker("bench", BreakerConfig(**settings))  # type: ignore[arg-type]


def still_closed(breaker: CircuitBreaker) -> None:
    snapshot = breaker.metrics()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.successful_calls_total > 0


def test_bare_await(
    benchmark: BenchmarkFixture, loop: tuple[str, asyncio.AbstractEventLoop]
) -> None:
    async def batch() -> int:
        total = 0
        for _ in range(CALLS):
            total += await answer()
        return total

    bench(benchmark, loop, batch)


def test_breaker_call(
    benchmark: BenchmarkFixture, loop: tuple[str, asyncio.AbstractEventLoop]
) -> None:
    breaker = closed_breaker()

    async def batch() -> int:
        call = breaker.call
        total = 0
        for _ in range(CALLS):
            total += await call(answer)
        return total

    bench(benchmark, loop, batch)
    still_closed(breaker)


def test_breaker_call_time_window(
    benchmark: BenchmarkFixture, loop: tuple[str, asyncio.AbstractEventLoop]
) -> None:
    breaker = closed_breaker(window_type=WindowType.TIME, window_size=60)

    async def batch() -> int:
        call = breaker.call
        total = 0
        for _ in range(CALLS):
            total += await call(answer)
        return total

    bench(benchmark, loop, batch)
    still_closed(breaker)


def test_breaker_decorator(
    benchmark: BenchmarkFixture, loop: tuple[str, asyncio.AbstractEventLoop]
) -> None:
    breaker = closed_breaker()
    guarded = breaker(answer)

    async def batch() -> int:
        total = 0
        for _ in range(CALLS):
            total += await guarded()
        return total

    bench(benchmark, loop, batch)
    still_closed(breaker)


def test_breaker_async_with(
    benchmark: BenchmarkFixture, loop: tuple[str, asyncio.AbstractEventLoop]
) -> None:
    breaker = closed_breaker()

    async def batch() -> int:
        total = 0
        for _ in range(CALLS):
            async with breaker:
                total += await answer()
        return total

    bench(benchmark, loop, batch)
    still_closed(breaker)


def test_bare_await_under_asyncio_timeout(
    benchmark: BenchmarkFixture, loop: tuple[str, asyncio.AbstractEventLoop]
) -> None:
    """The baseline for the breaker with a timeout: what asyncio.timeout costs alone."""

    async def batch() -> int:
        total = 0
        for _ in range(CALLS):
            async with asyncio.timeout(30.0):
                total += await answer()
        return total

    bench(benchmark, loop, batch)


def test_breaker_call_with_timeout(
    benchmark: BenchmarkFixture, loop: tuple[str, asyncio.AbstractEventLoop]
) -> None:
    breaker = closed_breaker(timeout=30.0)

    async def batch() -> int:
        call = breaker.call
        total = 0
        for _ in range(CALLS):
            total += await call(answer)
        return total

    bench(benchmark, loop, batch)
    still_closed(breaker)
