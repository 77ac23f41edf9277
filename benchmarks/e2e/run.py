"""End-to-end benchmarks: a BlueWren node against room servers built on other libraries.

    python benchmarks/e2e/run.py [--quick] [--only WORKLOAD ...] [--servers SERVER ...]

For each workload and server: start the server pinned to CPU 0 (``taskset -c 0``), wait
for it to listen, set it up (for the node: a fresh data directory holding the group of
``--members`` and the direct conversations, and a token per connection), write the load
plan, run the native load generator ``bluewren-loadgen`` pinned to CPU 1, sample the
server's CPU time (utime+stime, /proc/PID/stat) and RSS (VmRSS, /proc/PID/status), stop
the server. Everything lands in one JSON file (default benchmarks/results/e2e.json);
then ``report.py`` renders benchmarks/RESULTS.md and one plot per workload.

Workloads (full size; ``--quick`` shrinks them to a smoke run of seconds):
  fanout-1      one room (group) of 1,000 online members, 1 sender, 1 message in flight
  fanout-10x4   the same room, 10 senders x 4 messages in flight
  pairs         500 1:1 pairs (direct conversations), each one sender with 4 in flight
  latency-half  the same room, one sender paced (open loop) at half the messages/s that
                fanout-10x4 reached on the same server; p50/p99 delivery latency
  latency-equal the same room, one sender paced at the same rate for every server
                (--equal-rate, 150 messages/s: below every server's fanout-1 rate);
                p50/p99 delivery latency at equal offered load
  idle          10,000 connections, then 19,000 (what the 20,000 fd limit allows), over
                source addresses 127.0.0.1..127.0.0.8; RSS per connection

Servers: ``bluewren`` (``python -m bluewren serve``), ``websockets``, ``picows``,
``aiohttp``, ``socketify`` (benchmarks/peers/*_room.py) and ``baseline``
(``bluewren-room-baseline``: one write() per recipient). A server that cannot run here
is recorded as unavailable, with the reason, in the JSON and the report.
Messages are 100 bytes. Every message body starts with its send time; a delivery's
latency is its receive time minus that (both on the generator's clock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEERS = HERE.parent / "peers"
DEFAULT_OUT = HERE.parent / "results" / "e2e.json"
SECRET = "e2e-benchmark-token-secret-0123456789abcdef"
SERVERS = ("bluewren", "websockets", "picows", "aiohttp", "socketify", "baseline")
WORKLOADS = ("fanout-1", "fanout-10x4", "pairs", "latency-half", "latency-equal", "idle")
EQUAL_RATE = 150.0
"""Messages/s of latency-equal: every server sustains it with one message in flight."""
PEER_LIBRARIES = ("websockets", "picows", "aiohttp", "socketify")
MESSAGE_BYTES = 100
LOADGEN_MAX_RATE = 100_000_000.0
"""The loadgen's highest paced rate (MAX_RATE in benchmarks/e2e/loadgen/src/plan.rs)."""
MAX_CONNECTIONS = 19_500
"""Connections one run may open: server and loadgen each hold one fd per connection, and
the fd limit is 20,000 per process (some fds are taken by the process itself)."""
SOURCE_ADDRS = [f"127.0.0.{i}" for i in range(1, 9)]
# Idle runs: connections in setup at once. Below asyncio's default listen backlog (100),
# so that a burst of 19,000 connects never overflows a server's accept queue.
IDLE_CONNECT_BURST = 64
# A run during which other processes used more than this share of a CPU is run once more.
DISTURBED = 0.2
# The node's per-connection and per-address abuse limits, lifted so that they do not cap
# what is measured (every other node setting stays at its default).
NODE_SETTINGS = {
    "send_rate": 1_000_000,
    "send_burst": 1_000_000,
    "connect_rate": 1_000_000,
    "connect_burst": 1_000_000,
    "login_rate": 1_000_000,
    "login_burst": 1_000_000,
    "shed_loop_lag": 60,
}


@dataclass(frozen=True)
class Sizes:
    """How big each workload is: full run or --quick."""

    members: int = 1000
    pairs: int = 500
    warmup_s: float = 1.0
    duration_s: float = 8.0
    drain_s: float = 1.0
    idle_counts: tuple[int, ...] = (10_000, 19_000)
    idle_settle_s: float = 2.0


QUICK = Sizes(
    members=20,
    pairs=10,
    warmup_s=0.3,
    duration_s=1.0,
    drain_s=0.5,
    idle_counts=(100,),
    idle_settle_s=0.3,
)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    port: int
    log: list[str] = field(default_factory=list)


# --- environment ---------------------------------------------------------------------------


def pinned(cpu: int) -> list[str]:
    """``taskset -c CPU`` when the machine has two CPUs and taskset, else nothing."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid: int) -> int:
    """VmRSS of ``pid``; ProcessLookupError (an OSError) once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError as exc:
        raise ProcessLookupError(f"no process {pid}") from exc
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ProcessLookupError(f"no VmRSS for pid {pid} (exited)")


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    libs = {d: version_of(d) for d in ("websockets", "picows", "aiohttp", "socketify", "uvloop")}
    libs["bluewren"] = version_of("bluewren")
    rustc = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rustc = subprocess.run(
            ["rustc", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    nofile = None
    with contextlib.suppress(ImportError):
        import resource

        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "rustc": rustc,
        "fd_limit": nofile,
        "libraries": libs,
        "pinning": "server taskset -c 0, loadgen taskset -c 1" if pinned(0) else "none",
    }


def availability(loadgen: Path, baseline: Path) -> dict[str, dict[str, Any]]:
    """Which servers can run here, and why not for the others."""
    if not loadgen.exists():
        raise SystemExit(f"{loadgen} not found: cargo build --release -p bluewren-loadgen")
    out: dict[str, dict[str, Any]] = {}
    for name in SERVERS:
        reason = None
        if name == "baseline":
            if not baseline.exists():
                reason = f"{baseline} not built (cargo build --release -p bluewren-loadgen)"
        elif name in PEER_LIBRARIES:
            probe = subprocess.run(
                [sys.executable, "-c", f"import {name}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if probe.returncode != 0:
                last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
                reason = f"import {name} failed: {last}"
        out[name] = {
            "available": reason is None,
            "reason": reason,
            "version": version_of(name) if name != "baseline" else "bluewren-room-baseline",
        }
    return out


# --- servers -------------------------------------------------------------------------------


def server_command(name: str, port: int, data_dir: Path | None, baseline: Path) -> list[str]:
    if name == "bluewren":
        assert data_dir is not None
        cmd = [sys.executable, "-m", "bluewren", "serve", "--port", str(port)]
        cmd += ["--data-dir", str(data_dir), "--log-level", "WARNING"]
        for key, value in NODE_SETTINGS.items():
            cmd += ["--set", f"{key}={value}"]
        return cmd
    if name == "baseline":
        return [str(baseline), "--port", str(port)]
    return [sys.executable, str(PEERS / f"{name}_room.py"), "--port", str(port)]


def start_server(name: str, data_dir: Path | None, baseline: Path) -> Server:
    port = free_port()
    cmd = pinned(0) + server_command(name, port, data_dir, baseline)
    env = {**os.environ, "BLUEWREN_TOKEN_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    server = Server(name, proc, port)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    ready = re.compile(rf"READY {port}\b|ws://[\d.]+:{port}/")
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        server.log.append(line.rstrip())
        if ready.search(line):
            # Keep reading its output so that a chatty server never blocks on a full pipe.
            threading.Thread(target=keep_tail, args=(server,), daemon=True).start()
            wait_port(port)
            return server
    stop_server(server)
    raise RuntimeError(f"{name} did not start: {' | '.join(server.log[-5:])}")


def keep_tail(server: Server) -> None:
    assert server.proc.stdout is not None
    for line in server.proc.stdout:
        server.log.append(line.rstrip())
        del server.log[:-50]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


# --- plans ---------------------------------------------------------------------------------


@dataclass
class Shape:
    """The connections of one measured workload."""

    workload: str  # loadgen workload: fanout, pairs, idle
    rooms: list[list[int]]  # connection indices per room
    senders: set[int]
    in_flight: int
    rate: float | None = None


def fanout_shape(members: int, senders: int, in_flight: int) -> Shape:
    return Shape("fanout", [list(range(members))], set(range(senders)), in_flight)


def pairs_shape(pairs: int) -> Shape:
    rooms = [[2 * i, 2 * i + 1] for i in range(pairs)]
    return Shape("pairs", rooms, {2 * i for i in range(pairs)}, 4)


def paced_shape(members: int, rate: float) -> Shape:
    """One sender paced (open loop) at ``rate`` messages/s: messages arrive evenly spaced."""
    shape = fanout_shape(members, 1, 4)
    shape.rate = rate
    return shape


async def node_setup(data_dir: Path, shape: Shape) -> list[tuple[str, int]]:
    """Create each room as a group (or a direct conversation for two) in a fresh store.

    Returns (user, conversation) per connection. Done before the node starts: the same
    store calls the node makes for CREATE_GROUP / CREATE_DIRECT.
    """
    from bluewren.store import SQLiteStore

    n = sum(len(r) for r in shape.rooms)
    users = [("", 0)] * n
    async with SQLiteStore(data_dir / "bluewren.db") as store:
        for r, room in enumerate(shape.rooms):
            names = [f"u{i}" for i in room]
            if len(room) == 2:
                conv = await store.create_direct(names[0], names[1])
            else:
                conv = await store.create_group(names[0], f"room {r}", names[1:])
                got = len(await store.members(conv.id))
                if got != len(room):
                    raise RuntimeError(f"group {conv.id} has {got} members, not {len(room)}")
            for i, name in zip(room, names, strict=True):
                users[i] = (name, conv.id)
    return users


def mint_tokens(users: Sequence[str]) -> list[str]:
    """A node login token (device d1, valid a day) per user."""
    from bluewren.auth import TokenIssuer

    issuer = TokenIssuer(SECRET)
    return [issuer.mint(user, "d1", ttl=86_400) for user in users]


def connections(
    server: str, shape: Shape, users: list[tuple[str, int]] | None
) -> list[dict[str, Any]]:
    tokens = mint_tokens([u for u, _ in users]) if server == "bluewren" and users else None
    out: list[dict[str, Any]] = []
    for r, room in enumerate(shape.rooms):
        for i in room:
            conn: dict[str, Any] = {
                "room": f"r{r}",
                "send": i in shape.senders,
                "expect": len(room) - 1 if i in shape.senders else 0,
            }
            if tokens is not None and users is not None:
                conn |= {"token": tokens[i], "conversation": users[i][1]}
            out.append(conn)
    return out


def mint_idle(server: str, n: int) -> list[dict[str, Any]]:
    if server != "bluewren":
        return [{"room": "idle"} for _ in range(n)]
    return [{"token": t} for t in mint_tokens([f"i{i}" for i in range(n)])]


# --- one run -------------------------------------------------------------------------------


def window_cpu(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """CPU seconds per wall second between ``start`` and ``end`` (linear interpolation)."""

    def at(t: float) -> float | None:
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c0
        return None

    a, b = at(start), at(end)
    if a is None or b is None or end <= start:
        return None
    return (b - a) / (end - start)


def new_record(label: str, server_name: str, **fields: Any) -> dict[str, Any]:
    """The first fields of every run record (a failed run unless set otherwise)."""
    return {"workload": label, "server": server_name, "ok": False, "error": None, **fields}


def node_data_dir(tmp: Path, server_name: str, tag: str) -> Path | None:
    """A fresh data directory for the node; None for the other servers."""
    if server_name != "bluewren":
        return None
    data_dir = tmp / f"{server_name}-{tag}"
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def plan_header(server: Server, workload: str) -> dict[str, Any]:
    """The fields every load plan starts with."""
    return {
        "protocol": "bluewren" if server.name == "bluewren" else "room",
        "host": "127.0.0.1",
        "port": server.port,
        "source_addrs": SOURCE_ADDRS,
        "workload": workload,
    }


def write_plan(
    args: argparse.Namespace, tmp: Path, server_name: str, tag: str, plan: dict[str, Any]
) -> tuple[Path, list[str]]:
    """Writes ``plan``; returns where the loadgen will write its result, and its command."""
    plan_path = tmp / f"plan-{server_name}-{tag}.json"
    out_path = tmp / f"result-{server_name}-{tag}.json"
    plan_path.write_text(json.dumps(plan))
    cmd = [*pinned(1), str(args.loadgen), "--plan", str(plan_path), "--out", str(out_path)]
    return out_path, cmd


def finish(record: dict[str, Any], server: Server, gen: subprocess.Popen[str] | None) -> None:
    """Kills a loadgen still running, notes a server that exited early, stops the server."""
    if gen is not None and gen.poll() is None:
        gen.kill()
        gen.wait()
    if server.proc.poll() is not None:
        record["error"] = (record["error"] or "") + f" (server exited {server.proc.returncode})"
        record["ok"] = False
    stop_server(server)


def run_load(
    args: argparse.Namespace,
    sizes: Sizes,
    server_name: str,
    label: str,
    shape: Shape,
    tmp: Path,
) -> dict[str, Any]:
    """Start ``server_name``, drive ``shape`` through it, stop it. One record."""
    record = new_record(
        label,
        server_name,
        members=max(len(r) for r in shape.rooms),
        rooms=len(shape.rooms),
        senders=len(shape.senders),
        in_flight=shape.in_flight,
        rate=shape.rate,
    )
    data_dir = node_data_dir(tmp, server_name, label)
    users = asyncio.run(node_setup(data_dir, shape)) if data_dir is not None else None
    server = start_server(server_name, data_dir, args.baseline)
    gen: subprocess.Popen[str] | None = None
    try:
        plan = plan_header(server, shape.workload) | {
            "warmup_s": sizes.warmup_s,
            "duration_s": sizes.duration_s,
            "drain_s": sizes.drain_s,
            "message_bytes": MESSAGE_BYTES,
            "in_flight": shape.in_flight,
            "rate": shape.rate,
            "connections": connections(server_name, shape, users),
        }
        out_path, cmd = write_plan(args, tmp, server_name, label, plan)
        record["rss_before_kb"] = proc_rss_kb(server.proc.pid)
        t_start = time.monotonic()
        gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        samples: list[tuple[float, float]] = []
        machine: list[tuple[float, float]] = []
        rss_max = 0
        limit = t_start + 120 + sizes.warmup_s + sizes.duration_s + sizes.drain_s
        while gen.poll() is None:
            with contextlib.suppress(OSError):
                samples.append((time.monotonic(), proc_cpu_seconds(server.proc.pid)))
                machine.append((time.monotonic(), machine_busy_seconds()))
                rss_max = max(rss_max, proc_rss_kb(server.proc.pid))
            if time.monotonic() > limit:
                gen.kill()
                record["error"] = "loadgen timed out"
            time.sleep(0.05)
        _stdout, stderr = gen.communicate()
        with contextlib.suppress(OSError):  # the server may have exited meanwhile
            samples.append((time.monotonic(), proc_cpu_seconds(server.proc.pid)))
        machine.append((time.monotonic(), machine_busy_seconds()))
        record["loadgen_exit"] = gen.returncode
        record["loadgen_stderr"] = stderr.strip()[-2000:]
        record["server_rss_max_kb"] = rss_max
        if out_path.exists():
            result = json.loads(out_path.read_text())
            record["result"] = result
            begin = t_start + float(result.get("connect_s", 0.0)) + sizes.warmup_s
            end = begin + float(result.get("window_s", 0.0))
            record["server_cpu"] = window_cpu(samples, begin, end)
            busy = window_cpu(machine, begin, end)
            if busy is not None and record["server_cpu"] is not None:
                # What every other process used meanwhile (this harness's sampling too).
                other = busy - record["server_cpu"] - float(result.get("loadgen_cpu") or 0)
                record["other_cpu"] = max(0.0, other)
        if gen.returncode == 0 and record["error"] is None:
            record["ok"] = True
        elif record["error"] is None:
            record["error"] = (stderr.strip().splitlines() or [f"exit {gen.returncode}"])[-1]
    except ProcessLookupError as exc:  # the server exited: finish() says so
        record["error"] = str(exc)
    finally:
        finish(record, server, gen)
    return record


def run_idle(
    args: argparse.Namespace, sizes: Sizes, server_name: str, n: int, tmp: Path
) -> dict[str, Any]:
    """Connect ``n`` idle connections; RSS per connection from before and after."""
    record = new_record("idle", server_name, connections=n)
    tag = f"idle-{n}"
    server = start_server(server_name, node_data_dir(tmp, server_name, tag), args.baseline)
    gen: subprocess.Popen[str] | None = None
    try:
        plan = plan_header(server, "idle") | {
            "hold_s": 120.0,
            "connect_timeout_s": 120.0,
            "connect_burst": IDLE_CONNECT_BURST,
            "connections": mint_idle(server_name, n),
        }
        out_path, cmd = write_plan(args, tmp, server_name, tag, plan)
        time.sleep(sizes.idle_settle_s)
        before = proc_rss_kb(server.proc.pid)
        gen = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert gen.stdout is not None
        assert gen.stdin is not None
        line = gen.stdout.readline()
        match = re.match(r"READY (\d+)", line)
        if match is None:
            record["error"] = f"loadgen did not report READY: {line!r}"
        else:
            time.sleep(sizes.idle_settle_s)
            after = proc_rss_kb(server.proc.pid)
            connected = int(match.group(1))
            record |= {
                "connected": connected,
                "rss_before_kb": before,
                "rss_after_kb": after,
                "rss_per_conn_bytes": (after - before) * 1024 / connected if connected else None,
            }
        try:  # closes its stdin: the loadgen lets go of the connections and exits
            _, stderr = gen.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            gen.kill()
            _, stderr = gen.communicate()
            record["error"] = "loadgen did not finish"
        record["loadgen_exit"] = gen.returncode
        record["loadgen_stderr"] = stderr.strip()[-2000:]
        if out_path.exists():
            record["result"] = json.loads(out_path.read_text())
        if record["error"] is None:
            if gen.returncode == 0 and record.get("connected") == n:
                record["ok"] = True
            else:
                last = (stderr.strip().splitlines() or [f"exit {gen.returncode}"])[-1]
                record["error"] = f"{record.get('connected')} of {n} connected: {last}"
    except ProcessLookupError as exc:  # the server exited: finish() says so
        record["error"] = str(exc)
    finally:
        finish(record, server, gen)
    return record


# --- driver --------------------------------------------------------------------------------


def summary(record: dict[str, Any]) -> str:
    r = record.get("result") or {}
    if record["workload"] == "idle":
        per = record.get("rss_per_conn_bytes")
        txt = f"{record.get('connected', 0)}/{record.get('connections')} connected"
        if per is not None:
            txt += f", {per:,.0f} B RSS/conn"
    else:
        lat = r.get("latency_us") or {}
        cpu = record.get("server_cpu")
        txt = (
            f"{r.get('deliveries_per_s', 0):,.0f} deliveries/s "
            f"({r.get('messages_per_s', 0):,.0f} msg/s) p50 {lat.get('p50', 0)} us "
            f"p99 {lat.get('p99', 0)} us server cpu {cpu if cpu is None else f'{cpu:.0%}'} "
            f"loadgen cpu {r.get('loadgen_cpu', 0):.0%}"
        )
    if not record["ok"]:
        txt += f"  FAILED: {record['error']}"
    return txt


def rank(record: dict[str, Any]) -> tuple[bool, float]:
    """Sort key of the runs of one measurement: succeeded first, then least disturbed."""
    other = record.get("other_cpu")
    return (not record.get("ok"), math.inf if other is None else float(other))


def least_disturbed(first: dict[str, Any], again: dict[str, Any]) -> dict[str, Any]:
    """The run to keep of two: one that succeeded, then the lower other CPU (ties: first)."""
    return min(first, again, key=rank)


def merge_conflict(earlier: dict[str, Any], doc: dict[str, Any]) -> str | None:
    """Why the runs of ``earlier`` cannot sit next to those of ``doc``; None if they can."""
    if bool(earlier.get("quick")) != bool(doc.get("quick")):
        return f"quick is {earlier.get('quick')} there, {doc.get('quick')} now"
    before = {k: v for k, v in (earlier.get("sizes") or {}).items() if k != "retries"}
    now = {k: v for k, v in doc["sizes"].items() if k != "retries"}
    differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if differ:
        return "sizes differ: " + ", ".join(
            f"{k} {before.get(k)!r} there, {now.get(k)!r} now" for k in differ
        )
    return None


def kept_runs(earlier: dict[str, Any], measured: set[str]) -> list[dict[str, Any]]:
    """The runs of ``earlier`` for workloads not measured now, each stamped with the
    command and start of the run that measured it."""
    from report import provenance

    kept = []
    for run in earlier.get("runs", []):
        if run.get("workload") not in measured:
            command, started = provenance(earlier, run)
            kept.append(run | {"command": command, "started": started})
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON to write")
    parser.add_argument("--report", type=Path, default=None, help="RESULTS.md to write")
    parser.add_argument("--no-report", action="store_true", help="write the JSON only")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of --out's other workloads (those not measured now); "
        "refused when --out was measured with other sizes or --quick mode",
    )
    parser.add_argument(
        "--members", type=int, default=None, help=f"room size (1000; 11..{MAX_CONNECTIONS})"
    )
    parser.add_argument(
        "--equal-rate",
        type=float,
        default=EQUAL_RATE,
        help=f"messages/s of latency-equal, the same for every server ({EQUAL_RATE:g})",
    )
    parser.add_argument("--duration", type=float, default=None, help="measured s per run (8)")
    parser.add_argument(
        "--idle", type=int, nargs="+", default=None, help="idle connection counts (10000 19000)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help=f"runs more of a measurement disturbed by other processes (> {DISTURBED:.0%}% CPU)",
    )
    target = ROOT / "target"
    parser.add_argument("--loadgen", type=Path, default=target / "release" / "bluewren-loadgen")
    parser.add_argument(
        "--baseline", type=Path, default=target / "release" / "bluewren-room-baseline"
    )
    args = parser.parse_args(argv)
    changes: dict[str, Any] = {}
    if args.members is not None:
        if args.members < 11:
            parser.error("--members must be at least 11 (ten senders and a receiver)")
        if args.members > MAX_CONNECTIONS:
            parser.error(
                f"--members must be at most {MAX_CONNECTIONS} (the fd limit is 20,000 per process)"
            )
        changes["members"] = args.members
    if not 0 < args.equal_rate <= LOADGEN_MAX_RATE:
        parser.error(
            f"--equal-rate must be in (0, {LOADGEN_MAX_RATE:,.0f}] messages/s "
            "(the load generator's highest rate)"
        )
    if args.duration is not None:
        if not 0 < args.duration <= 600:
            parser.error("--duration must be in (0, 600] seconds")
        changes["duration_s"] = args.duration
    if not 0 <= args.retries <= 5:
        parser.error("--retries must be 0..5")
    if args.idle is not None:
        if any(not 1 <= n <= MAX_CONNECTIONS for n in args.idle):
            parser.error(
                f"--idle counts must be 1..{MAX_CONNECTIONS} (the fd limit is 20,000 per process)"
            )
        changes["idle_counts"] = tuple(args.idle)
    sizes = replace(QUICK if args.quick else Sizes(), **changes)
    with contextlib.suppress(OSError, AttributeError):
        if pinned(1):
            os.sched_setaffinity(0, {1})
    started = dt.datetime.now(dt.UTC)
    command = shlex.join(
        ["python", "benchmarks/e2e/run.py", *(argv if argv is not None else sys.argv[1:])]
    )
    stamp = {"command": command, "started": started.isoformat(timespec="seconds")}
    doc: dict[str, Any] = {
        **stamp,
        "quick": args.quick,
        "sizes": {
            "members": sizes.members,
            "pairs": sizes.pairs,
            "warmup_s": sizes.warmup_s,
            "duration_s": sizes.duration_s,
            "drain_s": sizes.drain_s,
            "idle_counts": list(sizes.idle_counts),
            "message_bytes": MESSAGE_BYTES,
            "source_addrs": SOURCE_ADDRS,
            "idle_connect_burst": IDLE_CONNECT_BURST,
            "disturbed_other_cpu": DISTURBED,
            "retries": args.retries,
            "node_settings": NODE_SETTINGS,
        },
    }
    want = set(args.only)
    if "latency-half" in want:
        want.add("fanout-10x4")  # its rate is half of fanout-10x4's
    kept: list[dict[str, Any]] = []
    if args.merge and args.out.exists():
        try:
            earlier = json.loads(args.out.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--merge: cannot read {args.out}: {exc}")
        conflict = merge_conflict(earlier, doc)
        if conflict is not None:
            parser.error(f"--merge: {args.out} holds runs of another kind ({conflict})")
        kept = kept_runs(earlier, want)
    servers = availability(args.loadgen, args.baseline)
    doc |= {
        "machine": machine_info(),
        "servers": servers,
        "selected": {"workloads": args.only, "servers": args.servers},
    }
    for name in args.servers:
        if not servers[name]["available"]:
            print(f"{name}: unavailable: {servers[name]['reason']}", flush=True)
    plan: list[tuple[str, Shape | None]] = []
    m = sizes.members
    for label in WORKLOADS:
        if label not in want:
            continue
        shape: Shape | None
        if label == "fanout-1":
            shape = fanout_shape(m, 1, 1)
        elif label == "fanout-10x4":
            shape = fanout_shape(m, 10, 4)
        elif label == "pairs":
            shape = pairs_shape(sizes.pairs)
        elif label == "latency-equal":
            shape = paced_shape(m, args.equal_rate)
        else:  # latency-half: its rate comes from fanout-10x4; idle: no shape
            shape = None
        plan.append((label, shape))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bluewren-e2e-") as tmpdir:
        tmp = Path(tmpdir)
        for label, shape in plan:
            for name in args.servers:
                if not servers[name]["available"]:
                    continue
                records: list[dict[str, Any]] = []
                try:
                    if label == "idle":
                        for n in sizes.idle_counts:
                            try:
                                records.append(run_idle(args, sizes, name, n, tmp))
                            except Exception as exc:
                                records.append(
                                    new_record(label, name, connections=n, error=repr(exc))
                                )
                            print(f"idle {n:<7} {name:<10} {summary(records[-1])}", flush=True)
                        runs.extend(records)
                        continue
                    if label == "latency-half":
                        peak = next(
                            (
                                r
                                for r in runs
                                if r["workload"] == "fanout-10x4"
                                and r["server"] == name
                                and r.get("ok")
                            ),
                            None,
                        )
                        rate = (peak or {}).get("result", {}).get("messages_per_s") or 0
                        if not rate:
                            error = "no successful fanout-10x4 rate to halve"
                            runs.append(new_record(label, name, error=error))
                            continue
                        shape = paced_shape(m, rate / 2)
                    assert shape is not None
                    record = run_load(args, sizes, name, label, shape, tmp)
                    attempts = 1
                    while (record.get("other_cpu") or 0) > DISTURBED and attempts <= args.retries:
                        # Other work on the machine took CPU meanwhile: run once more and
                        # keep the less disturbed run.
                        again = run_load(args, sizes, name, label, shape, tmp)
                        attempts += 1
                        record = least_disturbed(record, again)
                    record["attempts"] = attempts
                    records.append(record)
                except Exception as exc:  # one broken run must not lose the others
                    records.append(new_record(label, name, error=repr(exc)))
                runs.extend(records)
                for rec in records:
                    print(f"{label:<12} {name:<10} {summary(rec)}", flush=True)
    for run in runs:
        run |= stamp
    order = {w: i for i, w in enumerate(WORKLOADS)}
    doc["runs"] = sorted([*kept, *runs], key=lambda r: order.get(r.get("workload", ""), 99))
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    doc["elapsed_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out} ({doc['elapsed_s']} s)", flush=True)
    if not args.no_report:
        cmd = [sys.executable, str(HERE / "report.py"), "--json", str(args.out)]
        if args.report is not None:
            cmd += ["--md", str(args.report)]
        subprocess.run(cmd, check=True)
    failed = [r for r in runs if not r.get("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
