"""Percentiles of the store's stage timings, per benchmark phase (see sitecustomize.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PHASE_GAP_S = 0.5
"""A pause this long between two resolved batches starts a new benchmark phase."""
MIN_PHASE_WRITES = 1000


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: summarize.py /tmp/bluewren-stages-PID.json ...", file=sys.stderr)
        return 2
    for path in paths:
        rows = sorted(json.loads(Path(path).read_text()), key=lambda r: r[4])
        phases: list[list[list[float]]] = [[]]
        for prev, row in zip([None, *rows], rows, strict=False):
            if prev is not None and row[4] - prev[4] > PHASE_GAP_S:
                phases.append([])
            phases[-1].append(row)
        print(path)
        for k, part in enumerate(p for p in phases if len(p) >= MIN_PHASE_WRITES):
            print(f"  phase {k}: {len(part):,} writes over {part[-1][4] - part[0][4]:.1f} s")
            for i, label in enumerate(("queue ms", "commit ms", "hop ms", "batch")):
                xs = sorted(r[i] for r in part)
                scale = 1e3 if i < 3 else 1.0
                q = [xs[int(p * (len(xs) - 1))] * scale for p in (0.5, 0.9, 0.99)]
                print(f"    {label:<10} p50 {q[0]:8.2f}  p90 {q[1]:8.2f}  p99 {q[2]:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
