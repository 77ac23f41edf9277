"""Render the end-to-end benchmark results: RESULTS.md and one plot per workload.

    python benchmarks/e2e/report.py [--json benchmarks/results/e2e.json]
                                    [--md benchmarks/RESULTS.md] [--plots DIR]

Reads what ``run.py`` wrote and regenerates the report from it alone (no measuring).
Plots are PNG files (matplotlib, Agg backend) named ``e2e-<workload>.png``, written next
to the JSON unless ``--plots`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
DEFAULT_JSON = BENCH / "results" / "e2e.json"
DEFAULT_MD = BENCH / "RESULTS.md"
NODE = "bluewren"
LOAD_WORKLOADS = ("fanout-1", "fanout-10x4", "pairs", "latency-half", "latency-equal")
LATENCY_WORKLOADS = ("latency-half", "latency-equal")
TITLES = {
    "fanout-1": "Fan-out, 1 sender, 1 message in flight",
    "fanout-10x4": "Fan-out, 10 senders x 4 messages in flight",
    "pairs": "1:1 pairs, each sender 4 messages in flight",
    "latency-half": "Latency at half of the fanout-10x4 rate, one sender paced (open loop)",
    "latency-equal": "Latency at one rate for every server, one sender paced (open loop)",
    "idle": "Idle connections: RSS per connection",
}
LOADGEN_BOUND = 0.9  # loadgen CPU share at or above which a row is a lower bound
OTHER_RESULTS = [
    ("results/e2e-notes.md", "where the node's time goes, and why two targets are missed"),
    ("results/micro.md", "micro-benchmarks (native primitives against their peers)"),
    ("results/echo.md", "WebSocket echo throughput against picows"),
    ("results/node.md", "node throughput: durable 1:1 acks and group fan-out"),
    ("results/ring_balance.md", "consistent-hash ring balance and movement"),
]


def fmt_int(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def fmt_ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.2f}"


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def runs_of(doc: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    return [r for r in doc.get("runs", []) if r.get("workload") == workload]


def dps(run: dict[str, Any] | None) -> float | None:
    if not run or not run.get("ok"):
        return None
    value = (run.get("result") or {}).get("deliveries_per_s")
    return float(value) if value is not None else None


def by_server(doc: dict[str, Any], workload: str) -> dict[str, dict[str, Any]]:
    return {r["server"]: r for r in runs_of(doc, workload)}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def disturbed(doc: dict[str, Any]) -> float:
    """Other CPU above which run.py ran a measurement again."""
    return float((doc.get("sizes") or {}).get("disturbed_other_cpu", 0.2))


def load_table(doc: dict[str, Any], workload: str) -> list[str]:
    runs = by_server(doc, workload)
    # Latency runs: latency-half is offered a different rate per server, latency-equal the
    # same rate to all; either way the latencies compare, not the throughput.
    node = None if workload in LATENCY_WORKLOADS else dps(runs.get(NODE))
    lines = [
        "| server | deliveries/s | messages/s | p50 ms | p99 ms | server CPU | loadgen CPU "
        "| other CPU | deliveries per server CPU-s | node ÷ server | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, run in runs.items():
        res = run.get("result") or {}
        lat = res.get("latency_us") or {}
        cpu = run.get("server_cpu")
        d = dps(run)
        per_cpu = d / cpu if d is not None and cpu else None
        notes = []
        if not run.get("ok"):
            notes.append(f"FAILED: {run.get('error')}")
        gen_cpu = res.get("loadgen_cpu")
        if gen_cpu is not None and gen_cpu >= LOADGEN_BOUND:
            notes.append("loadgen-bound: a lower bound")
        if res.get("incomplete"):
            notes.append(f"{res['incomplete']:,} messages incomplete")
        if res.get("errors"):
            notes.append(f"{res['errors']} errors")
        other = run.get("other_cpu")
        if other is not None and other > disturbed(doc):
            notes.append(f"other processes used {other:.0%} of a CPU meanwhile")
        if run.get("attempts", 1) > 1:
            notes.append(f"the least disturbed of {run['attempts']} runs")
        if run.get("rate"):
            notes.append(f"{run.get('senders')} sender(s) offered {run['rate']:,.0f} msg/s")
        lines.append(
            f"| {name} | {fmt_int(d)} | {fmt_int(res.get('messages_per_s'))} "
            f"| {fmt_ms(lat.get('p50'))} | {fmt_ms(lat.get('p99'))} | {fmt_pct(cpu)} "
            f"| {fmt_pct(gen_cpu)} | {fmt_pct(run.get('other_cpu'))} | {fmt_int(per_cpu)} "
            f"| {fmt_ratio(ratio(node, d)) if name != NODE else ''} | {'; '.join(notes)} |"
        )
    return lines


def idle_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| server | connections | connected | RSS before (MiB) | RSS after (MiB) "
        "| RSS per connection (bytes) | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs_of(doc, "idle"):
        before, after = run.get("rss_before_kb"), run.get("rss_after_kb")
        lines.append(
            f"| {run['server']} | {fmt_int(run.get('connections'))} "
            f"| {fmt_int(run.get('connected'))} "
            f"| {'—' if before is None else f'{before / 1024:.1f}'} "
            f"| {'—' if after is None else f'{after / 1024:.1f}'} "
            f"| {fmt_int(run.get('rss_per_conn_bytes'))} "
            f"| {'' if run.get('ok') else 'FAILED: ' + str(run.get('error'))} |"
        )
    return lines


def targets(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, margin) rows; unmeasured targets say so."""
    rows: list[tuple[str, str, str, str]] = []
    f1, f10 = by_server(doc, "fanout-1"), by_server(doc, "fanout-10x4")

    def add(
        target: str,
        measured: float | None,
        goal: float,
        shown: str,
        met: Callable[[float, float], bool] = operator.ge,
        *,
        scale: float = 1.0,
        noun: str = "target",
        needs: bool = False,
        missing: str = "not measured",
    ) -> None:
        """A row: ``measured`` (shown as ``shown.format(measured / scale)``) against ``goal``."""
        if measured is None:
            rows.append((target, missing, "—", ""))
            return
        ok = met(measured, goal)
        margin = f"{measured / goal:.2f} of the {noun}"
        if needs and not ok and measured > 0:
            margin += f" (needs {goal / measured:.2f}x more)"
        rows.append((target, shown.format(measured / scale), "MET" if ok else "MISSED", margin))

    node10 = dps(f10.get(NODE))
    for peer, goal in (("websockets", 5.0), ("picows", 4.0)):
        add(
            f"fan-out (10 senders) deliveries/s >= {goal:g}x {peer}",
            ratio(node10, dps(f10.get(peer))),
            goal,
            "{:.2f}x",
            needs=True,
        )
    add(
        "fan-out (10 senders) deliveries/s ahead of socketify (> 1x)",
        ratio(node10, dps(f10.get("socketify"))),
        1.0,
        "{:.2f}x",
        operator.gt,
        needs=True,
    )
    add("fan-out >= 1,000,000 deliveries/s with ten senders", node10, 1e6, "{:,.0f}/s")
    add(
        "one message in flight: >= 0.8x the one-write-per-recipient baseline",
        ratio(dps(f1.get(NODE)), dps(f1.get("baseline"))),
        0.8,
        "{:.2f}x",
        needs=True,
    )
    for run in runs_of(doc, "idle"):
        if run.get("server") != NODE:
            continue
        add(
            f"idle: <= 4 KB (4,096 B) RSS per connection, {fmt_int(run.get('connections'))} conns",
            run.get("rss_per_conn_bytes") if run.get("ok") else None,
            4096,
            "{:,.0f} B",
            operator.le,
            noun="cap",
            missing="failed: " + str(run.get("error")),
        )
    half = by_server(doc, "latency-half").get(NODE)
    p99 = ((half or {}).get("result") or {}).get("latency_us", {}).get("p99")
    add(
        "p99 delivery latency < 5 ms at half the peak rate",
        p99 if half and half.get("ok") else None,
        5000,
        "{:.2f} ms",
        operator.lt,
        scale=1000,
        noun="bound",
    )
    return rows


def plot(doc: dict[str, Any], workload: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if workload == "idle":
        runs = [r for r in runs_of(doc, "idle") if r.get("rss_per_conn_bytes") is not None]
        if not runs:
            return False
        counts = sorted({r["connections"] for r in runs})
        servers = list(dict.fromkeys(r["server"] for r in runs))
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(counts)
        for k, n in enumerate(counts):
            vals = [
                next(
                    (
                        r["rss_per_conn_bytes"]
                        for r in runs
                        if r["server"] == s and r["connections"] == n
                    ),
                    0,
                )
                for s in servers
            ]
            ax.bar([i + k * width for i in range(len(servers))], vals, width, label=f"{n:,}")
        ax.axhline(4096, color="red", linestyle="--", linewidth=1, label="target 4 KB")
        ax.set_xticks([i + width * (len(counts) - 1) / 2 for i in range(len(servers))], servers)
        ax.set_ylabel("RSS per connection (bytes)")
        ax.legend(title="connections")
    else:
        runs = [r for r in runs_of(doc, workload) if dps(r) is not None]
        if not runs:
            return False
        servers = [r["server"] for r in runs]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        if workload in LATENCY_WORKLOADS:
            lat = [(r.get("result") or {}).get("latency_us") or {} for r in runs]
            xs = range(len(servers))
            ax.bar([x - 0.2 for x in xs], [v.get("p50", 0) / 1000 for v in lat], 0.4, label="p50")
            ax.bar([x + 0.2 for x in xs], [v.get("p99", 0) / 1000 for v in lat], 0.4, label="p99")
            ax.axhline(5, color="red", linestyle="--", linewidth=1, label="p99 target 5 ms")
            ax.set_xticks(list(xs), servers)
            ax.set_ylabel("delivery latency (ms)")
            ax.legend()
        else:
            vals = [dps(r) or 0.0 for r in runs]
            colors = ["tab:blue" if s == NODE else "tab:gray" for s in servers]
            ax.bar(servers, vals, color=colors)
            for i, v in enumerate(vals):
                ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
            ax.set_ylabel("deliveries per second")
    ax.set_title(TITLES[workload] + (" (quick)" if doc.get("quick") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def provenance(doc: dict[str, Any], run: dict[str, Any]) -> tuple[str | None, str | None]:
    """The command and start of the run.py invocation that measured ``run``.

    Runs carry them; runs written before they did fall back to the file's ``merged``
    chain (the workloads an older ``--merge`` kept) and then to the file's own.
    """
    if run.get("command") is not None:
        return run.get("command"), run.get("started")
    source: dict[str, Any] = doc
    merged = doc.get("merged")
    while merged:  # the deepest entry that lists the workload measured it
        if run.get("workload") in (merged.get("workloads") or []):
            source = merged
        merged = merged.get("earlier_merged")
    return source.get("command"), source.get("started")


def run_lines(doc: dict[str, Any]) -> list[str]:
    """One line per run.py invocation whose runs are in ``doc``, with their workloads."""
    measured: dict[tuple[str | None, str | None], list[str]] = {}
    for run in doc.get("runs", []):
        workloads = measured.setdefault(provenance(doc, run), [])
        if run.get("workload") not in workloads:
            workloads.append(run.get("workload"))
    own = (doc.get("command"), doc.get("started"))
    lines = []
    for key in sorted(measured, key=lambda k: k[1] or ""):
        line = f"- Run: `{key[0]}` started {key[1]}"
        if key == own:
            line += f", took {doc.get('elapsed_s')} s"
        if len(measured) > 1:
            line += f": {', '.join(measured[key])}"
        lines.append(line)
    return lines or [f"- Run: `{own[0]}` started {own[1]}, took {doc.get('elapsed_s')} s"]


def render(doc: dict[str, Any], json_path: Path, md: Path, plots: Path) -> str:
    m = doc.get("machine", {})
    sizes = doc.get("sizes", {})
    rel = os.path.relpath(plots, md.parent)
    lines = [
        "# End-to-end benchmark results",
        "",
        "Generated by `benchmarks/e2e/report.py` from "
        f"`{os.path.relpath(json_path, md.parent)}`"
        + (" — a **--quick smoke run**, not a measurement." if doc.get("quick") else "."),
        "",
        "## Machine and commands",
        "",
        f"- CPU: {m.get('cpu_model')} ({m.get('cpus')} CPUs); kernel {m.get('kernel')}; "
        f"Python {m.get('python')}; {m.get('rustc')}; fd limit {m.get('fd_limit')}",
        f"- Pinning: {m.get('pinning')}; the cores may be shared with other work.",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items() if v),
        *run_lines(doc),
        "- Regenerate this report: `python benchmarks/e2e/report.py`",
        "- Load generator: `bluewren-loadgen` (benchmarks/e2e/loadgen), one thread, epoll; "
        "built with `cargo build --release -p bluewren-loadgen`",
        f"- Sizes: room of {sizes.get('members')} members, {sizes.get('pairs')} pairs, "
        f"{sizes.get('message_bytes')}-byte messages, warm-up {sizes.get('warmup_s')} s, "
        f"measured {sizes.get('duration_s')} s per run, idle counts "
        f"{', '.join(f'{n:,}' for n in sizes.get('idle_counts', []))}, source addresses "
        f"{sizes.get('source_addrs', [''])[0]}..{sizes.get('source_addrs', [''])[-1]}",
        "- Node settings changed from the defaults (abuse limits lifted): "
        + ", ".join(f"`{k}={v}`" for k, v in (sizes.get("node_settings") or {}).items()),
        "",
        "The node (`python -m bluewren serve`) stores every message durably in SQLite "
        "before it fans out (ACK to the sender, DELIVER to the other members); the peers "
        "and the baseline relay the room protocol (benchmarks/e2e: every binary message to "
        "every other connection of the room) and store nothing. A delivery is one message "
        "received by one receiver; latency is per delivery, from the sender's write to the "
        "receiver's read, on the load generator's clock. Server CPU is the server process's "
        "utime+stime over the measured window (1.0 = one full core). A loadgen CPU of "
        f"{LOADGEN_BOUND:.0%} or more means the generator, not the server, may have been the "
        "limit: that row is a lower bound. Other CPU is what every other process on the "
        "machine used during the window; a run where it exceeded "
        f"{disturbed(doc):.0%} of a CPU was run again (`--retries`) "
        "and the least disturbed run kept.",
        "",
        "## Servers",
        "",
        "| server | version | available |",
        "|---|---|---|",
    ]
    for name, info in (doc.get("servers") or {}).items():
        avail = "yes" if info.get("available") else f"**no**: {info.get('reason')}"
        lines.append(f"| {name} | {info.get('version') or '—'} | {avail} |")
    lines += ["", "## Targets", "", "| target | measured | verdict | margin |", "|---|---|---|---|"]
    for row in targets(doc):
        lines.append("| " + " | ".join(row) + " |")
    for workload in (*LOAD_WORKLOADS, "idle"):
        if not runs_of(doc, workload):
            continue
        lines += ["", f"## {workload}: {TITLES[workload]}", ""]
        lines += idle_table(doc) if workload == "idle" else load_table(doc, workload)
        png = plots / f"e2e-{workload}.png"
        if plot(doc, workload, png):
            lines += ["", f"![{workload}]({rel}/{png.name})"]
    lines += ["", "## Other benchmark results", ""]
    for path, what in OTHER_RESULTS:
        lines.append(f"- [{path}]({path}): {what} (commands in [README.md](README.md))")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--md", type=Path, default=DEFAULT_MD)
    parser.add_argument("--plots", type=Path, default=None, help="default: the JSON's folder")
    args = parser.parse_args(argv)
    try:
        doc = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        print(f"report.py: cannot read {args.json}: {exc}", file=sys.stderr)
        return 2
    plots = (args.plots or args.json.parent).resolve()
    plots.mkdir(parents=True, exist_ok=True)
    md = args.md.resolve()
    md.write_text(render(doc, args.json.resolve(), md, plots))
    print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
