"""Appends per second into SQLiteStore: group commit against one transaction per append.

Each round sends MESSAGES messages from TASKS concurrent tasks (each task awaits its
acknowledgement before sending the next, as a client connection does) into one
conversation, with ``synchronous=NORMAL``. Both variants write to the same database
file, one after the other, so they pay for the same file and the same page cache; the
only difference is ``batch_max``: the default (group commit) or 1 (every append commits
on its own). ``extra_info`` records appends/s and the commits one round took::

    python -m pytest benchmarks/test_bench_store.py --benchmark-only \
        --benchmark-columns=min,mean,max,rounds
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop
from pytest_benchmark.fixture import BenchmarkFixture

from bluewren.store import SQLiteStore

MESSAGES = 10_000
TASKS = 100
ROUNDS = 3

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

MODES: dict[str, int | None] = {
    "group commit": None,  # the store's default batch_max
    "one transaction per append": 1,
}


@pytest.fixture(scope="module")
def db_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one database file every variant writes to."""
    return tmp_path_factory.mktemp("bench_store") / "bench.db"


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    name: str = request.param
    event_loop = LOOPS[name]()
    yield name, event_loop
    event_loop.close()


async def burst(store: SQLiteStore, conv: int, round_no: int) -> int:
    """MESSAGES appends from TASKS tasks; returns how many were stored as new."""
    per_task = MESSAGES // TASKS
    body = b"x" * 200

    async def client(k: int) -> int:
        fresh = 0
        for i in range(per_task):
            cmid = (round_no * TASKS + k) * per_task + i + 1
            result = await store.append(conv, f"user{k}", "phone", cmid, body)
            fresh += not result.duplicate
        return fresh

    return sum(await asyncio.gather(*(client(k) for k in range(TASKS))))


@pytest.mark.parametrize("mode", list(MODES))
def test_append_throughput(
    benchmark: BenchmarkFixture,
    loop: tuple[str, asyncio.AbstractEventLoop],
    db_file: Path,
    mode: str,
) -> None:
    loop_name, event_loop = loop
    batch_max = MODES[mode]
    store = (
        SQLiteStore(db_file, synchronous="NORMAL")
        if batch_max is None
        else SQLiteStore(db_file, synchronous="NORMAL", batch_max=batch_max)
    )

    async def start() -> int:
        await store.open()
        return (await store.create_group("bench", f"{mode} on {loop_name}", [])).id

    conv = event_loop.run_until_complete(start())
    commits: list[int] = []
    seconds: list[float] = []

    def one_round() -> int:
        before = store.stats.commits
        started = time.perf_counter()
        stored = event_loop.run_until_complete(burst(store, conv, len(seconds)))
        seconds.append(time.perf_counter() - started)
        commits.append(store.stats.commits - before)
        return stored

    benchmark.group = f"store appends on {loop_name} ({MESSAGES} messages, {TASKS} tasks)"
    try:
        stored = benchmark.pedantic(  # type: ignore[no-untyped-call]
            one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0
        )
    finally:
        event_loop.run_until_complete(store.close())
    assert stored == MESSAGES
    mean = statistics.fmean(seconds)
    benchmark.extra_info["appends_per_s"] = round(MESSAGES / mean)
    benchmark.extra_info["commits_per_round"] = commits
    benchmark.extra_info["batch_max"] = store.batch_max
    print(f"\n{mode} on {loop_name}: {MESSAGES / mean:,.0f} appends/s, commits per round {commits}")
