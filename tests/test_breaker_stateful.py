"""CircuitBreaker (count window) checked against a pure model of its state machine.

Hypothesis drives random sequences of calls (fast or slow; succeeding, failing, raising
an ignored or an unrecorded exception), calls held in flight and later finished or
cancelled, clock advances and manual controls, and after every step compares the
breaker's state, metrics and rejections with the model's. The machine runs on stdlib
asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import uvloop
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bluewren.breaker import BreakerConfig, BreakerState, CircuitBreaker
from bluewren.errors import CircuitOpenError

S = BreakerState
SLOW_CALL = 1.0
WAIT = 4.0
OUTCOMES = ("success", "failure", "ignored", "unrecorded")


class Down(ConnectionError):
    """Recorded as a failure."""


class Ignored(Exception):
    """In ignore_exceptions: never counted."""


class Unrecorded(LookupError):
    """Neither recorded nor ignored: counts as a success."""


@dataclass
class Model:
    """The breaker's rules, written as plainly as possible."""

    window_size: int
    minimum_calls: int
    failure_pct: float
    slow_pct: float
    permits: int
    multiplier: float
    max_wait: float | None
    state: BreakerState = S.CLOSED
    epoch: int = 0
    window: list[tuple[bool, bool]] = field(default_factory=list)
    trials: list[tuple[bool, bool]] = field(default_factory=list)
    trials_in_flight: int = 0
    showing_trials: bool = False
    reopens: int = 0
    open_until: float = 0.0
    not_permitted: int = 0
    successes: int = 0
    failures: int = 0
    ignored: int = 0

    def enter(self, state: BreakerState, now: float) -> None:
        self.state = state
        self.epoch += 1
        if state is S.CLOSED:
            self.window = []
            self.reopens = 0
            self.showing_trials = False
        elif state is S.OPEN:
            wait = WAIT * self.multiplier**self.reopens
            self.open_until = now + min(wait, self.max_wait or math.inf)
        elif state is S.HALF_OPEN:
            self.trials = []
            self.trials_in_flight = 0
            self.showing_trials = True

    def poll(self, now: float) -> None:
        if self.state is S.OPEN and now >= self.open_until:
            self.enter(S.HALF_OPEN, now)

    def admit(self, now: float) -> tuple[int | None, float | None]:
        """(token, None) if permitted, else (None, retry_after). Token None: unrecorded."""
        self.poll(now)
        if self.state is S.CLOSED:
            return self.epoch, None
        if self.state is S.DISABLED:
            return None, None
        if self.state is S.HALF_OPEN and self.trials_in_flight + len(self.trials) < self.permits:
            self.trials_in_flight += 1
            return self.epoch, None
        self.not_permitted += 1
        if self.state is S.OPEN:
            return None, self.open_until - now
        if self.state is S.HALF_OPEN:
            return None, SLOW_CALL
        return None, WAIT

    def would_reject(self, now: float) -> bool:
        if self.state is S.OPEN:
            return now < self.open_until
        if self.state is S.FORCED_OPEN:
            return True
        return (
            self.state is S.HALF_OPEN and self.trials_in_flight + len(self.trials) >= self.permits
        )

    def over_threshold(self, outcomes: list[tuple[bool, bool]]) -> bool:
        n = len(outcomes)
        failed = sum(f for f, _ in outcomes)
        slow = sum(s for _, s in outcomes)
        return 100 * failed / n >= self.failure_pct or 100 * slow / n >= self.slow_pct

    def finish(self, token: int | None, outcome: str, duration: float, now: float) -> None:
        if token is None:
            return
        if outcome in ("ignored", "cancelled"):
            self.ignored += 1
            if token == self.epoch and self.state is S.HALF_OPEN:
                self.trials_in_flight -= 1
            return
        failed = outcome == "failure"
        slow = duration >= SLOW_CALL
        if failed:
            self.failures += 1
        else:
            self.successes += 1
        if token != self.epoch:
            return
        if self.state is S.CLOSED:
            self.window = [*self.window, (failed, slow)][-self.window_size :]
            if len(self.window) >= self.minimum_calls and self.over_threshold(self.window):
                self.enter(S.OPEN, now)
        else:
            assert self.state is S.HALF_OPEN
            self.trials_in_flight -= 1
            self.trials.append((failed, slow))
            if len(self.trials) == self.permits:
                if self.over_threshold(self.trials):
                    self.reopens += 1
                    self.enter(S.OPEN, now)
                else:
                    self.enter(S.CLOSED, now)

    def reset(self, now: float) -> None:
        self.not_permitted = self.successes = self.failures = self.ignored = 0
        if self.state is S.CLOSED:
            self.epoch += 1
            self.window = []
            self.reopens = 0
        else:
            self.enter(S.CLOSED, now)

    def shown(self) -> tuple[int, int, int]:
        outcomes = self.trials if self.showing_trials else self.window
        return len(outcomes), sum(f for f, _ in outcomes), sum(s for _, s in outcomes)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@dataclass
class InFlight:
    task: asyncio.Task[str]
    outcome: asyncio.Future[str]
    token: int | None
    started: float


async def _settle(task: asyncio.Future[str]) -> None:
    await asyncio.wait([task])


class BreakerMachine(RuleBasedStateMachine):
    """Runs the breaker on stdlib asyncio; a subclass runs it on uvloop."""

    loop_factory: Callable[[], asyncio.AbstractEventLoop] = staticmethod(asyncio.new_event_loop)

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner(loop_factory=type(self).loop_factory)
        self.clock = Clock()
        self.in_flight: list[InFlight] = []

    def teardown(self) -> None:
        for call in self.in_flight:
            call.task.cancel()
        if self.in_flight:
            self.runner.run(asyncio.wait([c.task for c in self.in_flight]))
        self.runner.close()

    @initialize(
        window_size=st.integers(1, 6),
        minimum_fraction=st.floats(0.0, 1.0),
        failure_pct=st.sampled_from([25.0, 50.0, 75.0, 100.0]),
        slow_pct=st.sampled_from([50.0, 100.0]),
        permits=st.integers(1, 3),
        backoff=st.booleans(),
    )
    def configure(
        self,
        window_size: int,
        minimum_fraction: float,
        failure_pct: float,
        slow_pct: float,
        permits: int,
        backoff: bool,
    ) -> None:
        minimum_calls = max(1, math.ceil(window_size * minimum_fraction))
        multiplier, max_wait = (2.0, 3.5 * WAIT) if backoff else (1.0, None)
        self.model = Model(
            window_size=window_size,
            minimum_calls=minimum_calls,
            failure_pct=failure_pct,
            slow_pct=slow_pct,
            permits=permits,
            multiplier=multiplier,
            max_wait=max_wait,
        )
        config = BreakerConfig(
            window_size=window_size,
            minimum_calls=minimum_calls,
            failure_rate_threshold=failure_pct,
            slow_call_rate_threshold=slow_pct,
            slow_call_duration=SLOW_CALL,
            wait_duration_open=WAIT,
            open_backoff_multiplier=multiplier,
            max_wait_duration_open=max_wait,
            permitted_calls_in_half_open=permits,
            record_exceptions=(Down,),
            ignore_exceptions=(Ignored,),
        )
        self.breaker = CircuitBreaker("dep", config, clock=self.clock)

    # -- calls ---------------------------------------------------------------------------

    def _expect_rejection(self, error: BaseException | None, retry_after: float) -> None:
        assert isinstance(error, CircuitOpenError), error
        assert error.retry_after == pytest.approx(retry_after)
        assert error.retry_after > 0
        assert error.state == self.model.state

    @staticmethod
    def _raise_for(outcome: str) -> str:
        if outcome == "failure":
            raise Down("down")
        if outcome == "ignored":
            raise Ignored("client error")
        if outcome == "unrecorded":
            raise Unrecorded("no such row")
        return "ok"

    @rule(outcome=st.sampled_from(OUTCOMES), slow=st.booleans())
    def call(self, outcome: str, slow: bool) -> None:
        """A call that completes at once, or after the slow-call duration."""
        now = self.clock.now
        token, retry_after = self.model.admit(now)
        entered = False

        async def work() -> str:
            nonlocal entered
            entered = True
            if slow:
                self.clock.now += SLOW_CALL
            return self._raise_for(outcome)

        async def attempt() -> BaseException | None:
            try:
                await self.breaker.call(work)
            except Exception as exc:
                return exc
            return None

        error = self.runner.run(attempt())
        if retry_after is not None:
            assert not entered
            self._expect_rejection(error, retry_after)
            return
        assert entered
        self.model.finish(token, outcome, self.clock.now - now, self.clock.now)

    @rule(outcome=st.sampled_from(OUTCOMES), slow=st.booleans(), times=st.integers(2, 4))
    def calls(self, outcome: str, slow: bool, times: int) -> None:
        """Several calls in a row with the same outcome."""
        for _ in range(times):
            self.call(outcome=outcome, slow=slow)

    @precondition(lambda self: len(self.in_flight) < 6)
    @rule()
    def begin_call(self) -> None:
        """A call that stays in flight until a later step finishes or cancels it."""
        loop = self.runner.get_loop()
        outcome: asyncio.Future[str] = loop.create_future()

        async def work() -> str:
            return self._raise_for(await outcome)

        now = self.clock.now
        token, retry_after = self.model.admit(now)
        task = loop.create_task(self.breaker.call(work))
        self.runner.run(asyncio.sleep(0))
        if retry_after is not None:
            assert task.done()
            self._expect_rejection(task.exception(), retry_after)
            return
        assert not task.done()
        self.in_flight.append(InFlight(task, outcome, token, now))

    @precondition(lambda self: bool(self.in_flight))
    @rule(pick=st.integers(0, 5), outcome=st.sampled_from(OUTCOMES))
    def finish_call(self, pick: int, outcome: str) -> None:
        call = self.in_flight.pop(pick % len(self.in_flight))
        call.outcome.set_result(outcome)
        self.runner.run(_settle(call.task))
        assert (call.task.exception() is None) == (outcome == "success")
        now = self.clock.now
        self.model.finish(call.token, outcome, now - call.started, now)

    @precondition(lambda self: bool(self.in_flight))
    @rule(pick=st.integers(0, 5))
    def cancel_call(self, pick: int) -> None:
        call = self.in_flight.pop(pick % len(self.in_flight))
        call.task.cancel()
        self.runner.run(_settle(call.task))
        assert call.task.cancelled()
        self.model.finish(call.token, "cancelled", 0.0, self.clock.now)

    @precondition(lambda self: self.model.would_reject(self.clock.now))
    @rule()
    def call_while_not_admitting(self) -> None:
        """Open, forced open, or half-open with every permit taken: rejected at once."""
        self.call(outcome="success", slow=False)

    # -- time and operators ----------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.75, 4.0, 8.0, 16.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(action=st.sampled_from(["force_open", "disable", "transition_to_closed", "reset"]))
    def operator(self, action: str) -> None:
        getattr(self.breaker, action)()
        now = self.clock.now
        target = {
            "force_open": S.FORCED_OPEN,
            "disable": S.DISABLED,
            "transition_to_closed": S.CLOSED,
        }
        if action == "reset":
            self.model.reset(now)
        elif self.model.state is not target[action]:
            self.model.enter(target[action], now)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def state_matches_model(self) -> None:
        self.model.poll(self.clock.now)
        assert self.breaker.state is self.model.state

    @invariant()
    def metrics_match_model(self) -> None:
        self.model.poll(self.clock.now)
        snapshot = self.breaker.metrics()
        assert snapshot.state is self.model.state
        buffered, failed, slow = self.model.shown()
        assert (snapshot.buffered_calls, snapshot.failed_calls, snapshot.slow_calls) == (
            buffered,
            failed,
            slow,
        )
        assert snapshot.not_permitted_calls == self.model.not_permitted
        assert snapshot.successful_calls_total == self.model.successes
        assert snapshot.failed_calls_total == self.model.failures
        assert snapshot.ignored_calls_total == self.model.ignored

    @invariant()
    def half_open_never_exceeds_its_trial_permits(self) -> None:
        model = self.model
        if model.state is S.HALF_OPEN:
            current = [c for c in self.in_flight if c.token == model.epoch]
            assert len(current) == model.trials_in_flight
            assert model.trials_in_flight + len(model.trials) <= model.permits
            assert len(model.trials) < model.permits

    @invariant()
    def closed_window_is_below_threshold_or_minimum(self) -> None:
        model = self.model
        if model.state is S.CLOSED and len(model.window) >= model.minimum_calls:
            assert not model.over_threshold(model.window)


class UvloopBreakerMachine(BreakerMachine):
    loop_factory = staticmethod(uvloop.new_event_loop)


_SETTINGS = settings(max_examples=300, stateful_step_count=50, deadline=None)
BreakerMachine.TestCase.settings = _SETTINGS
UvloopBreakerMachine.TestCase.settings = _SETTINGS

TestBreakerAgainstModelOnAsyncio = BreakerMachine.TestCase
TestBreakerAgainstModelOnUvloop = UvloopBreakerMachine.TestCase
