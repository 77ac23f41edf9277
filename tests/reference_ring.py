"""A pure-Python consistent-hash ring with the engine's normative placement.

It implements, and only implements, the placement specified in ``engine/src/ring.rs``:
a node with weight ``w`` owns ``w * vnodes`` points, point ``i`` of node ``name`` is
``xxh3_64(f"{name}#{i}")``, all points are sorted by ``(hash, name)``, and a key goes to
the first point whose hash is ``>=`` the key's ``xxh3_64``, wrapping to the first point.
"""

from bisect import bisect_left
from collections.abc import Iterable

from xxhash import xxh3_64_intdigest


def _hash(key: str | bytes) -> int:
    return xxh3_64_intdigest(key.encode() if isinstance(key, str) else key)


class ReferenceRing:
    """Brute-force ring: rebuilds every point on each membership change."""

    def __init__(self, nodes: Iterable[tuple[str, int]] = (), vnodes: int = 4096) -> None:
        self.vnodes = max(vnodes, 1)
        self.weights = dict(nodes)
        self._rebuild()

    def add(self, name: str, weight: int = 1) -> None:
        self.weights[name] = weight
        self._rebuild()

    def remove(self, name: str) -> None:
        del self.weights[name]
        self._rebuild()

    def _rebuild(self) -> None:
        points = sorted(
            (_hash(f"{name}#{i}"), name)
            for name, weight in self.weights.items()
            for i in range(weight * self.vnodes)
        )
        self.hashes = [h for h, _ in points]
        self.owners = [name for _, name in points]

    def _start(self, key: str | bytes) -> int:
        return bisect_left(self.hashes, _hash(key)) % len(self.hashes)

    def get(self, key: str | bytes) -> str | None:
        return self.owners[self._start(key)] if self.hashes else None

    def get_n(self, key: str | bytes, n: int) -> list[str]:
        """Up to ``n`` distinct owners clockwise from the key's point, primary first."""
        if not self.hashes:
            return []
        start, want, chosen = self._start(key), min(n, len(self.weights)), dict[str, None]()
        for j in range(len(self.owners)):
            if len(chosen) == want:
                break
            chosen.setdefault(self.owners[(start + j) % len(self.owners)])
        return list(chosen)

    def shares(self) -> dict[str, float]:
        """Exact fraction of the 2**64 hash space each node owns (point j owns (h[j-1], h[j]])."""
        owned = dict.fromkeys(self.weights, 0)
        for j, (h, name) in enumerate(zip(self.hashes, self.owners, strict=True)):
            owned[name] += h - self.hashes[j - 1] + (1 << 64 if j == 0 else 0)
        return {name: arc / 2**64 for name, arc in owned.items()}
