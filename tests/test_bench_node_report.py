"""benchmarks/bench_node.py rewrites only its latest-run block of results/node.md: the
measured history written below it survives every run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_node", ROOT / "benchmarks" / "bench_node.py")
assert spec is not None
assert spec.loader is not None
bench_node = importlib.util.module_from_spec(spec)
sys.modules["bench_node"] = bench_node
spec.loader.exec_module(bench_node)

TITLE = "# Node throughput (benchmarks/bench_node.py)"


def test_a_new_file_gets_the_title_and_the_block() -> None:
    text = bench_node.merge_report(None, "## Latest run\n\nA")
    assert text.startswith(f"{TITLE}\n\n{bench_node.LATEST_BEGIN}\n## Latest run\n\nA\n")
    assert text.endswith(f"{bench_node.LATEST_END}\n")


def test_the_block_goes_under_the_title_and_is_replaced_on_the_next_run() -> None:
    history = f"{TITLE}\n\nHost: two CPUs.\n\n## Round 3\n\n| a | b |\n"
    first = bench_node.merge_report(history, "## Latest run\n\nA")
    assert first.startswith(f"{TITLE}\n\n{bench_node.LATEST_BEGIN}\n")
    assert first.endswith("\n\nHost: two CPUs.\n\n## Round 3\n\n| a | b |\n")
    second = bench_node.merge_report(first, "## Latest run\n\nB")
    assert second == first.replace("\n\nA\n", "\n\nB\n")
    assert second.count(bench_node.LATEST_BEGIN) == 1


def test_the_committed_results_keep_their_history_through_a_run() -> None:
    committed = (ROOT / "benchmarks" / "results" / "node.md").read_text()
    merged = bench_node.merge_report(committed, "## Latest run\n\nnew numbers")
    assert "new numbers" in merged
    history = committed.split(bench_node.LATEST_END)[-1]
    assert history.strip()
    assert merged.endswith(history)


def test_a_run_at_a_given_rate_is_not_reported_against_the_half_rate_target(
    tmp_path: Path,
) -> None:
    """The p99 target is at half the peak: ``--rate`` runs say "fixed rate" instead."""
    results = dict.fromkeys(
        [
            "peak_acks", "peak_p50", "peak_p99", "peak_gen_cpu", "peak_node_cpu",
            "half_target", "half_acks", "half_p50", "half_p99", "half_gen_cpu",
            "fan_deliveries", "fan_messages", "fan_gen_cpu",
        ],
        1.0,
    )  # fmt: skip
    for rate, phase, target in ((0.0, "half rate", "p99 < 10 ms"), (5e4, "fixed rate", "—")):
        args = bench_node.argparse.Namespace(senders=2, window=2, members=3, rate=rate)
        out = tmp_path / f"node-{rate:g}.md"
        bench_node.write_report(out, args, results, "cmd")
        lines = out.read_text().splitlines()
        latency = next(line for line in lines if "ack latency at" in line and "peak" not in line)
        assert f"ack latency at {phase}," in latency
        assert latency.endswith(f"| {target} | |")
