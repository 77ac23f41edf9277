"""HashRing and BoundedLoad: placement pinned key for key against the pure-Python
reference of the normative placement in ``engine/src/ring.rs``, plus properties."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xxhash import xxh3_64_intdigest

from bluewren import BoundedLoad, HashRing, RingError, key_hash
from reference_ring import ReferenceRing

KEYS = [f"conv-{k}" for k in range(10_000)]
SMALL_VNODES = 64

node_names = st.text(min_size=1, max_size=12)
rings = st.dictionaries(node_names, st.integers(1, 4), min_size=1, max_size=12)
keys = st.one_of(st.text(max_size=24), st.binary(max_size=24))
fast = settings(max_examples=60, deadline=None)


def weighted_nodes(count: int) -> list[tuple[str, int]]:
    return [(f"node-{i}", 1 + i % 3) for i in range(count)]


def test_default_vnodes_is_4096() -> None:
    assert HashRing.DEFAULT_VNODES == 4096
    assert HashRing().vnodes == 4096


def test_key_hash_is_xxh3_64_of_the_key_bytes() -> None:
    for key in [b"", b"abc", b"conv-42", "ünïcode ✓".encode()]:
        assert key_hash(key) == xxh3_64_intdigest(key)
    assert key_hash("ünïcode ✓") == xxh3_64_intdigest("ünïcode ✓".encode())


def test_placement_matches_reference_for_64_weighted_nodes_at_default_vnodes() -> None:
    nodes = weighted_nodes(64)
    ring, ref = HashRing(nodes), ReferenceRing(nodes)
    assert ring.get_many(KEYS) == [ref.get(k) for k in KEYS]


def test_placement_matches_reference_after_removals_and_adds() -> None:
    nodes = weighted_nodes(64)
    ring, ref = HashRing(nodes, vnodes=SMALL_VNODES), ReferenceRing(nodes, vnodes=SMALL_VNODES)
    steps: list[tuple[str, int]] = [
        ("node-3", 0),
        ("node-40", 0),
        ("fresh-a", 2),
        ("node-17", 5),  # re-weighting an existing member
        ("node-63", 0),
        ("fresh-b", 1),
    ]
    for name, weight in steps:
        if weight == 0:
            assert ring.remove(name)
            ref.remove(name)
        else:
            ring.add(name, weight)
            ref.add(name, weight)
        assert ring.get_many(KEYS) == [ref.get(k) for k in KEYS], (name, weight)
    assert ring.nodes() == sorted(ref.weights.items())


def test_key_hashing_onto_a_point_belongs_to_that_points_node() -> None:
    # A point's own string hashes to the point itself: ">=" includes equality.
    ring = HashRing([("a", 1), ("b", 2), ("c", 3)], vnodes=4)
    for name, weight in ring.nodes():
        for i in range(weight * 4):
            assert ring.get(f"{name}#{i}") == name


def test_key_past_the_last_point_wraps_to_the_first_point() -> None:
    nodes = [("a", 1), ("b", 1), ("c", 1)]
    ring, ref = HashRing(nodes, vnodes=2), ReferenceRing(nodes, vnodes=2)
    wrapping = [k for k in KEYS if key_hash(k) > ref.hashes[-1]]
    assert wrapping, "with 6 points, about 1 key in 7 lies past the last one"
    assert {ring.get(k) for k in wrapping} == {ref.owners[0]}


def test_shares_are_the_exact_arcs_of_the_reference() -> None:
    nodes = weighted_nodes(16)
    ring, ref = HashRing(nodes, vnodes=SMALL_VNODES), ReferenceRing(nodes, vnodes=SMALL_VNODES)
    expected = ref.shares()
    got = dict(ring.shares())
    assert got.keys() == expected.keys()
    for name, share in got.items():
        assert share == pytest.approx(expected[name], rel=1e-12), name
    assert math.fsum(got.values()) == pytest.approx(1.0, rel=1e-12)


@fast
@given(rings, st.lists(keys, max_size=50), st.integers(1, 20))
def test_hypothesis_placement_and_get_n_match_reference(
    members: dict[str, int], sample: list[str | bytes], n: int
) -> None:
    ring = HashRing(list(members.items()), vnodes=8)
    ref = ReferenceRing(members.items(), vnodes=8)
    for key in sample:
        assert ring.get(key) == ref.get(key)
        assert ring.get_n(key, n) == ref.get_n(key, n)


def test_balance_at_default_vnodes_is_within_5_percent_for_64_equal_nodes() -> None:
    ring = HashRing([(f"node-{i}", 1) for i in range(64)])
    shares = [s for _, s in ring.shares()]
    assert len(shares) == 64
    assert math.fsum(shares) == pytest.approx(1.0, rel=1e-12)
    assert max(shares) / (1 / 64) <= 1.05


@fast
@given(rings, node_names, st.integers(1, 4), st.lists(keys, min_size=1, max_size=200))
def test_adding_a_node_moves_keys_only_to_it(
    members: dict[str, int], new: str, weight: int, sample: list[str | bytes]
) -> None:
    members.pop(new, None)
    ring = HashRing(list(members.items()), vnodes=16)
    before = ring.get_many(sample)
    ring.add(new, weight)
    after = ring.get_many(sample)
    for key, old, now in zip(sample, before, after, strict=True):
        assert now in (old, new), key


@fast
@given(rings, st.data(), st.lists(keys, min_size=1, max_size=200))
def test_removing_a_node_moves_only_its_keys(
    members: dict[str, int], data: st.DataObject, sample: list[str | bytes]
) -> None:
    gone = data.draw(st.sampled_from(sorted(members)))
    ring = HashRing(list(members.items()), vnodes=16)
    before = ring.get_many(sample)
    assert ring.remove(gone)
    after = ring.get_many(sample)
    for key, old, now in zip(sample, before, after, strict=True):
        if old == gone:
            assert now != gone, key
        else:
            assert now == old, key


@fast
@given(rings, st.data(), st.integers(1, 4), st.lists(keys, min_size=1, max_size=200))
def test_changing_a_weight_moves_keys_only_to_or_from_that_node(
    members: dict[str, int], data: st.DataObject, weight: int, sample: list[str | bytes]
) -> None:
    node = data.draw(st.sampled_from(sorted(members)))
    ring = HashRing(list(members.items()), vnodes=16)
    before = ring.get_many(sample)
    ring.add(node, weight)
    after = ring.get_many(sample)
    for key, old, now in zip(sample, before, after, strict=True):
        if weight > members[node]:
            assert now in (old, node), key
        else:
            assert now == old or old == node, key


@fast
@given(rings, keys, st.integers(0, 20))
def test_get_n_returns_distinct_nodes_primary_first(
    members: dict[str, int], key: str | bytes, n: int
) -> None:
    ring = HashRing(list(members.items()), vnodes=16)
    got = ring.get_n(key, n)
    assert len(got) == min(n, len(members))
    assert len(set(got)) == len(got)
    assert set(got) <= members.keys()
    if n:
        assert got[0] == ring.get(key)


@fast
@given(rings, st.lists(keys, max_size=600))
def test_get_many_equals_get_of_each_key(
    members: dict[str, int], sample: list[str | bytes]
) -> None:
    # 600 keys crosses the size at which get_many releases the GIL.
    ring = HashRing(list(members.items()), vnodes=16)
    assert ring.get_many(sample) == [ring.get(k) for k in sample]


@fast
@given(st.text(alphabet=st.characters(codec="ascii"), max_size=40))
def test_str_and_bytes_keys_route_the_same_for_ascii(key: str) -> None:
    ring = HashRing(weighted_nodes(8), vnodes=16)
    raw = key.encode("ascii")
    assert ring.get(key) == ring.get(raw)
    assert ring.get_n(key, 3) == ring.get_n(raw, 3)
    assert key_hash(key) == key_hash(raw)


def test_str_keys_are_hashed_as_utf8() -> None:
    ring = HashRing(weighted_nodes(8), vnodes=16)
    for key in ["é", "会话-7", "🐦"]:
        assert key_hash(key) == key_hash(key.encode("utf-8"))
        assert ring.get(key) == ring.get(key.encode("utf-8"))


@pytest.mark.parametrize("key", [42, 4.2, None, bytearray(b"k"), memoryview(b"k"), ["k"], ("k",)])
def test_non_str_non_bytes_keys_raise_type_error(key: object) -> None:
    ring = HashRing(weighted_nodes(4), vnodes=16)
    with pytest.raises(TypeError, match="str or bytes"):
        ring.get(key)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str or bytes"):
        ring.get_n(key, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str or bytes"):
        ring.get_many(["ok", key])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="str or bytes"):
        key_hash(key)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str or bytes"):
        BoundedLoad(ring).assign(key)  # type: ignore[arg-type]


def test_zero_weight_raises_ring_error_and_leaves_the_ring_unchanged() -> None:
    ring = HashRing([("a", 1)], vnodes=16)
    with pytest.raises(RingError, match="weight must be at least 1"):
        ring.add("b", 0)
    with pytest.raises(RingError, match="weight must be at least 1"):
        ring.add("a", 0)
    assert ring.nodes() == [("a", 1)]
    with pytest.raises(RingError, match="weight must be at least 1"):
        HashRing([("a", 1), ("b", 0)])


def test_empty_name_raises_ring_error() -> None:
    ring = HashRing(vnodes=16)
    with pytest.raises(RingError, match="name must not be empty"):
        ring.add("")
    with pytest.raises(RingError, match="name must not be empty"):
        HashRing([("", 1)])
    assert len(ring) == 0
    assert issubclass(RingError, ValueError)


def test_empty_ring_routes_nothing() -> None:
    ring = HashRing()
    assert ring.get("k") is None
    assert ring.get_many(["a", b"b"]) == [None, None]
    assert ring.get_n("k", 3) == []
    assert ring.shares() == []
    assert BoundedLoad(ring).assign("k") is None


def test_membership_queries() -> None:
    ring = HashRing([("b", 2), ("a", 1)], vnodes=16)
    assert len(ring) == 2
    assert "a" in ring
    assert "c" not in ring
    assert ring.nodes() == [("a", 1), ("b", 2)]
    assert not ring.remove("c")
    assert ring.remove("a")
    assert ring.nodes() == [("b", 2)]
    assert ring.get("anything") == "b"
    assert repr(ring) == "HashRing(nodes=1, vnodes=16)"


bounded_ops = st.lists(st.one_of(keys, st.integers(0, 11)), min_size=1, max_size=300)


@fast
@given(rings, st.sampled_from([0.01, 0.1, 0.25, 1.0]), bounded_ops)
def test_bounded_load_never_exceeds_capacity(
    members: dict[str, int], epsilon: float, ops: list[str | bytes | int]
) -> None:
    # An int op releases one key from the node of that index; anything else is assigned.
    names = sorted(members)
    bounded = BoundedLoad(HashRing(list(members.items()), vnodes=16), epsilon)
    loads = dict.fromkeys(names, 0)
    for op in ops:
        if isinstance(op, int):
            node = names[op % len(names)]
            assert bounded.release(node) == (loads[node] > 0)
            loads[node] = max(loads[node] - 1, 0)
        else:
            cap = bounded.capacity
            assert cap == math.ceil((1 + epsilon) * (sum(loads.values()) + 1) / len(names))
            owner = bounded.assign(op)
            assert owner in members
            loads[owner] += 1
            assert loads[owner] <= cap
        assert bounded.total == sum(loads.values())
        assert all(bounded.load(n) == loads[n] for n in names)


def test_bounded_load_first_assignment_goes_to_the_ring_owner() -> None:
    ring = HashRing(weighted_nodes(8), vnodes=16)
    for key in KEYS[:50]:
        assert BoundedLoad(ring).assign(key) == ring.get(key)


def test_bounded_load_spreads_a_hot_arc_without_exceeding_the_bound() -> None:
    ring = HashRing([(f"node-{i}", 1) for i in range(10)], vnodes=16)
    bounded = BoundedLoad(ring, 0.25)
    for key in KEYS[:5_000]:
        bounded.assign(key)
    assert bounded.total == 5_000
    assert max(bounded.load(f"node-{i}") for i in range(10)) <= math.ceil(1.25 * 5_000 / 10)


def test_bounded_load_release_of_unknown_or_idle_node_is_false() -> None:
    bounded = BoundedLoad(HashRing([("a", 1)], vnodes=16))
    assert not bounded.release("a")
    assert not bounded.release("nope")
    assert bounded.load("nope") == 0
    assert bounded.assign("k") == "a"
    assert bounded.release("a")
    assert bounded.total == 0


@pytest.mark.parametrize("epsilon", [0.0, -0.5, math.nan, math.inf])
def test_bounded_load_rejects_a_non_positive_or_non_finite_epsilon(epsilon: float) -> None:
    with pytest.raises(ValueError, match="epsilon must be a positive finite number"):
        BoundedLoad(HashRing([("a", 1)]), epsilon)
