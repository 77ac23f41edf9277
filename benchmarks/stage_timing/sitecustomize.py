"""Per-append stage timings of the SQLite store, for a node run under a benchmark.

    PYTHONPATH=benchmarks/stage_timing python benchmarks/bench_node.py --members 10
    python benchmarks/stage_timing/summarize.py /tmp/bluewren-stages-*.json

Loaded by every Python process started with this directory on ``PYTHONPATH`` (as
``sitecustomize``), it wraps three methods of ``SQLiteStore`` and records, for every
write that went through a group commit: the time it waited in the queue (queued until
its batch's commit began), the commit (on the writer thread), and the hop back (commit
done until the loop resolved the batch: loop scheduling delay), with the batch's size in
messages; a write of several messages (the node's ``append_each_nowait``) counts once
per message.
A process that stored something writes them at exit to
``/tmp/bluewren-stages-PID.json``. The bookkeeping costs the node 16-20% of its peak
(benchmarks/results/node.md, "Where the half-rate ack latency goes").
"""

from __future__ import annotations

import atexit
import json
import os
import time
from typing import Any

from bluewren.store import sqlite

_queued: dict[int, float] = {}
_committed: dict[int, tuple[float, float]] = {}
_rows: list[tuple[float, float, float, int, float]] = []


class _TimedList(list):  # type: ignore[type-arg]
    def append(self, op: Any) -> None:
        _queued[id(op)] = time.perf_counter()
        super().append(op)


_run_batches = sqlite.SQLiteStore._run_batches
_commit_batch = sqlite.SQLiteStore._commit_batch
_resolve = sqlite.SQLiteStore._resolve


async def _timed_run_batches(self: sqlite.SQLiteStore) -> None:
    self._pending = _TimedList(self._pending)
    await _run_batches(self)


def _timed_commit_batch(self: sqlite.SQLiteStore, batch: list[Any]) -> None:
    began = time.perf_counter()
    _commit_batch(self, batch)
    done = time.perf_counter()
    for op in batch:
        _committed[id(op)] = (began, done)


def _timed_resolve(batch: list[Any]) -> None:
    now = time.perf_counter()
    size = sum(op.size for op in batch)  # messages: an append_each_nowait is one op
    for op in batch:
        queued = _queued.pop(id(op), None)
        commit = _committed.pop(id(op), None)
        if queued is not None and commit is not None:
            row = (commit[0] - queued, commit[1] - commit[0], now - commit[1], size, now)
            _rows.extend([row] * op.size)  # one row per message
    _resolve(batch)


def _dump() -> None:
    if _rows:
        with open(f"/tmp/bluewren-stages-{os.getpid()}.json", "w") as f:
            json.dump(_rows, f)


sqlite.SQLiteStore._run_batches = _timed_run_batches  # type: ignore[method-assign]
sqlite.SQLiteStore._commit_batch = _timed_commit_batch  # type: ignore[method-assign]
sqlite.SQLiteStore._resolve = staticmethod(_timed_resolve)  # type: ignore[method-assign]
atexit.register(_dump)
