"""Ring lookups from Python: ``bluewren.HashRing`` against ``uhashring.HashRing``.

Both rings hold the same 64 nodes at their default virtual-node counts (4096 per
unit of weight for BlueWren, 160 for uhashring) and answer the same keys. Each
group pairs the two implementations so the ratio is read from one run:

- ``ring-get``: one lookup of one key per call;
- ``ring-get_many-1000``: 1,000 keys; BlueWren answers them in one ``get_many``
  call, uhashring (which has no batch call) in a Python loop over ``get_node``.

The two rings place keys differently (xxh3 against md5), so the owners are not
compared; each call's result is checked for shape once, outside the timed part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from uhashring import HashRing as UHashRing

import bluewren

# At least 100 µs per round: a single lookup takes well under a microsecond, and a
# calibration thrown off by one slow call would otherwise settle on one call per
# round, timing the timer as much as the lookup.
pytestmark = pytest.mark.benchmark(min_time=100e-6)

NODE_NAMES = [f"node-{i}" for i in range(64)]
KEYS = [f"conversation:{i}" for i in range(1_000)]
SINGLE_KEY = KEYS[421]


@pytest.fixture(scope="module")
def bluewren_ring() -> bluewren.HashRing:
    return bluewren.HashRing([(name, 1) for name in NODE_NAMES])


@pytest.fixture(scope="module")
def uhash_ring() -> UHashRing:
    return UHashRing(nodes=list(NODE_NAMES))


def _run(benchmark: Any, group: str, impl: str, fn: Callable[..., Any], *args: Any) -> Any:
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    return benchmark(fn, *args)


def test_ring_get_bluewren(benchmark: Any, bluewren_ring: bluewren.HashRing) -> None:
    owner = _run(benchmark, "ring-get", "bluewren", bluewren_ring.get, SINGLE_KEY)
    assert owner in NODE_NAMES


def test_ring_get_uhashring(benchmark: Any, uhash_ring: UHashRing) -> None:
    owner = _run(benchmark, "ring-get", "uhashring", uhash_ring.get_node, SINGLE_KEY)
    assert owner in NODE_NAMES


def test_ring_get_many_bluewren(benchmark: Any, bluewren_ring: bluewren.HashRing) -> None:
    owners = _run(benchmark, "ring-get_many-1000", "bluewren", bluewren_ring.get_many, KEYS)
    assert len(owners) == len(KEYS)
    assert set(owners) <= set(NODE_NAMES)


def test_ring_get_many_uhashring(benchmark: Any, uhash_ring: UHashRing) -> None:
    get_node = uhash_ring.get_node

    def get_many(keys: list[str]) -> list[str]:
        return [get_node(key) for key in keys]

    owners = _run(benchmark, "ring-get_many-1000", "uhashring", get_many, KEYS)
    assert len(owners) == len(KEYS)
    assert set(owners) <= set(NODE_NAMES)
