"""Smoke test of the end-to-end benchmark harness (benchmarks/e2e/run.py and report.py).

Runs the harness in ``--quick`` mode (rooms of 20 members, about a second per run) for
the node and the websockets peer, then checks that messages went through and that the
report renders. Uses the ``bluewren-loadgen`` binary that ``make rust-test`` (``cargo build
-p bluewren-loadgen``) leaves in target/debug/ (or a release build); skips without one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "e2e" / "run.py"
REPORT = ROOT / "benchmarks" / "e2e" / "report.py"


def loadgen() -> Path | None:
    """The newest built loadgen (debug or release), or None."""
    built = [
        p
        for p in (ROOT / "target" / d / "bluewren-loadgen" for d in ("debug", "release"))
        if p.exists()
    ]
    return max(built, key=lambda p: p.stat().st_mtime) if built else None


LOADGEN = loadgen()
needs_loadgen = pytest.mark.skipif(
    LOADGEN is None, reason="bluewren-loadgen not built: cargo build -p bluewren-loadgen"
)


@needs_loadgen
@pytest.mark.timeout(300)
def test_quick_run_node_and_websockets(tmp_path: Path) -> None:
    assert LOADGEN is not None
    out, md = tmp_path / "e2e.json", tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(RUN), "--quick", "--servers", "bluewren", "websockets"]
    cmd += ["--only", "fanout-1", "pairs", "idle", "--retries", "0"]
    cmd += ["--out", str(out), "--report", str(md)]
    cmd += ["--loadgen", str(LOADGEN), "--baseline", str(LOADGEN.with_name("none"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    assert doc["servers"]["baseline"]["available"] is False  # a missing binary is said so
    assert "not built" in doc["servers"]["baseline"]["reason"]
    seen = set()
    for run in doc["runs"]:
        seen.add((run["workload"], run["server"]))
        assert run["ok"], run
        if run["workload"] == "idle":
            assert run["connected"] == run["connections"] > 0
            assert run["rss_after_kb"] > 0
            continue
        result = run["result"]
        assert result["deliveries"] > 0, run
        assert result["completed"] > 0, run
        assert result["errors"] == 0, run
        members = 20 if run["workload"] == "fanout-1" else 2
        # Every completed message reached every other member of its room (give or take
        # the messages in flight at the edges of the measured window).
        edge = run["senders"] * run["in_flight"]
        assert result["deliveries"] >= (result["completed"] - edge) * (members - 1), run
        assert run["server_cpu"] is not None
        assert run["server_cpu"] > 0
    assert seen == {
        (w, s) for w in ("fanout-1", "pairs", "idle") for s in ("bluewren", "websockets")
    }
    text = md.read_text()
    assert "## fanout-1" in text
    assert "## pairs" in text
    assert "## idle" in text
    assert "| bluewren |" in text
    assert "| websockets |" in text
    assert "quick smoke run" in text
    assert "results/micro.md" in text
    assert (tmp_path / "e2e-fanout-1.png").stat().st_size > 0
    assert (tmp_path / "e2e-idle.png").stat().st_size > 0


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--members", "5", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--members must be at least 11" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(RUN), "--idle", "20000", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "fd limit" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_report_without_results_says_so(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPORT), "--json", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr
