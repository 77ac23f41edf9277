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
