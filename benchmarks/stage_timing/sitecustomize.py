"""Per-append stage timings of the SQLite store, for a node run under a benchmark.

    PYTHONPATH=benchmarks/stage_timing python benchmarks/bench_node.py --members 10
    python benchmarks/stage_timing/summarize.py /tmp/bluewren-stages-*.json

Loaded by every Python process started with this directory on ``PYTHONPATH`` (as
``sitecustomize``), it wraps methods of ``SQLiteStore`` and records:

* for every write that went through a group commit: the time it waited in the queue
  (queued until its batch's commit began), the commit (on the writer thread), and the
  hop back (commit done until the loop resolved the batch: loop scheduling delay), with
  the batch's size in messages; a write of several messages (the node's
  ``append_each_nowait``) counts once per message. A frame of the message log counts
  apart: it was acknowledged when it was queued, so its queue and commit are how long
  SQLite took to index it, not part of any acknowledgement;
* every commit's start and end, so the gaps between commits show;
* every checkpoint step (1 on the checkpoint thread, 2 on the writer) and its duration;
* the event loop's lag: a timer due every millisecond, and how late it ran.

A process that stored something writes them at exit to ``/tmp/bluewren-stages-PID.json``.
The bookkeeping costs the node some of its peak (benchmarks/results/node.md).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import json
import os
import time
from typing import Any

from bluewren.store import sqlite

_queued: dict[int, float] = {}
_committed: dict[int, tuple[float, float]] = {}
_rows: list[tuple[float, float, float, int, float, int]] = []
_commits: list[tuple[float, float]] = []
_checkpoints: list[tuple[int, float, float]] = []
_lag: list[tuple[float, float]] = []

LAG_TICK_S = 0.001


class _TimedList(list):  # type: ignore[type-arg]
    def append(self, op: Any) -> None:
        _queued[id(op)] = time.perf_counter()
        super().append(op)


class _TimedDeque(collections.deque):  # type: ignore[type-arg]
    def append(self, op: Any) -> None:
        _queued[id(op)] = time.perf_counter()
        super().append(op)


_run_batches = sqlite.SQLiteStore._run_batches
_commit_batch = sqlite.SQLiteStore._commit_batch
_resolve = sqlite.SQLiteStore._resolve
_index = sqlite.SQLiteStore._index
_checkpoint_aside = sqlite.SQLiteStore._checkpoint_aside
_checkpoint = sqlite.SQLiteStore._checkpoint


def _tick(loop: asyncio.AbstractEventLoop, due: float) -> None:
    now = time.perf_counter()
    _lag.append((now, now - due))
    loop.call_later(LAG_TICK_S, _tick, loop, time.perf_counter() + LAG_TICK_S)


async def _timed_run_batches(self: sqlite.SQLiteStore) -> None:
    self._pending = _TimedList(self._pending)
    self._logged = _TimedDeque(self._logged)
    loop = asyncio.get_running_loop()
    loop.call_soon(_tick, loop, time.perf_counter())
    await _run_batches(self)


def _timed_commit(run: Any) -> Any:
    """``run`` (a commit of a list of ops on the writer thread), timed per op."""

    def timed(self: sqlite.SQLiteStore, ops: list[Any]) -> None:
        began = time.perf_counter()
        run(self, ops)
        done = time.perf_counter()
        _commits.append((began, done))
        for op in ops:
            _committed[id(op)] = (began, done)

    return timed


def _timed_resolve(self: sqlite.SQLiteStore, batch: list[Any]) -> None:
    now = time.perf_counter()
    size = sum(op.size for op in batch)  # messages: an append_each_nowait is one op
    for op in batch:
        queued = _queued.pop(id(op), None)
        commit = _committed.pop(id(op), None)
        if queued is not None and commit is not None:
            logged = int(op.index is not None)
            row = (commit[0] - queued, commit[1] - commit[0], now - commit[1], size, now, logged)
            _rows.extend([row] * op.size)  # one row per message
    _resolve(self, batch)


def _timed_step(step: int, run: Any) -> Any:
    def timed(self: sqlite.SQLiteStore) -> Any:
        began = time.perf_counter()
        result = run(self)
        _checkpoints.append((step, began, time.perf_counter() - began))
        return result

    return timed


def _dump() -> None:
    if _rows:
        with open(f"/tmp/bluewren-stages-{os.getpid()}.json", "w") as f:
            json.dump(
                {"writes": _rows, "commits": _commits, "checkpoints": _checkpoints, "lag": _lag},
                f,
            )


sqlite.SQLiteStore._run_batches = _timed_run_batches  # type: ignore[method-assign]
sqlite.SQLiteStore._commit_batch = _timed_commit(_commit_batch)  # type: ignore[method-assign]
sqlite.SQLiteStore._resolve = _timed_resolve  # type: ignore[method-assign]
sqlite.SQLiteStore._index = _timed_commit(_index)  # type: ignore[method-assign]
sqlite.SQLiteStore._checkpoint_aside = _timed_step(1, _checkpoint_aside)  # type: ignore[method-assign]
sqlite.SQLiteStore._checkpoint = _timed_step(2, _checkpoint)  # type: ignore[method-assign]
atexit.register(_dump)
