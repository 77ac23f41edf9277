"""Circuit breakers for calls to anything that can fail or stall.

A :class:`CircuitBreaker` wraps calls to one dependency (the store, Redis, a webhook)
and stops calling it while it is unhealthy, so a failing dependency costs callers a fast
:class:`~bluewren.errors.CircuitOpenError` instead of a pile-up of stalled tasks. The
semantics follow resilience4j.

State machine::

                  failure or slow-call rate >= its threshold
                  (once the window holds minimum_calls calls)
      +--------+ -----------------------------------------> +------+
      | CLOSED |                                            | OPEN |  rejects every call
      +--------+                                            +------+
          ^                                                  |    ^
          |                          wait_duration_open      |    |  the K trials came in
          |                          (+/- jitter) elapsed    v    |  at or over a threshold;
          |     the K trials came in under              +-----------+  the next wait grows
          +-------------------------------------------- | HALF_OPEN |  by the backoff
                both thresholds                         +-----------+
                                                        admits K trial calls,
                                                        rejects the rest at once

      force_open()                       -> FORCED_OPEN: rejects every call
      disable()                          -> DISABLED: permits every call, records nothing
      reset(), transition_to_closed()    -> CLOSED, from any state

* CLOSED: every call is permitted. Its outcome goes into a sliding window: the last
  ``window_size`` calls (count window) or the calls of the last ``window_size`` seconds
  (time window, one-second buckets). Once the window holds at least ``minimum_calls``
  calls, the breaker opens when the failure rate reaches ``failure_rate_threshold`` or
  the rate of calls that took ``slow_call_duration`` or longer reaches
  ``slow_call_rate_threshold`` (both in percent). Both rates are kept as running counts,
  so recording an outcome costs O(1).
* OPEN: every call is rejected, with ``retry_after`` set to the time left. Once
  ``wait_duration_open`` (spread by ``open_jitter``) has elapsed, the next call or state
  read moves the breaker to HALF_OPEN.
* HALF_OPEN: ``permitted_calls_in_half_open`` (K) trial calls are admitted; every other
  call is rejected at once, with ``retry_after`` set to the call timeout (or, without
  one, ``slow_call_duration``): about when the trials will have decided. A trial that is
  cancelled or raises an ignored exception gives its permit back. When K trials have
  completed, the breaker closes, or re-opens if their failure or slow-call rate reaches
  its threshold. Each consecutive re-open multiplies the wait by
  ``open_backoff_multiplier``, up to ``max_wait_duration_open``.
* FORCED_OPEN and DISABLED last until an operator calls ``reset()``,
  ``transition_to_closed()``, ``force_open()`` or ``disable()``. A forced-open
  rejection's ``retry_after`` is ``wait_duration_open``, as a hint.

A call's exception is classified as a failure (an instance of ``record_exceptions`` that
``record_predicate``, if given, accepts), as ignored (an instance of ``ignore_exceptions``,
``asyncio.CancelledError``, or a ``BaseException`` that is not an ``Exception``) or
otherwise as a success: the dependency answered, and the error is the caller's business.
An ignored call is not counted and gives its half-open permit back. A call that runs past
``timeout`` is cancelled, counted as a failure and reported as
:class:`~bluewren.errors.CallTimeoutError`.

A call that was permitted in one state and completes after the breaker has moved on
(for example a slow call from CLOSED finishing after the breaker opened) updates the
totals but not the new state's window. The breaker belongs to one event loop and is not
thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import enum
import functools
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import Any, Final, NoReturn, ParamSpec, TypeAlias, TypeVar

from bluewren.errors import (
    BlueWrenError,
    BreakerConfigError,
    CallTimeoutError,
    CircuitOpenError,
)

__all__ = [
    "BlueWrenError",
    "BreakerConfig",
    "BreakerConfigError",
    "BreakerEvent",
    "BreakerGuard",
    "BreakerMetrics",
    "BreakerRegistry",
    "BreakerState",
    "CallTimeoutError",
    "CircuitBreaker",
    "CircuitOpenError",
    "EventKind",
    "WindowType",
]

P = ParamSpec("P")
R = TypeVar("R")

_log = logging.getLogger("bluewren.breaker")


class BreakerState(enum.StrEnum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    """Calls are permitted and their outcomes recorded."""
    OPEN = "open"
    """Calls are rejected until the open wait has elapsed."""
    HALF_OPEN = "half_open"
    """A limited number of trial calls decide whether to close or re-open."""
    FORCED_OPEN = "forced_open"
    """Calls are rejected until an operator changes the state."""
    DISABLED = "disabled"
    """Calls are permitted and nothing is recorded, until an operator changes the state."""


class WindowType(enum.StrEnum):
    """How the closed state's sliding window is measured."""

    COUNT = "count"
    """The last ``window_size`` calls."""
    TIME = "time"
    """The calls of the last ``window_size`` seconds, in one-second buckets."""


class EventKind(enum.StrEnum):
    """What a :class:`BreakerEvent` reports."""

    STATE_CHANGE = "state_change"
    """The breaker moved from ``previous_state`` to ``state``."""
    SUCCESS = "success"
    """A call completed and counted as a success."""
    FAILURE = "failure"
    """A call completed and counted as a failure."""
    IGNORED = "ignored"
    """A call completed and counted as neither (cancelled or an ignored exception)."""
    REJECTED = "rejected"
    """A call was refused with CircuitOpenError."""
    RESET = "reset"
    """reset() returned the breaker to a fresh closed state."""


_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_FORCED_OPEN: Final = BreakerState.FORCED_OPEN
_DISABLED: Final = BreakerState.DISABLED

# Outcome codes stored in the windows: one bit each.
_FAILED: Final = 1
_SLOW: Final = 2

# Fields that name Python objects and so cannot come from a config file.
_CODE_ONLY_FIELDS: Final = frozenset({"record_exceptions", "ignore_exceptions", "record_predicate"})


def _number(name: str, value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BreakerConfigError(name, f"{name} must be {what}, got {value!r}")
    return float(value)


def _integer(name: str, value: object, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BreakerConfigError(name, f"{name} must be {what}, got {value!r}")
    return value


def _exception_types(name: str, value: object) -> tuple[type[BaseException], ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise BreakerConfigError(
            name,
            f"{name} must be a tuple of exception classes, e.g. (ConnectionError,), got {value!r}",
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """The settings of one circuit breaker, validated on construction.

    Defaults follow resilience4j. Durations are in seconds, rates in percent. An invalid
    value raises :class:`~bluewren.errors.BreakerConfigError` whose ``field`` names the
    setting and whose message says what to change.
    """

    window_type: WindowType = WindowType.COUNT
    """``count`` (the last ``window_size`` calls) or ``time`` (the last ``window_size`` s)."""
    window_size: int = 100
    """Calls (count window) or whole seconds (time window) in the sliding window."""
    minimum_calls: int = 100
    """Calls the window must hold before any rate is computed."""
    failure_rate_threshold: float = 50.0
    """Failure rate, in percent, at or above which the breaker opens."""
    slow_call_rate_threshold: float = 100.0
    """Slow-call rate, in percent, at or above which the breaker opens."""
    slow_call_duration: float = 60.0
    """A call taking this long or longer is slow."""
    wait_duration_open: float = 60.0
    """Time spent open before trial calls are let through."""
    open_jitter: float = 0.0
    """Spread of the open wait, as a fraction: the wait is drawn from ``w*(1 +- jitter)``."""
    open_backoff_multiplier: float = 1.0
    """Factor applied to the open wait on each consecutive re-open from half-open."""
    max_wait_duration_open: float | None = None
    """Cap on the open wait grown by backoff; required when the multiplier exceeds 1."""
    permitted_calls_in_half_open: int = 10
    """Number of concurrent trial calls in half-open; they decide close or re-open."""
    timeout: float | None = None
    """Per-call timeout; a call that runs past it is cancelled and counted as a failure."""
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    """Exception types counted as failures."""
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    """Exception types never counted (e.g. client errors); they win over record_exceptions."""
    record_predicate: Callable[[BaseException], bool] | None = None
    """If given, a recorded exception counts as a failure only when this returns True."""

    def __post_init__(self) -> None:
        # A frozen dataclass: normalised values are written through object.__setattr__.
        put = functools.partial(object.__setattr__, self)
        window_type: object = self.window_type
        if not isinstance(window_type, WindowType):
            try:
                window_type = WindowType(str(window_type))
            except ValueError:
                raise BreakerConfigError(
                    "window_type", f"window_type must be 'count' or 'time', got {window_type!r}"
                ) from None
            put("window_type", window_type)
        unit = "calls" if window_type is WindowType.COUNT else "seconds"
        window_size = _integer(
            "window_size", self.window_size, 1, f"a whole number of {unit}, at least 1"
        )
        minimum_calls = _integer(
            "minimum_calls", self.minimum_calls, 1, "a whole number of calls, at least 1"
        )
        if window_type is WindowType.COUNT and minimum_calls > window_size:
            raise BreakerConfigError(
                "minimum_calls",
                f"minimum_calls ({minimum_calls}) exceeds window_size ({window_size}) of a "
                f"count window, so no rate would ever be computed; lower minimum_calls or "
                f"raise window_size",
            )
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = _number(name, getattr(self, name), "a percentage in (0, 100], e.g. 50")
            if not 0.0 < value <= 100.0:
                raise BreakerConfigError(
                    name, f"{name} must be a percentage in (0, 100], e.g. 50, got {value!r}"
                )
            put(name, value)
        for name in ("slow_call_duration", "wait_duration_open"):
            value = _number(name, getattr(self, name), "a positive number of seconds")
            if value <= 0.0:
                raise BreakerConfigError(
                    name, f"{name} must be a positive number of seconds, got {value!r}"
                )
            put(name, value)
        jitter = _number("open_jitter", self.open_jitter, "a fraction in [0, 1), e.g. 0.1")
        if not 0.0 <= jitter < 1.0:
            raise BreakerConfigError(
                "open_jitter", f"open_jitter must be a fraction in [0, 1), e.g. 0.1, got {jitter!r}"
            )
        put("open_jitter", jitter)
        multiplier = _number(
            "open_backoff_multiplier", self.open_backoff_multiplier, "a number >= 1, e.g. 2"
        )
        if multiplier < 1.0:
            raise BreakerConfigError(
                "open_backoff_multiplier",
                f"open_backoff_multiplier must be >= 1 (1 turns backoff off), got {multiplier!r}",
            )
        put("open_backoff_multiplier", multiplier)
        if self.max_wait_duration_open is None:
            if multiplier > 1.0:
                raise BreakerConfigError(
                    "max_wait_duration_open",
                    "max_wait_duration_open must be set when open_backoff_multiplier > 1, "
                    "to bound how long the breaker stays open; e.g. 10 * wait_duration_open",
                )
        else:
            cap = _number(
                "max_wait_duration_open", self.max_wait_duration_open, "a number of seconds"
            )
            if cap < self.wait_duration_open:
                raise BreakerConfigError(
                    "max_wait_duration_open",
                    f"max_wait_duration_open ({cap!r}) is below wait_duration_open "
                    f"({self.wait_duration_open!r}); raise it to at least wait_duration_open",
                )
            put("max_wait_duration_open", cap)
        _integer(
            "permitted_calls_in_half_open",
            self.permitted_calls_in_half_open,
            1,
            "a whole number of trial calls, at least 1",
        )
        if self.timeout is not None:
            timeout = _number("timeout", self.timeout, "a positive number of seconds or None")
            if timeout <= 0.0:
                raise BreakerConfigError(
                    "timeout",
                    f"timeout must be a positive number of seconds, or None for no timeout, "
                    f"got {timeout!r}",
                )
            put("timeout", timeout)
        _exception_types("record_exceptions", self.record_exceptions)
        _exception_types("ignore_exceptions", self.ignore_exceptions)
        if self.record_predicate is not None and not callable(self.record_predicate):
            raise BreakerConfigError(
                "record_predicate",
                f"record_predicate must be a callable taking the exception and returning "
                f"a bool, or None; got {self.record_predicate!r}",
            )

    @classmethod
    def from_mapping(
        cls,
        values: Mapping[str, object],
        *,
        base: BreakerConfig | None = None,
        section: str = "breaker",
    ) -> BreakerConfig:
        """Build a config from a parsed config-file table such as ``[breakers.store]``.

        Keys override ``base`` (the defaults if None). ``section`` prefixes the field
        named in errors, so they point at the offending key in the file. Exception
        classes and the predicate cannot come from a file; set them in code.
        """
        settable = [f.name for f in fields(cls) if f.name not in _CODE_ONLY_FIELDS]
        for key in values:
            if key in settable:
                continue
            if key in _CODE_ONLY_FIELDS:
                hint = f"{key} names Python objects; set it in code, not in the config file"
            else:
                close = difflib.get_close_matches(key, settable, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {settable}"
            raise BreakerConfigError(f"{section}.{key}", f"[{section}] unknown key {key!r}; {hint}")
        changes: dict[str, Any] = dict(values)
        try:
            return replace(base if base is not None else cls(), **changes)
        except BreakerConfigError as exc:
            raise BreakerConfigError(f"{section}.{exc.field}", f"[{section}] {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerEvent:
    """Something that happened to a breaker, as passed to its listeners."""

    kind: EventKind
    """What happened."""
    name: str
    """The breaker's name."""
    state: BreakerState
    """The breaker's state once the event happened."""
    at: float
    """The breaker clock's reading."""
    previous_state: BreakerState | None = None
    """For ``STATE_CHANGE``: the state left."""
    duration: float | None = None
    """For ``SUCCESS``/``FAILURE``/``IGNORED``: how long the call took."""
    slow: bool = False
    """For ``SUCCESS``/``FAILURE``: whether the call counted as slow."""
    error: BaseException | None = None
    """For ``FAILURE``/``IGNORED`` (and successes that raised): the exception."""
    retry_after: float | None = None
    """For ``REJECTED``: the retry hint given to the caller."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerMetrics:
    """A snapshot of a breaker's counters.

    The window fields describe the window currently deciding the state: the sliding
    window while closed (kept while open or forced open), the trial calls while
    half-open (kept after a re-open). Rates are None until that window holds enough
    calls (``minimum_calls``, or all K trials).
    """

    name: str
    """The breaker's name."""
    state: BreakerState
    """The breaker's state."""
    failure_rate: float | None
    """Percent of buffered calls that failed."""
    slow_call_rate: float | None
    """Percent of buffered calls that were slow."""
    buffered_calls: int
    """Calls in the window."""
    failed_calls: int
    """Failed calls in the window."""
    slow_calls: int
    """Slow calls (successful or not) in the window."""
    not_permitted_calls: int
    """Calls rejected since creation or the last reset()."""
    successful_calls_total: int
    """Calls counted as successes since creation or the last reset()."""
    failed_calls_total: int
    """Calls counted as failures since creation or the last reset()."""
    ignored_calls_total: int
    """Calls neither success nor failure since creation or the last reset()."""


class _CountWindow:
    """The last ``size`` outcomes in a ring, with running counts."""

    __slots__ = ("_next", "_ring", "_size", "calls", "failed", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self.clear()

    def clear(self) -> None:
        self._ring = [0] * self._size
        self._next = 0
        self.calls = 0
        self.failed = 0
        self.slow = 0

    def expire(self, now: float) -> None:
        """Count windows never expire."""

    def record(self, now: float, outcome: int) -> None:
        ring = self._ring
        i = self._next
        if self.calls == self._size:
            old = ring[i]
            if old & _FAILED:
                self.failed -= 1
            if old & _SLOW:
                self.slow -= 1
        else:
            self.calls += 1
        ring[i] = outcome
        if outcome & _FAILED:
            self.failed += 1
        if outcome & _SLOW:
            self.slow += 1
        i += 1
        self._next = 0 if i == self._size else i

    def record_success(self, now: float) -> bool:
        """Record a success that was not slow; return whether the rates need checking."""
        ring = self._ring
        i = self._next
        old = ring[i]  # always 0 until the ring is full
        if old:
            ring[i] = 0
            if old & _FAILED:
                self.failed -= 1
            if old & _SLOW:
                self.slow -= 1
        i += 1
        self._next = 0 if i == self._size else i
        calls = self.calls
        if calls == self._size:
            # It replaced an outcome, so neither rate went up.
            return False
        self.calls = calls + 1
        return True


class _TimeWindow:
    """Outcomes of the last ``size`` whole seconds, one bucket per second.

    The window holds the current, partial second and the ``size - 1`` before it, so a
    call is forgotten between ``size - 1`` and ``size`` seconds after it completed.
    """

    __slots__ = ("_b_calls", "_b_failed", "_b_slow", "_head", "_size", "calls", "failed", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self.clear()

    def clear(self) -> None:
        size = self._size
        self._b_calls = [0] * size
        self._b_failed = [0] * size
        self._b_slow = [0] * size
        self._head = -(2**62)
        self.calls = 0
        self.failed = 0
        self.slow = 0

    def expire(self, now: float) -> None:
        second = math.floor(now)
        if second > self._head:
            self._roll(second)

    def _roll(self, second: int) -> None:
        size = self._size
        if second - self._head >= size:
            self.clear()
        else:
            b_calls, b_failed, b_slow = self._b_calls, self._b_failed, self._b_slow
            for s in range(self._head + 1, second + 1):
                i = s % size
                self.calls -= b_calls[i]
                self.failed -= b_failed[i]
                self.slow -= b_slow[i]
                b_calls[i] = b_failed[i] = b_slow[i] = 0
        self._head = second

    def record(self, now: float, outcome: int) -> None:
        second = math.floor(now)
        if second > self._head:
            self._roll(second)
        # A clock that stepped back lands in the newest bucket.
        i = self._head % self._size
        self._b_calls[i] += 1
        self.calls += 1
        if outcome & _FAILED:
            self._b_failed[i] += 1
            self.failed += 1
        if outcome & _SLOW:
            self._b_slow[i] += 1
            self.slow += 1

    def record_success(self, now: float) -> bool:
        """Record a success that was not slow; return whether the rates need checking."""
        second = math.floor(now)
        if second > self._head:
            self._roll(second)
        self._b_calls[self._head % self._size] += 1
        self.calls += 1
        # Expired buckets may have taken successes away, so the rates may have gone up.
        return True


Listener = Callable[[BreakerEvent], object]
"""A callable that receives every :class:`BreakerEvent` of a breaker."""

# The token of a call admitted while disabled: it is not recorded.
_UNRECORDED: Final = -1

# One ``async with breaker`` block in a task: (token, start, guard if it has a timeout,
# the enclosing block of the same task).
_Frame: TypeAlias = "tuple[int, float, BreakerGuard | None, _Frame | None]"


class _Configured(enum.Enum):
    """Sentinel type: use the configured value."""

    TIMEOUT = enum.auto()


class CircuitBreaker:
    """A circuit breaker for async calls to one dependency.

    Use it as ``await breaker.call(fn, *args, **kwargs)``, as a decorator on an
    ``async def``, or as ``async with breaker:`` (``async with breaker.guard(timeout=...)``
    to override the timeout for one block). See the module docstring for the states.

    ``clock`` is a monotonic clock in seconds used for durations, windows and the open
    wait; ``rng`` returns floats in [0, 1) and draws the open-wait jitter. Both exist
    so tests can drive time and chance.
    """

    __slots__ = (
        "__weakref__",
        "_base_wait",
        "_clock",
        "_config",
        "_epoch",
        "_fail_pct",
        "_failures_total",
        "_frames",
        "_ignored_total",
        "_listeners",
        "_min_calls",
        "_name",
        "_not_permitted",
        "_open_until",
        "_permits",
        "_rng",
        "_show_trials",
        "_slow_duration",
        "_slow_pct",
        "_state",
        "_successes_total",
        "_timeout",
        "_trial_done",
        "_trial_failed",
        "_trial_inflight",
        "_trial_slow",
        "_window",
    )

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        cfg = config if config is not None else BreakerConfig()
        self._name = name
        self._config = cfg
        self._clock = clock
        self._rng = rng
        # Hot-path copies of the config.
        self._min_calls = cfg.minimum_calls
        self._fail_pct = cfg.failure_rate_threshold
        self._slow_pct = cfg.slow_call_rate_threshold
        self._slow_duration = cfg.slow_call_duration
        self._timeout = cfg.timeout
        self._permits = cfg.permitted_calls_in_half_open
        self._window: _CountWindow | _TimeWindow = (
            _CountWindow(cfg.window_size)
            if cfg.window_type is WindowType.COUNT
            else _TimeWindow(cfg.window_size)
        )
        self._listeners: list[Listener] = []
        self._frames: dict[asyncio.Task[Any] | None, _Frame] = {}
        self._state = _CLOSED
        # Bumped on every state change; a completing call whose token is stale is not
        # recorded in the new state's window.
        self._epoch = 0
        self._open_until = 0.0
        self._base_wait = cfg.wait_duration_open
        self._show_trials = False
        self._trial_inflight = 0
        self._trial_done = 0
        self._trial_failed = 0
        self._trial_slow = 0
        self._not_permitted = 0
        self._successes_total = 0
        self._failures_total = 0
        self._ignored_total = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._name!r} {self._state}>"

    @property
    def name(self) -> str:
        """The breaker's name, as given in errors, events and metrics."""
        return self._name

    @property
    def config(self) -> BreakerConfig:
        """The breaker's configuration."""
        return self._config

    @property
    def state(self) -> BreakerState:
        """The current state; reading it applies a due open -> half-open transition."""
        if self._state is _OPEN:
            self._poll(self._clock())
        return self._state

    # -- calling ---------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` and await it through the breaker.

        Raises :class:`~bluewren.errors.CircuitOpenError` without calling ``fn`` when
        the call is not permitted, and :class:`~bluewren.errors.CallTimeoutError` when
        it runs past the configured timeout. Anything ``fn`` raises propagates.
        """
        clock = self._clock
        if self._state is _CLOSED and self._timeout is None:
            # The hot path. A closed breaker holds no permits, so nothing needs releasing.
            epoch = self._epoch
            start = clock()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._complete(epoch, start, clock(), exc, False)
                raise
            end = clock()
            if epoch == self._epoch and end - start < self._slow_duration and not self._listeners:
                self._successes_total += 1
                if self._window.record_success(end):
                    self._check_thresholds(end)
            else:
                self._complete(epoch, start, end, None, False)
            return result
        token = self._admit()
        timeout = self._timeout
        error: BaseException | None = None
        timed_out = False
        start = clock()
        try:
            if timeout is None:
                return await fn(*args, **kwargs)
            scope = asyncio.timeout(timeout)
            try:
                async with scope:
                    return await fn(*args, **kwargs)
            except TimeoutError as expired:
                if not scope.expired():
                    raise
                timed_out = True
                raise CallTimeoutError(self._name, timeout) from expired
        except BaseException as exc:
            error = exc
            raise
        finally:
            # Always runs, so a half-open permit is given back whatever happened.
            self._complete(token, start, clock(), error, timed_out)
            error = None  # break the frame <-> traceback cycle

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Decorate an ``async def`` so every call to it goes through the breaker."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"@{type(self).__name__} decorates an async def; for other awaitables "
                f"use 'await breaker.call(fn, ...)'; got {fn!r}"
            )

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self.call(fn, *args, **kwargs)

        return guarded

    def guard(self, *, timeout: float | _Configured | None = _Configured.TIMEOUT) -> BreakerGuard:
        """Return a single-use async context manager guarding one block.

        The block's duration is measured and its exception classified like a call's.
        ``timeout`` overrides the configured timeout for this block (None for none).
        """
        if isinstance(timeout, _Configured):
            return BreakerGuard(self, self._timeout)
        if timeout is not None:
            timeout = _number("timeout", timeout, "a positive number of seconds or None")
            if timeout <= 0.0:
                raise BreakerConfigError(
                    "timeout", f"timeout must be a positive number of seconds, got {timeout!r}"
                )
        return BreakerGuard(self, timeout)

    async def __aenter__(self) -> CircuitBreaker:
        """Guard the ``async with`` block with the configured timeout."""
        timeout = self._timeout
        guard: BreakerGuard | None = None
        if timeout is None:
            token = self._epoch if self._state is _CLOSED else self._admit()
        else:
            guard = BreakerGuard(self, timeout)
            await guard.__aenter__()
            token = _UNRECORDED  # the guard records the block
        # The same breaker may guard blocks in many tasks at once, and nest in one task.
        frames = self._frames
        key = asyncio.current_task()
        frames[key] = (token, self._clock(), guard, frames.get(key))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Record the block's outcome; the block's exception, if any, propagates."""
        frames = self._frames
        key = asyncio.current_task()
        token, start, guard, enclosing = frames.pop(key)
        if enclosing is not None:
            frames[key] = enclosing
        if guard is not None:
            await guard.__aexit__(exc_type, exc, tb)
            return
        end = self._clock()
        if (
            exc is None
            and token == self._epoch
            and self._state is _CLOSED
            and end - start < self._slow_duration
            and not self._listeners
        ):
            self._successes_total += 1
            if self._window.record_success(end):
                self._check_thresholds(end)
        else:
            self._complete(token, start, end, exc, False)

    # -- listeners -------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; return a function that unsubscribes.

        Listeners run synchronously inside the breaker; an exception they raise is
        logged and otherwise ignored.
        """
        self._listeners.append(listener)
        return functools.partial(self.remove_listener, listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; does nothing if it is not subscribed."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def on_state_change(
        self, callback: Callable[[BreakerState, BreakerState], object]
    ) -> Callable[[], None]:
        """Call ``callback(old, new)`` on every state change; return an unsubscriber."""

        def on_event(event: BreakerEvent) -> None:
            if event.kind is EventKind.STATE_CHANGE and event.previous_state is not None:
                callback(event.previous_state, event.state)

        return self.add_listener(on_event)

    # -- metrics and manual control --------------------------------------------------

    def metrics(self) -> BreakerMetrics:
        """Return a snapshot of the breaker's counters (see :class:`BreakerMetrics`)."""
        now = self._clock()
        if self._state is _OPEN:
            self._poll(now)
        if self._show_trials:
            calls, failed, slow = self._trial_done, self._trial_failed, self._trial_slow
            enough = calls >= self._permits
        else:
            window = self._window
            window.expire(now)
            calls, failed, slow = window.calls, window.failed, window.slow
            enough = calls >= self._min_calls
        return BreakerMetrics(
            name=self._name,
            state=self._state,
            failure_rate=failed * 100.0 / calls if enough else None,
            slow_call_rate=slow * 100.0 / calls if enough else None,
            buffered_calls=calls,
            failed_calls=failed,
            slow_calls=slow,
            not_permitted_calls=self._not_permitted,
            successful_calls_total=self._successes_total,
            failed_calls_total=self._failures_total,
            ignored_calls_total=self._ignored_total,
        )

    def force_open(self) -> None:
        """Reject every call until reset(), transition_to_closed() or disable()."""
        if self._state is not _FORCED_OPEN:
            self._transition(_FORCED_OPEN, self._clock())

    def disable(self) -> None:
        """Permit every call and record nothing until reset(), etc."""
        if self._state is not _DISABLED:
            self._transition(_DISABLED, self._clock())

    def transition_to_closed(self) -> None:
        """Close the breaker with an empty window; totals are kept."""
        if self._state is not _CLOSED:
            self._transition(_CLOSED, self._clock())

    def reset(self) -> None:
        """Return to a fresh closed breaker: empty window, zeroed totals, no backoff."""
        now = self._clock()
        self._not_permitted = 0
        self._successes_total = 0
        self._failures_total = 0
        self._ignored_total = 0
        if self._state is _CLOSED:
            self._epoch += 1
            self._window.clear()
            self._base_wait = self._config.wait_duration_open
        else:
            self._transition(_CLOSED, now)
        if self._listeners:
            self._emit(BreakerEvent(kind=EventKind.RESET, name=self._name, state=_CLOSED, at=now))

    # -- the state machine -------------------------------------------------------------

    def _admit(self) -> int:
        """Permit a call or raise CircuitOpenError; return the call's token."""
        state = self._state
        if state is _CLOSED:
            return self._epoch
        if state is _DISABLED:
            return _UNRECORDED
        now = self._clock()
        if state is _OPEN:
            if now < self._open_until:
                self._reject(now, self._open_until - now)
            self._transition(_HALF_OPEN, now)
            state = _HALF_OPEN
        if state is _HALF_OPEN:
            if self._trial_inflight + self._trial_done < self._permits:
                self._trial_inflight += 1
                return self._epoch
            # The trials in flight decide the state within about a call's duration.
            hint = self._timeout if self._timeout is not None else self._slow_duration
            self._reject(now, hint)
        # Forced open lasts until an operator acts; the configured wait is only a hint.
        self._reject(now, self._config.wait_duration_open)

    def _release(self, token: int) -> None:
        """Give back a permit without recording anything."""
        if token == self._epoch and self._state is _HALF_OPEN:
            self._trial_inflight -= 1

    def _reject(self, now: float, retry_after: float) -> NoReturn:
        self._not_permitted += 1
        state = self._state
        if self._listeners:
            self._emit(
                BreakerEvent(
                    kind=EventKind.REJECTED,
                    name=self._name,
                    state=state,
                    at=now,
                    retry_after=retry_after,
                )
            )
        raise CircuitOpenError(self._name, retry_after, state)

    def _classify(self, exc: BaseException) -> bool | None:
        """True: failure, False: success, None: ignored."""
        if isinstance(exc, asyncio.CancelledError):
            return None
        cfg = self._config
        if isinstance(exc, cfg.ignore_exceptions):
            return None
        if isinstance(exc, cfg.record_exceptions):
            predicate = cfg.record_predicate
            if predicate is None:
                return True
            try:
                return bool(predicate(exc))
            except Exception:
                _log.exception("record_predicate of breaker %r raised; counting a failure", self)
                return True
        return False if isinstance(exc, Exception) else None

    def _complete(
        self, token: int, start: float, end: float, error: BaseException | None, timed_out: bool
    ) -> None:
        """Record a permitted call's outcome and give back its half-open permit."""
        if token == _UNRECORDED:
            return
        if error is None:
            failed = False
        elif timed_out:
            failed = True
        else:
            verdict = self._classify(error)
            if verdict is None:
                self._ignored_total += 1
                self._release(token)
                if self._listeners:
                    self._emit_call(EventKind.IGNORED, start, end, False, error)
                return
            failed = verdict
        slow = end - start >= self._slow_duration
        if failed:
            self._failures_total += 1
        else:
            self._successes_total += 1
        if self._listeners:
            kind = EventKind.FAILURE if failed else EventKind.SUCCESS
            self._emit_call(kind, start, end, slow, error)
        if token != self._epoch:
            return
        if self._state is _CLOSED:
            self._window.record(end, (_FAILED if failed else 0) | (_SLOW if slow else 0))
            self._check_thresholds(end)
            return
        # Half-open: the only other state that admits recorded calls.
        self._trial_inflight -= 1
        self._trial_done += 1
        if failed:
            self._trial_failed += 1
        if slow:
            self._trial_slow += 1
        done = self._trial_done
        if done >= self._permits:
            if (
                self._trial_failed * 100.0 >= self._fail_pct * done
                or self._trial_slow * 100.0 >= self._slow_pct * done
            ):
                cfg = self._config
                if cfg.max_wait_duration_open is not None:
                    self._base_wait = min(
                        self._base_wait * cfg.open_backoff_multiplier, cfg.max_wait_duration_open
                    )
                self._transition(_OPEN, end)
            else:
                self._transition(_CLOSED, end)

    def _check_thresholds(self, now: float) -> None:
        window = self._window
        calls = window.calls
        if calls >= self._min_calls and (
            window.failed * 100.0 >= self._fail_pct * calls
            or window.slow * 100.0 >= self._slow_pct * calls
        ):
            self._transition(_OPEN, now)

    def _poll(self, now: float) -> None:
        if self._state is _OPEN and now >= self._open_until:
            self._transition(_HALF_OPEN, now)

    def _transition(self, new: BreakerState, now: float) -> None:
        old = self._state
        self._state = new
        self._epoch += 1
        if new is _CLOSED:
            self._window.clear()
            self._base_wait = self._config.wait_duration_open
            self._show_trials = False
        elif new is _OPEN:
            jitter = self._config.open_jitter
            wait = self._base_wait
            if jitter:
                wait *= 1.0 + jitter * (2.0 * self._rng() - 1.0)
            self._open_until = now + wait
        elif new is _HALF_OPEN:
            self._trial_inflight = 0
            self._trial_done = 0
            self._trial_failed = 0
            self._trial_slow = 0
            self._show_trials = True
        if self._listeners:
            self._emit(
                BreakerEvent(
                    kind=EventKind.STATE_CHANGE,
                    name=self._name,
                    state=new,
                    at=now,
                    previous_state=old,
                )
            )

    def _emit_call(
        self, kind: EventKind, start: float, end: float, slow: bool, error: BaseException | None
    ) -> None:
        self._emit(
            BreakerEvent(
                kind=kind,
                name=self._name,
                state=self._state,
                at=end,
                duration=end - start,
                slow=slow,
                error=error,
            )
        )

    def _emit(self, event: BreakerEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("listener %r of breaker %r raised", listener, self)


class BreakerGuard:
    """One guarded block, as returned by :meth:`CircuitBreaker.guard`.

    Entering asks the breaker for a permit (raising
    :class:`~bluewren.errors.CircuitOpenError` if refused) and starts the timeout;
    leaving records the block's duration and outcome. Use each guard once.
    """

    __slots__ = ("_breaker", "_scope", "_start", "_timeout", "_token")

    def __init__(self, breaker: CircuitBreaker, timeout: float | None) -> None:
        self._breaker = breaker
        self._timeout = timeout
        self._scope: asyncio.Timeout | None = None
        self._token = _UNRECORDED
        self._start = 0.0

    async def __aenter__(self) -> BreakerGuard:
        """Take a permit and start the timeout, if any."""
        breaker = self._breaker
        self._token = breaker._admit()
        self._start = breaker._clock()
        if self._timeout is not None:
            scope = asyncio.timeout(self._timeout)
            try:
                await scope.__aenter__()
            except BaseException:
                breaker._release(self._token)
                raise
            self._scope = scope
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Record the outcome; the block's exception, if any, propagates."""
        breaker = self._breaker
        error = exc
        timed_out = False
        try:
            scope, timeout = self._scope, self._timeout
            if scope is not None and timeout is not None:
                try:
                    await scope.__aexit__(exc_type, exc, tb)
                except TimeoutError as expired:
                    if not scope.expired():
                        raise
                    timed_out = True
                    error = CallTimeoutError(breaker.name, timeout)
                    raise error from expired
        finally:
            breaker._complete(self._token, self._start, breaker._clock(), error, timed_out)
            error = None


class BreakerRegistry:
    """Named circuit breakers built from per-dependency configs.

    ``configs`` maps a dependency name to its config; any other name gets ``default``.
    Breakers are created once and shared: ``registry["store"]`` always returns the same
    breaker. Listeners added to the registry see every breaker's events.
    """

    def __init__(
        self,
        configs: Mapping[str, BreakerConfig] | None = None,
        *,
        default: BreakerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._configs = dict(configs or {})
        self._default = default if default is not None else BreakerConfig()
        self._clock = clock
        self._rng = rng
        self._listeners: list[Listener] = []
        self._breakers: dict[str, CircuitBreaker] = {}
        for name in self._configs:
            self.get(name)

    @classmethod
    def from_table(
        cls,
        table: Mapping[str, object],
        *,
        section: str = "breakers",
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> BreakerRegistry:
        """Build a registry from a parsed ``[breakers]`` config table.

        ``[breakers.default]`` sets the defaults; every other sub-table, such as
        ``[breakers.store]``, configures the breaker of that name on top of them.
        """
        default_table = table.get("default", {})
        if not isinstance(default_table, Mapping):
            raise BreakerConfigError(
                f"{section}.default", f"[{section}.default] must be a table of breaker settings"
            )
        default = BreakerConfig.from_mapping(default_table, section=f"{section}.default")
        configs: dict[str, BreakerConfig] = {}
        for name, values in table.items():
            if name == "default":
                continue
            if not isinstance(values, Mapping):
                raise BreakerConfigError(
                    f"{section}.{name}",
                    f"[{section}] {name!r} must be a table of breaker settings, "
                    f"e.g. [{section}.{name}], got {values!r}",
                )
            configs[name] = BreakerConfig.from_mapping(
                values, base=default, section=f"{section}.{name}"
            )
        return cls(configs, default=default, clock=clock, rng=rng)

    def config_for(self, name: str) -> BreakerConfig:
        """The config the breaker ``name`` has or would get."""
        return self._configs.get(name, self._default)

    def get(self, name: str) -> CircuitBreaker:
        """Return the breaker ``name``, creating it on first use."""
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(name, self.config_for(name), clock=self._clock, rng=self._rng)
            for listener in self._listeners:
                breaker.add_listener(listener)
            self._breakers[name] = breaker
        return breaker

    def __getitem__(self, name: str) -> CircuitBreaker:
        """Same as :meth:`get`."""
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        """Whether a breaker of that name exists yet."""
        return name in self._breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        """Iterate over the breakers created so far."""
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        """The number of breakers created so far."""
        return len(self._breakers)

    def add_listener(self, listener: Listener) -> None:
        """Subscribe ``listener`` to every breaker, present and future."""
        self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    def metrics(self) -> dict[str, BreakerMetrics]:
        """A metrics snapshot of every breaker, by name."""
        return {name: breaker.metrics() for name, breaker in self._breakers.items()}
