"""``bluewren serve`` tunes Python's cyclic garbage collector (``gc_threshold``)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from bluewren.node import NodeConfig
from bluewren.node.config import MIN_GC_THRESHOLD, NodeConfigError
from bluewren.node.lifecycle import GC_OLDER_THRESHOLDS, serve, tune_gc

SECRET = "g" * 48


def test_tune_gc_sets_the_thresholds_freezes_and_restores() -> None:
    before = gc.get_threshold()
    restore = tune_gc(12_345)
    try:
        assert gc.get_threshold() == (12_345, *GC_OLDER_THRESHOLDS)
        assert gc.get_freeze_count() > 0  # everything alive now is out of every pass
    finally:
        restore()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_zero_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    restore = tune_gc(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    restore()
    assert gc.get_threshold() == before


@pytest.mark.parametrize("value", [MIN_GC_THRESHOLD - 1, -1, 1.5, "many"])
def test_gc_threshold_below_pythons_default_is_refused(value: object) -> None:
    with pytest.raises(NodeConfigError, match="gc_threshold"):
        NodeConfig(gc_threshold=value)  # type: ignore[arg-type]


def test_gc_threshold_edges_are_accepted() -> None:
    assert NodeConfig(gc_threshold=0).gc_threshold == 0
    assert NodeConfig(gc_threshold=MIN_GC_THRESHOLD).gc_threshold == MIN_GC_THRESHOLD


def test_serve_runs_with_the_tuned_collector_and_restores_it(tmp_path: Path) -> None:
    before = gc.get_threshold()
    config = NodeConfig(port=0, data_dir=tmp_path, token_secret=SECRET, gc_threshold=40_000)
    seen: list[tuple[int, int, int]] = []

    async def main() -> int:
        stop = asyncio.Event()
        task = asyncio.ensure_future(serve(config, stop))
        for _ in range(500):
            if gc.get_threshold()[0] == 40_000:
                seen.append(gc.get_threshold())
                break
            await asyncio.sleep(0.01)
        stop.set()
        return await asyncio.wait_for(task, 30)

    assert asyncio.run(main()) == 0
    assert seen == [(40_000, *GC_OLDER_THRESHOLDS)]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
