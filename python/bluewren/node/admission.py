"""Admission control: shed load at the door, rate-limit by user and by source address.

A new connection is refused (after the upgrade, close 1013 with ``retry after S s`` in
the reason) while the node is overloaded, so users already connected keep their service:

* event-loop lag at or above ``NodeConfig.shed_loop_lag`` seconds. A monitor task sleeps
  ``load_check_interval`` seconds at a time and records how late it woke up; that delay
  is the time callbacks waited for the loop;
* process RSS at or above ``NodeConfig.shed_rss_bytes`` (read from ``/proc/self/statm``
  at each monitor tick; None turns the check off);
* the connection count at ``NodeConfig.max_connections`` (checked by the node);
* more than ``connect_rate`` / ``connect_burst`` new connections from one IP address.

HELLO attempts (failed ones included) are limited per IP address by ``login_rate`` /
``login_burst``: past it the HELLO gets ``RATE_LIMITED`` with ``retry_after`` and the
connection is closed with 1013. SENDs are limited per user, across all of the user's
devices, by ``send_rate`` / ``send_burst`` (``RATE_LIMITED`` with ``retry_after``).

The readings are seams for tests: ``read_lag`` and ``read_rss`` are plain attributes
holding functions, replaceable with ones that return fixed values.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from bluewren.node.commands import ErrorCode
from bluewren.node.limits import TokenBucket
from bluewren.node.wire import CommandError

if TYPE_CHECKING:
    from bluewren.node.config import NodeConfig

__all__ = ["AdmissionControl", "KeyedBuckets", "read_process_rss"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_process_rss() -> int:
    """The resident set size of this process in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _whole_ms(seconds: float) -> float:
    return max(0.001, math.ceil(seconds * 1000) / 1000)


class KeyedBuckets:
    """A token bucket per key (user, IP address), created on first use.

    Buckets that are full again carry no state worth keeping: :meth:`prune` drops them,
    so the table holds only keys active within the last ``burst / rate`` seconds.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> float | None:
        """Takes a token of ``key``: None if there was one, else seconds until one."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
        return bucket.take()

    def prune(self) -> None:
        """Drops the buckets that have refilled completely."""
        now = self._clock()
        idle = self.burst / self.rate
        stale = [k for k, b in self._buckets.items() if now - b._stamp >= idle]
        for key in stale:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class AdmissionControl:
    """The node's door policy; see the module docstring."""

    def __init__(self, config: NodeConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.lag = 0.0
        """The last measured event-loop lag, in seconds."""
        self.rss = 0
        """The last measured RSS, in bytes."""
        self.read_lag: Callable[[], float] = lambda: self.lag
        self.read_rss: Callable[[], int] = lambda: self.rss
        self.sends = KeyedBuckets(config.send_rate, config.send_burst, clock)
        self.connects = KeyedBuckets(config.connect_rate, config.connect_burst, clock)
        self.logins = KeyedBuckets(config.login_rate, config.login_burst, clock)
        self.shed_total = 0
        """Connections refused at the door so far (overload or connect rate)."""
        self._task: asyncio.Task[None] | None = None

    # -- the monitor -----------------------------------------------------------------

    def start(self) -> None:
        """Starts the monitor task on the running loop."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._monitor())

    async def stop(self) -> None:
        """Stops the monitor task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _monitor(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.load_check_interval
        watch_rss = self.config.shed_rss_bytes is not None
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            self.lag = max(0.0, loop.time() - before - interval)
            if watch_rss:
                self.rss = read_process_rss()
            self.sends.prune()
            self.connects.prune()
            self.logins.prune()

    # -- the checks ------------------------------------------------------------------

    def refuse_connection(self, address: str | None) -> str | None:
        """Why a new connection from ``address`` must be refused (the close reason,
        with its retry hint), or None to admit it."""
        c = self.config
        retry = c.overload_retry_after
        lag = self.read_lag()
        if lag >= c.shed_loop_lag:
            self.shed_total += 1
            return f"node overloaded (event-loop lag {lag:.3f} s): retry after {retry:g} s"
        limit = c.shed_rss_bytes
        if limit is not None:
            rss = self.read_rss()
            if rss >= limit:
                self.shed_total += 1
                return f"node overloaded (memory {rss >> 20} MiB): retry after {retry:g} s"
        if address is not None:
            wait = self.connects.take(address)
            if wait is not None:
                self.shed_total += 1
                return (
                    f"too many connections from {address} (connect_rate "
                    f"{c.connect_rate:g}/s): retry after {_whole_ms(wait):g} s"
                )
        return None

    def admit_login(self, address: str | None) -> None:
        """Raises CommandError ``RATE_LIMITED`` past the HELLO rate of ``address``."""
        if address is None:
            return
        wait = self.logins.take(address)
        if wait is not None:
            retry_after = _whole_ms(wait)
            c = self.config
            raise CommandError(
                ErrorCode.RATE_LIMITED,
                f"too many logins from {address} (login_rate {c.login_rate:g}/s, bursts of "
                f"{c.login_burst}): retry after {retry_after:g} s",
                retry_after=retry_after,
            )

    def admit_send(self, user: str) -> None:
        """Raises CommandError ``RATE_LIMITED`` past ``user``'s SEND rate (all devices)."""
        wait = self.sends.take(user)
        if wait is not None:
            retry_after = _whole_ms(wait)
            c = self.config
            raise CommandError(
                ErrorCode.RATE_LIMITED,
                f"this user may send {c.send_rate:g} messages a second (bursts of "
                f"{c.send_burst}, all devices together): retry after {retry_after:g} s",
                retry_after=retry_after,
            )


def peer_address(transport: object) -> str | None:
    """The IP address of a transport's peer (None if unknown)."""
    get = getattr(transport, "get_extra_info", None)
    if get is None:
        return None
    peer = get("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None
