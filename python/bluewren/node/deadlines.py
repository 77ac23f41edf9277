"""Every connection's deadline (the HELLO timeout, then the token's expiry) on one timer.

A loop timer per connection costs about 550 bytes (the handle, its libuv timer, the
bound method); at tens of thousands of idle connections that is an eighth of what a
connection weighs. :class:`Deadlines` keeps one heap of ``(when, conn_id)`` entries
instead (about 90 bytes each) and one loop timer armed for the earliest.

A connection holds at most one deadline, in its ``deadline`` attribute (``0.0``: none).
Entries are never removed from the middle of the heap: an entry whose connection is gone
or whose deadline has since changed is stale and skipped when it surfaces. Stale entries
are counted, and once they are more than half of the heap it is rebuilt without them, so
a churn of short connections with long-lived tokens cannot grow the heap without bound.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Protocol

__all__ = ["Deadlines", "HasDeadline"]

COMPACT_MIN = 1024
"""Stale entries tolerated before the heap is considered for a rebuild."""


class HasDeadline(Protocol):
    """What :class:`Deadlines` needs of a connection."""

    conn_id: int
    deadline: float
    """Loop time (``loop.time()``) of the connection's deadline; ``0.0`` for none."""

    def deadline_passed(self) -> None:
        """Called once, on the loop, when ``deadline`` has come."""


class Deadlines:
    """One timer for the deadlines of every connection ``lookup`` can find by id."""

    def __init__(self, lookup: Callable[[int], HasDeadline | None]) -> None:
        self._lookup = lookup
        self._heap: list[tuple[float, int]] = []
        self._stale = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0

    def __len__(self) -> int:
        """Entries in the heap, stale ones included (for tests and metrics)."""
        return len(self._heap)

    def set(self, conn: HasDeadline, delay: float) -> None:
        """Gives ``conn`` the deadline ``delay`` seconds from now, replacing any other."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if conn.deadline:
            self._stale += 1
        conn.deadline = when
        heapq.heappush(self._heap, (when, conn.conn_id))
        if self._timer is None or when < self._armed_at:
            self._arm(loop, when)
        self._maybe_compact()

    def clear(self, conn: HasDeadline) -> None:
        """Drops ``conn``'s deadline (it closed, or no longer has one)."""
        if conn.deadline:
            conn.deadline = 0.0
            self._stale += 1
            self._maybe_compact()

    def close(self) -> None:
        """Cancels the timer; no deadline fires after this."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        self._stale = 0

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._armed_at = when

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, conn_id = heapq.heappop(heap)
            conn = self._lookup(conn_id)
            if conn is None or conn.deadline != when:
                self._stale = max(0, self._stale - 1)
                continue
            conn.deadline = 0.0
            conn.deadline_passed()
        if heap:
            self._arm(loop, heap[0][0])

    def _live(self, entry: tuple[float, int]) -> bool:
        conn = self._lookup(entry[1])
        return conn is not None and conn.deadline == entry[0]

    def _maybe_compact(self) -> None:
        if self._stale < COMPACT_MIN or self._stale * 2 < len(self._heap):
            return
        self._heap = [entry for entry in self._heap if self._live(entry)]
        heapq.heapify(self._heap)
        self._stale = 0
