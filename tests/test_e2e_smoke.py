"""Smoke test of the end-to-end benchmark harness (benchmarks/e2e/run.py and report.py).

Runs the harness in ``--quick`` mode (rooms of 20 members, about a second per run) for
the node and the websockets peer, then checks that messages went through and that the
report renders. Uses the ``bluewren-loadgen`` binary that ``make rust-test`` (``cargo build
-p bluewren-loadgen``) leaves in target/debug/ (or a release build); skips without one.
The pure parts (which of two runs to keep, the --merge refusal, where each run was
measured) are tested directly, without servers.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
E2E = ROOT / "benchmarks" / "e2e"
RUN = E2E / "run.py"
REPORT = E2E / "report.py"


def load(name: str, path: Path) -> ModuleType:
    """Imports a benchmark script as a module (run.py imports report.py by name)."""
    if str(E2E) not in sys.path:
        sys.path.insert(0, str(E2E))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run_py = load("e2e_run", RUN)
report_py = load("e2e_report", REPORT)


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
            assert run["rss_per_conn_bytes"] is not None
            assert run["rss_per_conn_bytes"] > 0
            continue
        result = run["result"]
        assert result["deliveries"] > 0, run
        assert result["completed"] > 0, run
        assert result["errors"] == 0, run
        members = run["members"]
        assert members == (20 if run["workload"] == "fanout-1" else 2), run
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
    # Every run was stamped with the invocation that measured it.
    assert {(run["command"], run["started"]) for run in doc["runs"]} == {
        (doc["command"], doc["started"])
    }
    assert f"- Run: `{doc['command']}` started {doc['started']}, took" in text
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


def test_bad_rates_and_room_sizes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, message in (
        (["--equal-rate", "0"], "--equal-rate must be in (0, 100,000,000]"),
        (["--equal-rate", "1e9"], "--equal-rate must be in (0, 100,000,000]"),
        (["--equal-rate", "nan"], "--equal-rate must be in"),
        (["--members", "19501"], "--members must be at most 19500"),
    ):
        with pytest.raises(SystemExit) as exc:
            run_py.main(["--quick", *args, "--out", str(tmp_path / "x")])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # the help renders (argparse %-formats it)
        run_py.main(["--help"])
    assert exc.value.code == 0
    assert "--equal-rate" in capsys.readouterr().out
    # the edges themselves are accepted: refused later, by the missing loadgen
    for args in (["--equal-rate", "100000000"], ["--members", "19500"]):
        with pytest.raises(SystemExit, match="not found"):
            run_py.main(["--quick", *args, "--loadgen", str(tmp_path / "none")])


def run_record(ok: bool, other: float | None, tag: str) -> dict[str, Any]:
    return {"workload": "fanout-1", "server": "bluewren", "ok": ok, "other_cpu": other, "t": tag}


def test_retry_keeps_the_successful_least_disturbed_run() -> None:
    keep = run_py.least_disturbed
    # An undisturbed run (0.0) beats a disturbed one, whichever came first.
    assert keep(run_record(True, 0.0, "a"), run_record(True, 0.3, "b"))["t"] == "a"
    assert keep(run_record(True, 0.3, "a"), run_record(True, 0.0, "b"))["t"] == "b"
    # A failed rerun never replaces a run that succeeded, however quiet it was.
    assert keep(run_record(True, 0.5, "a"), run_record(False, 0.0, "b"))["t"] == "a"
    assert keep(run_record(False, 0.0, "a"), run_record(True, 0.9, "b"))["t"] == "b"
    # No other-CPU figure ranks after any figure; ties keep the first run.
    assert keep(run_record(True, None, "a"), run_record(True, 0.9, "b"))["t"] == "b"
    assert keep(run_record(True, 0.25, "a"), run_record(True, 0.25, "b"))["t"] == "a"


def test_merge_refuses_runs_of_another_size(tmp_path: Path) -> None:
    sizes = {"members": 20, "duration_s": 1.0, "retries": 1}
    doc = {"quick": True, "sizes": sizes}
    assert run_py.merge_conflict({"quick": True, "sizes": sizes | {"retries": 0}}, doc) is None
    assert "quick" in run_py.merge_conflict({"quick": False, "sizes": sizes}, doc)
    conflict = run_py.merge_conflict({"quick": True, "sizes": sizes | {"members": 1000}}, doc)
    assert conflict is not None
    assert "members 1000 there, 20 now" in conflict
    # Through the command line: refused before anything runs, the file left as it was.
    out = tmp_path / "e2e.json"
    earlier = {"quick": False, "sizes": {"members": 1000}, "runs": []}
    out.write_text(json.dumps(earlier))
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--merge", "--only", "pairs", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--merge:" in proc.stderr
    assert "another kind" in proc.stderr
    assert json.loads(out.read_text()) == earlier


def test_provenance_names_the_invocation_of_each_workload(tmp_path: Path) -> None:
    runs = [
        {"workload": "fanout-1", "server": "bluewren", "ok": True},
        {"workload": "pairs", "server": "bluewren", "ok": True},
        {"workload": "idle", "server": "bluewren", "ok": True},
    ]
    # A file of the older format: no stamps, a chain of --merge entries.
    old = {
        "command": "run.py --only idle --merge",
        "started": "2026-01-03T00:00:00+00:00",
        "elapsed_s": 5.0,
        "merged": {
            "command": "run.py --only pairs --merge",
            "started": "2026-01-02T00:00:00+00:00",
            "workloads": ["fanout-1", "pairs"],
            "earlier_merged": {
                "command": "run.py",
                "started": "2026-01-01T00:00:00+00:00",
                "workloads": ["fanout-1"],
            },
        },
        "runs": runs,
    }
    prov = report_py.provenance
    assert prov(old, runs[0]) == ("run.py", "2026-01-01T00:00:00+00:00")
    assert prov(old, runs[1]) == ("run.py --only pairs --merge", "2026-01-02T00:00:00+00:00")
    assert prov(old, runs[2]) == ("run.py --only idle --merge", "2026-01-03T00:00:00+00:00")
    assert report_py.run_lines(old) == [
        "- Run: `run.py` started 2026-01-01T00:00:00+00:00: fanout-1",
        "- Run: `run.py --only pairs --merge` started 2026-01-02T00:00:00+00:00: pairs",
        "- Run: `run.py --only idle --merge` started 2026-01-03T00:00:00+00:00, took 5.0 s: idle",
    ]
    # Merging stamps the kept runs: the next file credits the same commands, chain or not.
    kept = run_py.kept_runs(old, {"idle"})
    assert [(r["workload"], r["command"]) for r in kept] == [
        ("fanout-1", "run.py"),
        ("pairs", "run.py --only pairs --merge"),
    ]
    new = {"command": "run.py --only idle", "started": "2026-01-04T00:00:00+00:00"}
    new |= {"elapsed_s": 2.0, "runs": [*kept, runs[2] | new]}
    assert report_py.run_lines(new)[-1] == (
        "- Run: `run.py --only idle` started 2026-01-04T00:00:00+00:00, took 2.0 s: idle"
    )
    # One invocation: the single line the report always had, with no workload list.
    single = {"command": "run.py", "started": "S", "elapsed_s": 1.0, "runs": runs}
    assert report_py.run_lines(single) == ["- Run: `run.py` started S, took 1.0 s"]
    md = tmp_path / "RESULTS.md"
    text = report_py.render(old, tmp_path / "e2e.json", md, tmp_path)
    assert "Kept from an earlier run" not in text
    assert "- Run: `run.py --only pairs --merge` started 2026-01-02T00:00:00+00:00: pairs" in text


def test_finish_notes_an_exited_server_and_kills_the_loadgen() -> None:
    server_proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], text=True)
    server_proc.wait(30)
    gen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], text=True)
    record = run_py.new_record("fanout-1", "bluewren")
    with pytest.raises(ProcessLookupError):  # an OSError, not a RuntimeError
        run_py.proc_rss_kb(server_proc.pid)
    record["error"] = "no VmRSS"
    run_py.finish(record, run_py.Server("bluewren", server_proc, 0), gen)
    assert gen.returncode is not None  # killed, not left running
    assert record["ok"] is False
    assert record["error"] == "no VmRSS (server exited 3)"
