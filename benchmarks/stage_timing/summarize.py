"""Percentiles of the store's stage timings, per benchmark phase (see sitecustomize.py).

Per phase: each write's queue wait, commit and hop back, and its batch's size, apart for
the writes acknowledged after their commit and the message log's frames (acknowledged
before it: their queue and commit are SQLite's lag behind the log); the share of the
phase the writer spent committing and the gaps between two commits; the checkpoint steps
(how many, how long); the event loop's lag."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

PHASE_GAP_S = 0.5
"""A pause this long between two resolved batches starts a new benchmark phase."""
MIN_PHASE_WRITES = 1000


def quantiles(values: Sequence[float], scale: float = 1e3) -> str:
    """p50, p90, p99 and max of ``values`` (times ``scale``: seconds to ms)."""
    if not values:
        return "none"
    xs = sorted(values)
    q = [xs[int(p * (len(xs) - 1))] * scale for p in (0.5, 0.9, 0.99, 1.0)]
    return f"p50 {q[0]:8.2f}  p90 {q[1]:8.2f}  p99 {q[2]:8.2f}  max {q[3]:8.2f}"


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: summarize.py /tmp/bluewren-stages-PID.json ...", file=sys.stderr)
        return 2
    for path in paths:
        data = json.loads(Path(path).read_text())
        rows = sorted(data["writes"], key=lambda r: r[4])
        phases: list[list[list[float]]] = [[]]
        for prev, row in zip([None, *rows], rows, strict=False):
            if prev is not None and row[4] - prev[4] > PHASE_GAP_S:
                phases.append([])
            phases[-1].append(row)
        print(path)
        for k, part in enumerate(p for p in phases if len(p) >= MIN_PHASE_WRITES):
            start, end = part[0][4], part[-1][4]
            print(f"  phase {k}: {len(part):,} writes over {end - start:.1f} s")
            for logged, title in ((0, "acknowledged after the commit"), (1, "the log's")):
                mine = [r for r in part if (r[5] if len(r) > 5 else 0) == logged]
                if not mine:
                    continue
                print(f"    {title}: {len(mine):,}")
                for i, label in enumerate(("queue ms", "commit ms", "hop ms", "batch")):
                    values = [r[i] for r in mine]
                    print(f"      {label:<10} {quantiles(values, 1e3 if i < 3 else 1)}")
            commits = sorted(c for c in data["commits"] if start <= c[1] <= end)
            busy = sum(done - began for began, done in commits) / (end - start)
            gaps = [b[0] - a[1] for a, b in itertools.pairwise(commits)]
            print(f"    writer busy {busy:.0%}; gap ms  {quantiles(gaps)}")
            for step in (1, 2):
                took = [s for n, t, s in data["checkpoints"] if n == step and start <= t <= end]
                rate = len(took) / (end - start)
                print(f"    ckpt {step} ms  {quantiles(took)}  ({rate:.1f}/s)")
            lag = [s for t, s in data["lag"] if start <= t <= end]
            print(f"    loop lag ms  {quantiles(lag)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
