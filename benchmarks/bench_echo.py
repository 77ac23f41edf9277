"""Echo throughput: ``python -m bluewren.echo`` against a picows echo server.

    python benchmarks/bench_echo.py [--duration 5] [--connections 1,16,64] [--windows 1,16]
                                    [--payloads 32,1024] [--out benchmarks/results/echo.md]

Both servers run as subprocesses on uvloop, pinned to one CPU (``taskset -c 0``);
this process is the load generator, pinned to the other CPU. For every payload
size and connection count it drives the two servers the same way, in
alternating slices (``--slices``, each with fresh connections and a warm-up), so
that anything else running on the machine falls on both alike:

- each connection completes the opening handshake and one checked echo on a
  blocking socket, then moves to a uvloop ``BufferedProtocol`` that keeps
  ``W`` masked binary frames in flight (each of ``--windows``; 1 is request and
  response, as a chat client does): each complete echo read sends one more frame,
  written from pre-encoded bytes;
- echoes are counted from the received byte count (every echo of a ``P``-byte
  payload is the same number of bytes) after the warm-up, for ``--duration``
  seconds per server in all; then sending stops and every frame in flight must
  come back;
- the machine's other CPU use over the window is measured too: a row whose runs
  other processes disturbed (more than ``--max-other-cpu`` cores) is run again,
  up to ``--attempts`` times, keeping the least disturbed run.

So the generator does almost no work per message; its CPU share over the
measured window is reported beside each figure (well below 100% means it was not
the bottleneck), as is the server's CPU time over the same window, and round
trips per second of server CPU time, which stays meaningful when other work
shares the cores.

Writes a markdown table with round trips per second for both servers and the
ratio bluewren/picows to ``benchmarks/results/echo.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import os
import platform
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "echo.md"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MASK = b"\x5a\x13\xc7\x2e"
OP_BINARY = 0x2
READ_SIZE = 1 << 18
STARTUP_TIMEOUT = 30.0
DRAIN_TIMEOUT = 10.0
GENERATOR_SATURATED = 0.9
"""Generator CPU share from which a server's msgs/s is only a lower bound."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

SERVERS = {
    "bluewren": [sys.executable, "-m", "bluewren.echo"],
    "picows": [sys.executable, str(HERE / "peers" / "picows_echo.py")],
}
"""Server name -> command line; ``--port 0`` is appended and the port read back."""


# -- frames ---------------------------------------------------------------------------


def frame_header(length: int, masked: bool) -> bytes:
    bit = 0x80 if masked else 0
    if length < 126:
        return struct.pack("!BB", 0x80 | OP_BINARY, bit | length)
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | OP_BINARY, bit | 126, length)
    return struct.pack("!BBQ", 0x80 | OP_BINARY, bit | 127, length)


def client_frame(payload: bytes) -> bytes:
    """A masked binary frame, as a client sends it."""
    n = len(payload)
    key = (MASK * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return frame_header(n, masked=True) + MASK + body


def server_frame(payload: bytes) -> bytes:
    """The unmasked binary frame a server echoes back."""
    return frame_header(len(payload), masked=False) + payload


# -- processes ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def busy_seconds() -> float:
    """CPU time all processes on the machine have used, from ``/proc/stat``."""
    with open("/proc/stat", "rb") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int


def start_server(name: str, cpu: int) -> Server:
    """Starts one server pinned to ``cpu`` and waits for its listening line."""
    cmd = ["taskset", "-c", str(cpu), *SERVERS[name], "--port", "0"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
        line = process.stdout.readline() if ready else b""
        if b"listening on ws://" in line:
            port = int(line.rsplit(b":", 1)[1].strip(b"/\r\n"))
            return Server(name, process, port)
        if not line and process.poll() is not None:
            break
    stop_server(Server(name, process, 0))
    raise RuntimeError(f"{name} did not start: {' '.join(cmd)}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


# -- load -----------------------------------------------------------------------------


def open_connection(port: int, request: bytes, reply: bytes) -> socket.socket:
    """Handshake and one checked echo on a blocking socket; returns it non-blocking."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed during the handshake")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if not head.startswith(b"HTTP/1.1 101") or accept not in head or rest:
        raise ConnectionError(f"bad handshake response: {data!r}")
    sock.sendall(request)
    echo = b""
    while len(echo) < len(reply):
        chunk = sock.recv(len(reply) - len(echo))
        if not chunk:
            raise ConnectionError("the server closed instead of echoing")
        echo += chunk
    if echo != reply:
        raise ConnectionError(f"bad echo: {echo[:32]!r}...")
    sock.setblocking(False)
    return sock


class Pump(asyncio.BufferedProtocol):
    """Keeps ``window`` frames in flight on one connection, counting echoes by bytes."""

    def __init__(self, frame: bytes, reply_len: int, window: int) -> None:
        self.batches = [frame * k for k in range(window + 1)]
        self.reply_len = reply_len
        self.window = window
        self.buffer = memoryview(bytearray(READ_SIZE))
        self.transport: asyncio.Transport | None = None
        self.running = True
        self.sent = 0
        self.completed = 0
        self.received = 0
        self.misaligned = 0
        self.lost: Exception | None = None
        self.drained: asyncio.Future[None] | None = None

    def stop(self) -> asyncio.Future[None]:
        """Stops sending; the future completes once every frame in flight is back."""
        self.running = False
        self.drained = asyncio.get_running_loop().create_future()
        self._check_drained()
        return self.drained

    def _check_drained(self) -> None:
        if self.drained is not None and not self.drained.done():
            if self.lost is not None:
                self.drained.set_exception(self.lost)
            elif self.completed == self.sent:
                self.drained.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        transport.write(self.batches[self.window])
        self.sent = self.window

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        # A read that starts on an echo boundary must start with a binary frame's
        # first byte: a cheap check that the stream is made of the expected echoes.
        if self.received % self.reply_len == 0 and self.buffer[0] != 0x80 | OP_BINARY:
            self.misaligned += 1
        self.received += nbytes
        done = self.received // self.reply_len
        fresh = done - self.completed
        if fresh:
            self.completed = done
            if self.running:
                assert self.transport is not None
                self.transport.write(self.batches[fresh])
                self.sent += fresh
            else:
                self._check_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("connection closed")
        self._check_drained()


@dataclass
class Result:
    server: str
    payload: int
    connections: int
    window: int
    msgs_per_s: float
    generator_cpu: float
    server_cpu_s: float
    wall_s: float
    other_cpu: float
    """CPU used by everything else on the machine during the window, in cores."""

    @property
    def per_cpu_second(self) -> float:
        """Round trips per second of server CPU time."""
        return self.msgs_per_s * self.wall_s / self.server_cpu_s if self.server_cpu_s else 0.0


async def drive(
    server: Server, payload: int, connections: int, window: int, warmup: float, duration: float
) -> Result:
    """One measured run against one server."""
    loop = asyncio.get_running_loop()
    body = bytes(range(256)) * (payload // 256) + bytes(range(payload % 256))
    request, reply = client_frame(body), server_frame(body)
    pumps: list[Pump] = []
    for _ in range(connections):
        sock = open_connection(server.port, request, reply)
        _, pump = await loop.create_connection(lambda: Pump(request, len(reply), window), sock=sock)
        pumps.append(pump)
    try:
        await asyncio.sleep(warmup)
        t0, n0 = time.perf_counter(), sum(p.completed for p in pumps)
        g0, s0, b0 = time.process_time(), cpu_seconds(server.process.pid), busy_seconds()
        await asyncio.sleep(duration)
        t1, n1 = time.perf_counter(), sum(p.completed for p in pumps)
        g1, s1, b1 = time.process_time(), cpu_seconds(server.process.pid), busy_seconds()
        drained = asyncio.gather(*(p.stop() for p in pumps), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained, DRAIN_TIMEOUT)
        for p in pumps:
            if p.lost or p.completed != p.sent or p.received != p.sent * len(reply):
                raise RuntimeError(
                    f"{server.name}: {p.sent} frames sent, {p.completed} echoed, "
                    f"{p.received} bytes received ({p.lost!r})"
                )
            if p.misaligned:
                raise RuntimeError(f"{server.name}: {p.misaligned} reads off an echo boundary")
    finally:
        for p in pumps:
            if p.transport is not None:
                p.transport.abort()
    wall = t1 - t0
    return Result(
        server=server.name,
        payload=payload,
        connections=connections,
        window=window,
        msgs_per_s=(n1 - n0) / wall,
        generator_cpu=(g1 - g0) / wall,
        server_cpu_s=s1 - s0,
        wall_s=wall,
        other_cpu=max(0.0, (b1 - b0) - (g1 - g0) - (s1 - s0)) / wall,
    )


# -- report ---------------------------------------------------------------------------


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def notes(bw: Result, pw: Result, args: argparse.Namespace) -> str:
    """Why a row's msgs/s may understate a server."""
    found = []
    if max(bw.other_cpu, pw.other_cpu) > args.max_other_cpu:
        found.append("disturbed by other work")
    for r in (bw, pw):
        if r.generator_cpu >= GENERATOR_SATURATED:
            found.append(f"generator saturated: {r.server} >= this")
    return "; ".join(found)


def report(results: list[Result], args: argparse.Namespace, load: tuple[float, float]) -> str:
    by_key = {(r.server, r.payload, r.connections, r.window): r for r in results}
    configs = dict.fromkeys((r.payload, r.connections, r.window) for r in results)
    lines = [
        "# Echo throughput: bluewren.echo against picows",
        "",
        f"{cpu_model()}, {os.cpu_count()} CPUs; Linux {platform.release()}; "
        f"Python {platform.python_version()}, uvloop {version('uvloop')}, "
        f"picows {version('picows')}. Both servers on uvloop, pinned to CPU {args.server_cpu}; "
        "the load generator (this script: raw sockets on uvloop, pre-encoded masked frames) "
        f"pinned to CPU {args.generator_cpu}. Each row: {args.duration:g} s measured per "
        f"server, cut into {args.slices} slices that alternate between the servers "
        f"(fresh connections and {args.warmup:g} s warm-up each), same load. "
        f"Load average (1 min) {load[0]:.2f} at the start, {load[1]:.2f} at the end. "
        "Generated by `python benchmarks/bench_echo.py`.",
        "",
        "- msgs/s: echoed round trips per second over all connections.",
        "- gen CPU: the load generator's CPU time over the run (100% = its core saturated).",
        "- server CPU: the server's CPU time over the run, as a share of one core.",
        "- msgs/CPU-s: round trips per second of server CPU time, the efficiency figure, "
        "which holds even where the generator or other work limited msgs/s.",
        "- other CPU: what every other process on the machine used meanwhile, in cores; "
        f"a row above {args.max_other_cpu:g} was run again (up to {args.attempts} times in "
        "all) and the least disturbed run is shown.",
        "",
        "| payload | conns | in flight/conn | bluewren msgs/s | picows msgs/s | "
        "bluewren/picows | gen CPU (bw / picows) | server CPU (bw / picows) | "
        "msgs/CPU-s (bw / picows) | per CPU-s ratio | other CPU (bw / picows) | notes |",
        "|---:|---:|---:|---:|---:|---:|---|---|---|---:|---|---|",
    ]
    for payload, conns, window in configs:
        bw = by_key[("bluewren", payload, conns, window)]
        pw = by_key[("picows", payload, conns, window)]
        bw_eff, pw_eff = bw.per_cpu_second, pw.per_cpu_second
        lines.append(
            f"| {payload} B | {conns} | {window} | {bw.msgs_per_s:,.0f} | "
            f"{pw.msgs_per_s:,.0f} | {bw.msgs_per_s / pw.msgs_per_s:.2f}x | "
            f"{bw.generator_cpu:.0%} / {pw.generator_cpu:.0%} | "
            f"{bw.server_cpu_s / bw.wall_s:.0%} / {pw.server_cpu_s / pw.wall_s:.0%} | "
            f"{bw_eff:,.0f} / {pw_eff:,.0f} | {bw_eff / pw_eff:.2f}x | "
            f"{bw.other_cpu:.2f} / {pw.other_cpu:.2f} | {notes(bw, pw, args)} |"
        )
    return "\n".join(lines)


def wait_for_quiet(threshold: float, timeout: float) -> None:
    """Waits until the rest of the machine uses under ``threshold`` cores for 2 s."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        b0 = busy_seconds()
        time.sleep(1.0)
        quiet = quiet + 1 if busy_seconds() - b0 < threshold else 0


def merge(parts: list[Result]) -> Result:
    """One result from the slices of a run: totals over their summed wall time."""
    wall = sum(r.wall_s for r in parts)
    first = parts[0]
    return Result(
        server=first.server,
        payload=first.payload,
        connections=first.connections,
        window=first.window,
        msgs_per_s=sum(r.msgs_per_s * r.wall_s for r in parts) / wall,
        generator_cpu=sum(r.generator_cpu * r.wall_s for r in parts) / wall,
        server_cpu_s=sum(r.server_cpu_s for r in parts),
        wall_s=wall,
        other_cpu=sum(r.other_cpu * r.wall_s for r in parts) / wall,
    )


def measure_pair(
    servers: list[Server], payload: int, conns: int, window: int, args: argparse.Namespace
) -> list[Result]:
    """Both servers under one load, in alternating slices so that other work on the
    machine falls on both alike; retried while such work disturbed it."""
    best: list[Result] = []
    for attempt in range(1, args.attempts + 1):
        wait_for_quiet(args.max_other_cpu, timeout=15.0)
        slices: dict[str, list[Result]] = {s.name: [] for s in servers}
        for i in range(args.slices):
            for server in servers if i % 2 == 0 else servers[::-1]:
                run = drive(
                    server, payload, conns, window, args.warmup, args.duration / args.slices
                )
                slices[server.name].append(uvloop.run(run))
        pair = [merge(slices[s.name]) for s in servers]
        for r in pair:
            print(
                f"{r.server:>8} payload={payload:>5} conns={conns:>3} window={window:>3}: "
                f"{r.msgs_per_s:>12,.0f} msgs/s, gen CPU {r.generator_cpu:.0%}, "
                f"server CPU {r.server_cpu_s / r.wall_s:.0%}, other CPU {r.other_cpu:.2f} "
                f"(attempt {attempt})",
                flush=True,
            )
        disturbance = max(r.other_cpu for r in pair)
        if not best or disturbance < max(r.other_cpu for r in best):
            best = pair
        if disturbance <= args.max_other_cpu:
            break
    return best


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="unmeasured seconds before each slice"
    )
    parser.add_argument(
        "--slices", type=int, default=5, help="alternating slices the duration is cut into"
    )
    parser.add_argument("--connections", type=int_list, default=[1, 16, 64])
    parser.add_argument(
        "--windows", type=int_list, default=[16], help="frames in flight per connection"
    )
    parser.add_argument("--payloads", type=int_list, default=[32, 1024])
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.1,
        help="retry a row while other processes used more than this many cores (default 0.1)",
    )
    parser.add_argument(
        "--attempts", type=int, default=2, help="runs per row at most; the least disturbed is kept"
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--generator-cpu", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    os.sched_setaffinity(0, {args.generator_cpu})
    load_start = os.getloadavg()[0]
    servers = [start_server(name, args.server_cpu) for name in SERVERS]
    results: list[Result] = []
    try:
        for payload, conns, window in itertools.product(
            args.payloads, args.connections, args.windows
        ):
            results.extend(measure_pair(servers, payload, conns, window, args))
    finally:
        for server in servers:
            stop_server(server)
    text = report(results, args, (load_start, os.getloadavg()[0]))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
