"""The node's metrics, written in the Prometheus text exposition format (0.0.4).

:class:`NodeMetrics` holds what the node counts as it works (messages in and out,
fan-out sizes, slow-consumer closes, store append latency, event-loop lag); the rest is
read at scrape time from the node itself (connections by subprotocol, outbox bytes,
breaker states, RSS), so a scrape costs nothing between scrapes. :func:`render` writes
one scrape; ``bluewren.node.observability`` serves it on ``/metrics``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from bluewren.node.admission import read_process_rss
from bluewren.node.commands import BINARY_SUBPROTOCOL, JSON_SUBPROTOCOL

if TYPE_CHECKING:
    from bluewren.node.server import Node

__all__ = ["CONTENT_TYPE", "Histogram", "NodeMetrics", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The Content-Type of a scrape."""

FANOUT_BUCKETS: Final = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
"""Upper bounds of the fan-out size histogram (recipient connections per message)."""

LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the store append latency histogram."""

_BREAKER_STATES: Final = ("closed", "open", "half_open")


class Histogram:
    """A cumulative histogram with fixed upper bounds (``+Inf`` is implied)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds: Final = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Counts ``times`` observations of ``value``."""
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.count += times
        self.sum += value * times

    def lines(self, name: str) -> Iterable[str]:
        """The ``_bucket``, ``_sum`` and ``_count`` samples."""
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            yield f'{name}_bucket{{le="{_num(float(bound))}"}} {running}'
        yield f'{name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{name}_sum {_num(self.sum)}"
        yield f"{name}_count {self.count}"


class NodeMetrics:
    """What the node counts as it works; the node calls the methods on its hot paths
    (each is a few integer operations)."""

    def __init__(self) -> None:
        self.messages_in = 0
        """Messages accepted from connections (SEND) and stored; ``Node.post`` is not counted."""
        self.messages_out = 0
        """Deliveries queued to recipient connections (one per connection)."""
        self.slow_consumer_closes = 0
        """Connections closed because their outbox overflowed (close 4008)."""
        self.fanout_size = Histogram(FANOUT_BUCKETS)
        self.store_append_seconds = Histogram(LATENCY_BUCKETS)

    def stored(self, seconds: float, messages: int = 1) -> None:
        """``messages`` messages were appended to the store in ``seconds`` each."""
        if messages:
            self.messages_in += messages
            self.store_append_seconds.observe(seconds, messages)

    def fanned_out(self, recipients: int, overflowed: int) -> None:
        """One message went to ``recipients`` connections; ``overflowed`` of them were
        closed as slow consumers."""
        self.messages_out += recipients
        self.fanout_size.observe(recipients)
        self.slow_consumer_closes += overflowed


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _head(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP {name} {text}")
    out.append(f"# TYPE {name} {kind}")


def _breakers(node: Node) -> list[tuple[str, str]]:
    """(name, state) of every breaker the node exposes; [] when there is no registry.

    Read defensively: the registry is optional and its shape is only assumed to be an
    iterable of objects with ``name`` and ``state``."""
    out: list[tuple[str, str]] = []
    for attr in ("breakers", "breaker_registry"):
        registry = getattr(node, attr, None)
        if registry is None:
            continue
        try:
            for breaker in registry:
                name, state = getattr(breaker, "name", None), getattr(breaker, "state", None)
                if isinstance(name, str) and state is not None:
                    out.append((name, str(getattr(state, "value", state)).lower()))
        except Exception:  # a broken registry must not break the scrape
            return out
        break
    return out


def render(node: Node) -> str:
    """One scrape of ``node`` in the text exposition format."""
    m = node.metrics
    out: list[str] = []
    # Every subprotocol the node serves is exported, at 0 too: no series comes and goes.
    by_protocol = dict.fromkeys((BINARY_SUBPROTOCOL, JSON_SUBPROTOCOL), 0)
    if node.config.tcp_port is not None:
        by_protocol["tcp"] = 0
    for session in list(node._sessions.values()):
        key = "tcp" if session.framing == "tcp" else session.codec.name
        by_protocol[key] = by_protocol.get(key, 0) + 1
    _head(out, "bluewren_connections", "gauge", "Open connections by subprotocol.")
    for proto in sorted(by_protocol):
        out.append(
            f'bluewren_connections{{subprotocol="{_escape(proto)}"}} {by_protocol.get(proto, 0)}'
        )
    _head(out, "bluewren_messages_in_total", "counter", "Messages accepted and stored.")
    out.append(f"bluewren_messages_in_total {m.messages_in}")
    _head(out, "bluewren_messages_out_total", "counter", "Deliveries queued to connections.")
    out.append(f"bluewren_messages_out_total {m.messages_out}")
    _head(out, "bluewren_fanout_size", "histogram", "Recipient connections per message.")
    out.extend(m.fanout_size.lines("bluewren_fanout_size"))
    _head(out, "bluewren_outbox_bytes", "gauge", "Bytes queued in all outboxes.")
    out.append(f"bluewren_outbox_bytes {node.fanout.total_queued_bytes}")
    _head(
        out,
        "bluewren_slow_consumer_closes_total",
        "counter",
        "Connections closed because their outbox overflowed.",
    )
    out.append(f"bluewren_slow_consumer_closes_total {m.slow_consumer_closes}")
    _head(out, "bluewren_store_append_seconds", "histogram", "Latency of a durable message append.")
    out.extend(m.store_append_seconds.lines("bluewren_store_append_seconds"))
    breakers = _breakers(node)
    if breakers:
        _head(out, "bluewren_breaker_state", "gauge", "1 for the state each breaker is in.")
        for name, state in breakers:
            for candidate in _BREAKER_STATES:
                value = 1 if state.replace("-", "_") == candidate else 0
                out.append(
                    f'bluewren_breaker_state{{breaker="{_escape(name)}",state="{candidate}"}} '
                    f"{value}"
                )
    # Both readings come from the admission monitor's sampler: one task, one reader.
    _head(out, "bluewren_event_loop_lag_seconds", "gauge", "Event-loop lag at the last tick.")
    out.append(f"bluewren_event_loop_lag_seconds {_num(node.admission.lag)}")
    _head(out, "bluewren_process_rss_bytes", "gauge", "Resident set size of the process.")
    out.append(f"bluewren_process_rss_bytes {read_process_rss()}")
    return "\n".join(out) + "\n"
