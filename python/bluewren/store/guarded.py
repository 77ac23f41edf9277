"""A store wrapper that calls its store through circuit breakers with timeouts.

:class:`GuardedStore` implements :class:`~bluewren.store.Store` by delegating every call
to an inner store, reads under one breaker and writes under another (they may be the
same breaker). Each breaker's ``timeout`` bounds one call. What callers see:

* the inner store answered: its result, or its error unchanged;
* the breaker is open: :class:`StoreCircuitOpenError` at once, without calling the inner
  store, with ``retry_after`` = the time until the breaker lets trial calls through;
* the call ran past the timeout: :class:`StoreTimeoutError`.

Both are :class:`~bluewren.errors.StoreUnavailableError`: retryable, so a node answers
them with ``UNAVAILABLE`` and a ``retry_after``.

Only unavailability counts against a breaker: a store error that is the caller's
business (an unknown conversation, a bad argument) is passed through the breaker as a
value and re-raised outside it, whatever the breaker's ``record_exceptions`` say.

A write that times out is not cancelled inside the store (it is shielded): it may still
commit. Nothing was acknowledged for it, and a retry with the same ``cmid`` is
deduplicated by the store. An ``append`` that commits after its caller gave up is
reported to ``on_late_append``, so the node can still deliver it (otherwise the next
messages of that conversation would wait behind a sequence number never published).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from bluewren.breaker import CircuitBreaker
from bluewren.errors import CallTimeoutError, CircuitOpenError, StoreError, StoreUnavailableError
from bluewren.store.base import (
    DEFAULT_KIND,
    AppendResult,
    Conversation,
    ErasureResult,
    Member,
    NewMessage,
    Role,
    Store,
    StoredMessage,
)

__all__ = ["GuardedStore", "StoreCircuitOpenError", "StoreTimeoutError"]

log = logging.getLogger("bluewren.store.guarded")

T = TypeVar("T")


class StoreCircuitOpenError(StoreUnavailableError):
    """The store's breaker is open: the call was not made. Retry after ``retry_after`` s."""

    def __init__(self, breaker: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"the store is unavailable (breaker {breaker!r} open): retry after {retry_after:.3f} s"
        )


class StoreTimeoutError(StoreUnavailableError):
    """A store call ran past its breaker's timeout; a write may still commit later."""

    def __init__(self, breaker: str, timeout: float, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"the store did not answer within {timeout:g} s (breaker {breaker!r}): retry "
            f"after {retry_after:g} s"
        )


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _Passed:
    """A store error that is the caller's business, carried through the breaker."""

    __slots__ = ("error",)

    def __init__(self, error: StoreError) -> None:
        self.error = error


_NOWAIT: dict[type, bool] = {}

AppendOutcomes = list[AppendResult | StoreError]
"""Per message of an ``append_each_nowait``, in order: its result or its own error."""


def _has_own_nowait(cls: type) -> bool:
    """True if ``cls`` has an ``append_each_nowait`` that is the same path as its
    ``append``: a subclass that overrides ``append`` (a wrapper, a fault injector) sees
    every append, so it is called through ``append`` instead."""
    known = _NOWAIT.get(cls)
    if known is None:
        mro = cls.__mro__
        nowait = next((c for c in mro if "append_each_nowait" in vars(c)), None)
        append = next((c for c in mro if "append" in vars(c)), None)
        known = _NOWAIT[cls] = nowait is not None and nowait is append
    return known


async def _append_each(store: Store, messages: Sequence[NewMessage]) -> AppendOutcomes:
    """Each of ``messages`` through ``store.append``, all submitted at once, in order;
    per message its result or its error (for a store without ``append_each_nowait``)."""
    tasks = [
        asyncio.ensure_future(store.append(m.conv, m.sender, m.device, m.cmid, m.body, m.kind))
        for m in messages
    ]
    outcomes: AppendOutcomes = []
    for task in tasks:
        try:
            outcomes.append(await task)
        except StoreError as exc:
            outcomes.append(exc)
    return outcomes


class _Appends:
    """One :meth:`GuardedStore.append_each_nowait` in flight."""

    __slots__ = ("deadline", "done", "finished", "start", "store", "token")

    def __init__(
        self,
        store: GuardedStore,
        token: int,
        start: float,
        done: Callable[[AppendOutcomes | None, BaseException | None], None],
    ) -> None:
        self.store = store
        self.token = token
        self.start = start
        self.done = done
        self.deadline = 0.0
        self.finished = False

    def __call__(self, outcomes: AppendOutcomes | None, error: BaseException | None) -> None:
        """The inner store's completion callback."""
        self.store._finish(self, outcomes, error, error)

    def finish_task(self, task: asyncio.Future[AppendOutcomes]) -> None:
        """The completion of :func:`_append_each` (a store without its own nowait path)."""
        store = self.store
        if task.cancelled():
            cancelled = StoreUnavailableError("the appends were cancelled")
            store._finish(self, None, cancelled, cancelled)
        elif (error := task.exception()) is not None:
            store._finish(self, None, error, error)
        else:
            outcomes = task.result()
            failure = next((o for o in outcomes if isinstance(o, StoreError) and o.retryable), None)
            store._finish(self, outcomes, None, failure)


class GuardedStore(Store):
    """``inner`` called through ``read`` and ``write`` breakers; see the module docstring.

    ``open`` and ``close`` go straight to the inner store (they are not guarded: a node
    that cannot open its store must not start).
    """

    def __init__(
        self,
        inner: Store,
        *,
        read: CircuitBreaker,
        write: CircuitBreaker,
        on_late_append: Callable[[AppendResult], None] | None = None,
    ) -> None:
        self.inner = inner
        self.read_breaker = read
        self.write_breaker = write
        self.on_late_append = on_late_append
        self.stats = inner.stats  # the same object: the inner store keeps it up to date
        self._in_flight: deque[_Appends] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the guard -------------------------------------------------------------------

    async def _call(self, breaker: CircuitBreaker, work: Awaitable[T]) -> T:
        async def attempt() -> T | _Passed:
            try:
                return await work
            except StoreError as exc:
                if exc.retryable:
                    raise
                return _Passed(exc)

        try:
            result = await breaker.call(attempt)
        except CircuitOpenError as exc:
            if isinstance(work, asyncio.Future | asyncio.Task):
                work.cancel()
            elif asyncio.iscoroutine(work):
                work.close()
            raise StoreCircuitOpenError(breaker.name, exc.retry_after) from None
        except CallTimeoutError as exc:
            wait = breaker.config.wait_duration_open
            raise StoreTimeoutError(breaker.name, exc.timeout, min(wait, 5.0)) from None
        if isinstance(result, _Passed):
            raise result.error
        return result

    async def _read(self, work: Awaitable[T]) -> T:
        return await self._call(self.read_breaker, work)

    async def _write(self, work: Awaitable[T]) -> T:
        # Shielded: a timeout gives up waiting, it does not tear a write in half.
        task = asyncio.ensure_future(work)
        try:
            return await self._call(self.write_breaker, asyncio.shield(task))
        except StoreCircuitOpenError:
            task.cancel()
            raise
        except (StoreTimeoutError, asyncio.CancelledError):
            task.add_done_callback(_consume)  # its late outcome is nobody's business
            raise

    # -- life cycle ------------------------------------------------------------------

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    # -- messages --------------------------------------------------------------------

    async def append(
        self,
        conv: int,
        sender: str,
        device: str,
        cmid: int,
        body: bytes,
        kind: str = DEFAULT_KIND,
    ) -> AppendResult:
        task = asyncio.ensure_future(self.inner.append(conv, sender, device, cmid, body, kind))
        try:
            return await self._call(self.write_breaker, asyncio.shield(task))
        except StoreCircuitOpenError:
            task.cancel()
            raise
        except (StoreTimeoutError, asyncio.CancelledError):
            # The caller gave up; the write may still commit: report it when it does.
            task.add_done_callback(self._late_append)
            raise

    def append_each_nowait(
        self,
        messages: Sequence[NewMessage],
        done: Callable[[AppendOutcomes | None, BaseException | None], None],
    ) -> None:
        """Appends each of ``messages`` (see ``SQLiteStore.append_each_nowait``) as ONE
        call through the write breaker, without a task, a shield or a timer: for the
        node's hot path. ``done`` is called on the loop exactly once: with
        ``(outcomes, None)``, per message its AppendResult or the StoreError it alone
        failed with; or with ``(None, error)`` for what :meth:`append` would raise for
        all of them (StoreTimeoutError, the store's unavailability).

        An open breaker raises :class:`StoreCircuitOpenError` here, before anything is
        queued, and so does an invalid message (StoreArgumentError). The timeout is
        enforced by one timer for every call in flight (they share the breaker's
        timeout, so they expire in the order they were made); appends that commit after
        their call timed out go to ``on_late_append``."""
        breaker = self.write_breaker
        try:
            token = breaker._admit()
        except CircuitOpenError as exc:
            raise StoreCircuitOpenError(breaker.name, exc.retry_after) from None
        call = _Appends(self, token, breaker._clock(), done)
        timeout = breaker._timeout
        if timeout is not None:
            loop = self._loop
            if loop is None or not loop.is_running():  # (get_running_loop costs a getpid)
                loop = self._loop = asyncio.get_running_loop()
            call.deadline = loop.time() + timeout
            self._in_flight.append(call)
            if self._sweeper is None:
                self._sweeper = loop.call_at(call.deadline, self._sweep)
        try:
            inner = self.inner
            if _has_own_nowait(type(inner)) and "append" not in vars(inner):
                inner.append_each_nowait(messages, call)  # type: ignore[attr-defined]
            else:
                batch = [message.validated() for message in messages]
                task = asyncio.ensure_future(_append_each(inner, batch))
                task.add_done_callback(call.finish_task)
        except BaseException as exc:
            call.finished = True
            if isinstance(exc, StoreError) and not exc.retryable:
                breaker._complete(token, call.start, breaker._clock(), None, False)
            else:
                breaker._complete(token, call.start, breaker._clock(), exc, False)
            raise

    @property
    def nowait_ok(self) -> bool:
        """False if ``append`` was replaced on this instance (a wrapper, a fault
        injector): then callers must go through it instead of :meth:`append_each_nowait`."""
        return "append" not in vars(self)

    def _finish(
        self,
        call: _Appends,
        outcomes: AppendOutcomes | None,
        error: BaseException | None,
        failure: BaseException | None,
    ) -> None:
        """``call`` completed: ``failure`` is what counts against the breaker (a retryable
        error among the outcomes, or the error of all of them)."""
        breaker = self.write_breaker
        in_flight = self._in_flight
        if call.finished:  # it timed out: the caller has its answer
            late = self.on_late_append
            if late is not None and outcomes is not None:
                for outcome in outcomes:
                    if isinstance(outcome, AppendResult) and not outcome.duplicate:
                        try:
                            late(outcome)
                        except Exception:
                            log.exception("on_late_append failed for conv %d", outcome.message.conv)
            return
        call.finished = True
        while in_flight and in_flight[0].finished:
            in_flight.popleft()
        if isinstance(failure, StoreError) and not failure.retryable:
            failure = None
        breaker._complete(call.token, call.start, breaker._clock(), failure, False)
        call.done(outcomes, error)

    def _sweep(self) -> None:
        """Times out every append past its deadline; re-arms for the oldest one left."""
        self._sweeper = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        in_flight = self._in_flight
        breaker = self.write_breaker
        while in_flight:
            call = in_flight[0]
            if call.finished:
                in_flight.popleft()
                continue
            if call.deadline > now:
                self._sweeper = loop.call_at(call.deadline, self._sweep)
                return
            in_flight.popleft()
            call.finished = True
            timeout = breaker.config.timeout or 0.0
            expired = CallTimeoutError(breaker.name, timeout)
            breaker._complete(call.token, call.start, breaker._clock(), expired, True)
            wait = breaker.config.wait_duration_open
            try:
                call.done(None, StoreTimeoutError(breaker.name, timeout, min(wait, 5.0)))
            except Exception:
                log.exception("an append's completion callback failed")

    def _late_append(self, task: asyncio.Future[AppendResult]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if self.on_late_append is not None and not result.duplicate:
            try:
                self.on_late_append(result)
            except Exception:
                log.exception("on_late_append failed for conv %d", result.message.conv)

    async def append_many(self, messages: Sequence[NewMessage]) -> list[AppendResult]:
        return await self._write(self.inner.append_many(messages))

    async def history(self, conv: int, after_seq: int, limit: int) -> list[StoredMessage]:
        return await self._read(self.inner.history(conv, after_seq, limit))

    async def history_before(self, conv: int, before_seq: int, limit: int) -> list[StoredMessage]:
        return await self._read(self.inner.history_before(conv, before_seq, limit))

    async def last_seq(self, conv: int) -> int:
        return await self._read(self.inner.last_seq(conv))

    # -- conversations ---------------------------------------------------------------

    async def conversation(self, conv: int) -> Conversation:
        return await self._read(self.inner.conversation(conv))

    async def create_direct(self, user_a: str, user_b: str) -> Conversation:
        return await self._write(self.inner.create_direct(user_a, user_b))

    async def create_group(self, owner: str, title: str, members: Iterable[str]) -> Conversation:
        return await self._write(self.inner.create_group(owner, title, list(members)))

    async def rename(self, conv: int, title: str) -> Conversation:
        return await self._write(self.inner.rename(conv, title))

    async def add_members(
        self, conv: int, users: Iterable[str], role: Role = "member"
    ) -> list[Member]:
        return await self._write(self.inner.add_members(conv, list(users), role))

    async def remove_member(self, conv: int, user: str) -> None:
        await self._write(self.inner.remove_member(conv, user))

    async def set_role(self, conv: int, user: str, role: Role) -> Member:
        return await self._write(self.inner.set_role(conv, user, role))

    async def members(self, conv: int) -> list[Member]:
        return await self._read(self.inner.members(conv))

    async def conversations_of(self, user: str) -> list[int]:
        return await self._read(self.inner.conversations_of(user))

    async def count_groups_of(self, user: str) -> int:
        return await self._read(self.inner.count_groups_of(user))

    # -- cursors and read marks ------------------------------------------------------

    async def set_cursor(self, user: str, device: str, conv: int, seq: int) -> int:
        return await self._write(self.inner.set_cursor(user, device, conv, seq))

    async def cursors(self, user: str, device: str) -> dict[int, int]:
        return await self._read(self.inner.cursors(user, device))

    async def mark_read(self, conv: int, user: str, seq: int) -> int:
        return await self._write(self.inner.mark_read(conv, user, seq))

    async def read_seq(self, conv: int, user: str) -> int:
        return await self._read(self.inner.read_seq(conv, user))

    # -- users' data -----------------------------------------------------------------

    async def export_user(self, user: str) -> dict[str, Any]:
        return await self._read(self.inner.export_user(user))

    async def erase_user(self, user: str) -> ErasureResult:
        return await self._write(self.inner.erase_user(user))

    async def disabled_users(self) -> dict[str, str]:
        return await self._read(self.inner.disabled_users())

    async def set_user_disabled(self, user: str, disabled: bool, reason: str = "") -> bool:
        return await self._write(self.inner.set_user_disabled(user, disabled, reason))
