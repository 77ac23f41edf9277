"""Per-connection rate limits: a token bucket for TYPING (SEND is limited per user, by
:mod:`bluewren.node.admission`, with the same bucket).

A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` tokens a second;
each command takes one. An empty bucket refuses the command with ``RATE_LIMITED`` and the
time until the next token (``retry_after``), and nothing of the command is done. The
check runs when the command is decoded, before anything is awaited, so the commands of
one WebSocket message meet the same clock: a burst of ``burst`` commands in one message
passes and the next one is refused, whatever the machine's speed.

The other limits of the node (connections, devices, groups, members) are counts checked
where the thing is created; :func:`limit_exceeded` builds their error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from bluewren.node.commands import ErrorCode, Kind
from bluewren.node.wire import Command, CommandError

if TYPE_CHECKING:
    from bluewren.node.config import NodeConfig

__all__ = ["ConnectionLimits", "TokenBucket", "limit_exceeded"]


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` tokens per second of ``clock``."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> float | None:
        """Takes a token: None if there was one, else the seconds until there is one."""
        now = self._clock()
        tokens = self._tokens + (now - self._stamp) * self.rate
        burst = self.burst
        if tokens > burst:
            tokens = burst
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return None
        self._tokens = tokens
        return (1.0 - tokens) / self.rate


class ConnectionLimits:
    """The rate limits of every connection of a node, keyed by connection id."""

    def __init__(self, config: NodeConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._typing: dict[int, TokenBucket] = {}

    def admit(self, conn_id: int, cmd: Command) -> None:
        """Raises CommandError ``RATE_LIMITED`` if ``cmd`` is over its connection's rate."""
        c = self._config
        if cmd.kind == Kind.TYPING:
            bucket = self._typing.get(conn_id)
            if bucket is None:
                n = c.max_typing_per_second
                bucket = self._typing[conn_id] = TokenBucket(float(n), n, self._clock)
            what = f"{c.max_typing_per_second} typing events a second"
        else:
            return
        wait = bucket.take()
        if wait is not None:
            retry_after = math.ceil(wait * 1000) / 1000  # whole milliseconds, never 0
            raise CommandError(
                ErrorCode.RATE_LIMITED,
                f"this connection may send {what}: retry after {retry_after:g} s",
                retry_after=retry_after,
            )

    def forget(self, conn_id: int) -> None:
        """The connection is gone: drop its buckets."""
        self._typing.pop(conn_id, None)


def limit_exceeded(field: str, maximum: int, message: str) -> CommandError:
    """The ``LIMIT_EXCEEDED`` error of the NodeConfig limit ``field``."""
    return CommandError(
        ErrorCode.LIMIT_EXCEEDED,
        f"{message} (limit {field} = {maximum})",
        extra={"limit": field, "max": maximum},
    )
