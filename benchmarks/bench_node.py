"""Node throughput: durable 1:1 acks and group fan-out, node and load on separate CPUs.

    python benchmarks/bench_node.py [--duration 8] [--senders 64] [--window 32]
                                    [--members 1000] [--rate R] [--profile]
                                    [--out benchmarks/results/node.md]

The node runs as a subprocess, ``taskset -c 0 python -m bluewren serve`` (uvloop, the
default SQLite store with ``synchronous=NORMAL``, the message log, group commit) on a
fresh data directory.
This process is the load generator, pinned to CPU 1, on uvloop, speaking WebSocket
``bluewren.v1`` from raw sockets with pre-encoded masked frames: per message it only
writes prepared bytes and parses the 32-byte header of what comes back.

(a) Durable 1:1 sends: ``--senders`` connections, each in its own direct conversation
    with an offline peer (so the node does the durable write and the ACK; the delivery to
    the peer is its replay later). Peak: each connection keeps ``--window`` SENDs in
    flight (closed loop); acks/s and the send-to-ACK latency p50/p99. Half rate: an open
    loop paced at half the measured peak (or at ``--rate``), on a 1 ms tick; p50/p99 again.
(b) Group fan-out: ``--members`` connections, all members of one group, live (HELLO,
    SYNC); one more connection of the owner sends with ``--window`` in flight. Counts
    DELIVER frames received by all members (from the byte count: every delivery of a
    run has the same size) per second.

The generator's CPU share (user+sys over wall time) is reported beside each figure;
well below 100% means it was not the bottleneck. ``--profile`` runs the node under
cProfile and prints the top functions by own time after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import re
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from bluewren import (
    WsDecoder,
    client_handshake,
    encode_frame,
    encode_ws_frame,
    parse_handshake_response,
)
from bluewren.auth import TokenIssuer
from bluewren.node import Kind

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "node.md"
SECRET = "b" * 48
MASK = b"\x5a\x13\xc7\x2e"
HEADER = struct.Struct(">BBBBIQQQ")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ws(frame: bytes) -> bytes:
    return encode_ws_frame(2, frame, mask=MASK)


class Conn(asyncio.BufferedProtocol):
    """One WebSocket connection after the upgrade: writes prepared bytes, reads frames."""

    def __init__(self, pending: bytes, count_only: bool = False) -> None:
        self.buf = bytearray(1 << 18)
        self.ws = WsDecoder("client", 1 << 24, 1 << 24)
        self.count_only = count_only
        self.bytes_in = 0
        self.transport: asyncio.Transport | None = None
        self.on_frame: list[object] = []
        self.waiter: asyncio.Future[tuple[int, int, int, int, bytes]] | None = None
        self.queue: list[tuple[int, int, int, int, bytes]] = []
        self.on_ack: object = None
        self.pending = pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        if self.pending:
            self.feed(self.pending)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_in += nbytes
        if self.count_only:
            return
        self.feed(bytes(self.buf[:nbytes]))

    def feed(self, data: bytes) -> None:
        for _op, payload in self.ws.feed(data):
            off = 0
            while off < len(payload):
                _v, kind, _f, _r, n, conv, seq, cmid = HEADER.unpack_from(payload, off)
                body = payload[off + 32 : off + 32 + n]
                off += 32 + n
                if kind == Kind.ACK and self.on_ack is not None:
                    self.on_ack(cmid)  # type: ignore[operator]
                elif self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result((kind, conv, seq, cmid, body))
                else:
                    self.queue.append((kind, conv, seq, cmid, body))

    async def next(self) -> tuple[int, int, int, int, bytes]:
        if self.queue:
            return self.queue.pop(0)
        self.waiter = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(self.waiter, 30)

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(ws(frame))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))


async def open_conn(port: int, token: str, count_only: bool = False) -> Conn:
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(client_handshake(f"127.0.0.1:{port}", "/", key, ["bluewren.v1"]))
    buf = b""
    while (parsed := parse_handshake_response(buf, key)) is None:
        buf += sock.recv(65536)
    assert parsed[0] == 101, parsed
    sock.setblocking(False)
    transport, conn = await loop.connect_accepted_socket(lambda: Conn(buf[parsed[2] :]), sock)
    conn.transport = transport
    conn.send(encode_frame(Kind.HELLO, token.encode()))
    kind, *_ = await conn.next()
    assert kind == Kind.WELCOME, kind
    conn.send(encode_frame(Kind.SYNC, b"{}"))
    while (await conn.next())[0] != Kind.SYNCED:
        pass
    conn.count_only = count_only
    return conn


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def acks_closed_loop(
    conns: list[tuple[Conn, int]], window: int, duration: float, node_pid: int
) -> tuple[float, float, float, float, float]:
    """Peak: ``window`` SENDs in flight per connection. (acks/s, p50 ms, p99 ms, this
    process's CPU share, the node's CPU share), the shares over the measured window."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    acked = 0
    measuring = False
    stop = False
    # Pre-encoded masked frames (cmid i+1 for the i-th send of a connection).
    per_conn = int(200_000 * duration / len(conns)) + window + 1000
    for conn, conv in conns:
        body = b"benchmark message body " * 2
        frames = [ws(encode_frame(Kind.SEND, body, conv, 0, i + 1)) for i in range(per_conn)]
        sent_at: dict[int, float] = {}
        nxt = [0]

        def send_one(
            c: Conn = conn,
            f: list[bytes] = frames,
            s: dict[int, float] = sent_at,
            n: list[int] = nxt,
        ) -> None:
            i = n[0]
            n[0] = i + 1
            s[i + 1] = time.perf_counter()
            assert c.transport is not None
            c.transport.write(f[i])

        def on_ack(cmid: int, s: dict[int, float] = sent_at, send: object = send_one) -> None:
            nonlocal acked
            t0 = s.pop(cmid)
            if measuring:
                acked += 1
                latencies.append(time.perf_counter() - t0)
            if not stop:
                send()  # type: ignore[operator]

        conn.on_ack = on_ack
        for _ in range(window):
            send_one()
    await asyncio.sleep(1.0)  # warm-up
    measuring = True
    t0, c0, n0 = loop.time(), cpu_seconds(), proc_cpu_seconds(node_pid)
    await asyncio.sleep(duration)
    measuring = False
    elapsed, cpu = loop.time() - t0, cpu_seconds() - c0
    node = proc_cpu_seconds(node_pid) - n0
    stop = True
    await asyncio.sleep(1.0)  # let what is in flight come back
    p50, p99 = pct(latencies, 50) * 1e3, pct(latencies, 99) * 1e3
    return acked / elapsed, p50, p99, cpu / elapsed, node / elapsed


async def acks_open_loop(
    conns: list[tuple[Conn, int]], rate: float, duration: float, first_cmid: int
) -> tuple[float, float, float, float]:
    """A paced load of ``rate`` sends/s in total (1 ms tick). Same result tuple."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    acked = 0
    measuring = False
    per_conn = int(rate * (duration + 2) / len(conns)) + 100
    senders = []
    for conn, conv in conns:
        body = b"benchmark message body " * 2
        frames = [
            ws(encode_frame(Kind.SEND, body, conv, 0, first_cmid + i)) for i in range(per_conn)
        ]
        sent_at: dict[int, float] = {}

        def on_ack(cmid: int, s: dict[int, float] = sent_at) -> None:
            nonlocal acked
            t0 = s.pop(cmid, None)
            if measuring and t0 is not None:
                acked += 1
                latencies.append(time.perf_counter() - t0)

        conn.on_ack = on_ack
        senders.append((conn, frames, sent_at))
    per_tick = rate / 1000.0 / len(conns)
    index = 0
    start = loop.time()
    t_measure = start + 1.0
    t_end = t_measure + duration
    c0 = 0.0
    while True:
        now = loop.time()
        if not measuring and now >= t_measure:
            measuring, c0 = True, cpu_seconds()
        if now >= t_end:
            break
        # Catch up with the schedule (a 1 ms sleep often takes longer).
        k = int((now - start) * 1000.0 * per_tick) - index
        if k > 0:
            t = time.perf_counter()
            for conn, frames, sent_at in senders:
                assert conn.transport is not None
                for j in range(k):
                    sent_at[first_cmid + index + j] = t
                conn.transport.write(b"".join(frames[index : index + k]))
            index += k
        await asyncio.sleep(0.001)
    cpu = cpu_seconds() - c0
    elapsed = loop.time() - t_measure
    measuring = False
    await asyncio.sleep(1.0)
    return acked / elapsed, pct(latencies, 50) * 1e3, pct(latencies, 99) * 1e3, cpu / elapsed


async def fan_out(
    port: int, issuer: TokenIssuer, members: int, window: int, duration: float
) -> tuple[float, float, float]:
    """(deliveries/s, messages/s, generator cpu share) for a group of ``members``."""
    loop = asyncio.get_running_loop()
    owner = await open_conn(port, issuer.mint("owner", "send"))
    users = [f"m{i}" for i in range(members - 1)]
    owner.send(
        encode_frame(
            Kind.CREATE_GROUP, json.dumps({"title": "all", "members": users}).encode(), 0, 0, 1
        )
    )
    while True:
        kind, conv, *_ = await owner.next()
        if kind == Kind.CONVERSATION:
            break
    readers = [await open_conn(port, issuer.mint(u, "d1"), count_only=True) for u in users]
    readers.append(await open_conn(port, issuer.mint("owner", "read"), count_only=True))
    await asyncio.sleep(0.5)
    body = b"fan-out message to everyone in the group"
    deliver_size = len(
        encode_ws_frame(2, encode_frame(Kind.DELIVER, b"\0\x05owner\0\x04send" + body, conv, 1, 1))
    )
    total = int(2_000_000 * duration / members) + window + 1000
    frames = [ws(encode_frame(Kind.SEND, body, conv, 0, 100 + i)) for i in range(total)]
    nxt = [0]
    stop = False
    sent = 0

    def on_ack(cmid: int) -> None:
        nonlocal sent
        sent += 1
        if not stop and nxt[0] < total:
            assert owner.transport is not None
            owner.transport.write(frames[nxt[0]])
            nxt[0] += 1

    owner.on_ack = on_ack
    for _ in range(window):
        on_ack(0)
    await asyncio.sleep(1.0)
    b0 = sum(r.bytes_in for r in readers)
    s0, t0, c0 = sent, loop.time(), cpu_seconds()
    await asyncio.sleep(duration)
    b1 = sum(r.bytes_in for r in readers)
    elapsed = loop.time() - t0
    cpu = cpu_seconds() - c0
    msgs = sent - s0
    stop = True
    await asyncio.sleep(1.0)
    for r in [*readers, owner]:
        if r.transport is not None:
            r.transport.abort()
    return (b1 - b0) / deliver_size / elapsed, msgs / elapsed, cpu / elapsed


def start_node(data_dir: Path, profile: Path | None) -> tuple[subprocess.Popen[str], int]:
    cmd = ["taskset", "-c", "0", sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "bluewren"]
    cmd += ["serve", "--port", "0", "--data-dir", str(data_dir)]
    # Measure the engine, not the per-connection abuse limits.
    cmd += ["--set", "send_rate=1000000", "--set", "send_burst=1000000"]
    env = {**os.environ, "BLUEWREN_TOKEN_SECRET": SECRET}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"ws://[\d.]+:(\d+)/", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"node did not start: {line!r}")
    return proc, int(match.group(1))


async def bench(args: argparse.Namespace, port: int, pid: int) -> dict[str, float]:
    issuer = TokenIssuer(SECRET)
    out: dict[str, float] = {}
    conns: list[tuple[Conn, int]] = []
    for i in range(args.senders):
        conn = await open_conn(port, issuer.mint(f"u{i}", "d1"))
        conn.send(encode_frame(Kind.CREATE_DIRECT, json.dumps({"peer": f"p{i}"}).encode(), 0, 0, 1))
        while True:
            kind, conv, *_ = await conn.next()
            if kind == Kind.CONVERSATION:
                break
        conns.append((conn, conv))
    rate, p50, p99, cpu, node_cpu = await acks_closed_loop(conns, args.window, args.duration, pid)
    out |= {"peak_acks": rate, "peak_p50": p50, "peak_p99": p99, "peak_gen_cpu": cpu}
    out["peak_node_cpu"] = node_cpu
    print(f"peak: {rate:,.0f} acks/s p50 {p50:.2f} ms p99 {p99:.2f} ms gen cpu {cpu:.0%}")
    half = args.rate or rate / 2
    r2, p50b, p99b, cpu2 = await acks_open_loop(conns, half, args.duration, 10_000_000)
    out |= {"half_target": half, "half_acks": r2, "half_p50": p50b, "half_p99": p99b}
    out["half_gen_cpu"] = cpu2
    print(f"half: {r2:,.0f} acks/s p50 {p50b:.2f} ms p99 {p99b:.2f} ms gen cpu {cpu2:.0%}")
    for conn, _ in conns:
        if conn.transport is not None:
            conn.transport.abort()
    d, m, cpu3 = await fan_out(port, issuer, args.members, args.window, args.duration)
    out |= {"fan_deliveries": d, "fan_messages": m, "fan_gen_cpu": cpu3}
    print(f"fan-out: {d:,.0f} deliveries/s ({m:,.0f} messages/s) gen cpu {cpu3:.0%}")
    return out


LATEST_BEGIN = "<!-- latest run: written by benchmarks/bench_node.py; edits here are lost -->"
LATEST_END = "<!-- end of the latest run -->"


def merge_report(old: str | None, block: str) -> str:
    """``old`` with its latest-run block replaced by ``block`` (inserted after the title
    if it has none), so a run never erases the history written below it."""
    title = "# Node throughput (benchmarks/bench_node.py)"
    fenced = f"{LATEST_BEGIN}\n{block.rstrip()}\n{LATEST_END}"
    if not old:
        return f"{title}\n\n{fenced}\n"
    if LATEST_BEGIN in old and LATEST_END in old:
        head, _, rest = old.partition(LATEST_BEGIN)
        _, _, tail = rest.partition(LATEST_END)
        return f"{head}{fenced}{tail}"
    first, newline, rest = old.partition("\n")
    if first.startswith("# "):
        return f"{first}\n\n{fenced}\n{rest}" if newline else f"{first}\n\n{fenced}\n"
    return f"{title}\n\n{fenced}\n\n{old}"


def write_report(path: Path, args: argparse.Namespace, r: dict[str, float], cmd: str) -> None:
    # The p99 target is at half the peak; a --rate run measures some other load.
    phase, target = ("fixed rate", "—") if args.rate else ("half rate", "p99 < 10 ms")
    lines = [
        "## Latest run",
        "",
        f"Command: `{cmd}`",
        "",
        f"Host: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs. Node pinned to CPU 0 (uvloop, SQLite synchronous=NORMAL, "
        "the message log, group commit), generator pinned to CPU 1 (uvloop, raw sockets, "
        "pre-encoded masked frames).",
        "",
        "| measurement | result | target | generator CPU |",
        "|---|---:|---:|---:|",
        f"| (a) durable 1:1 acks/s at peak ({args.senders} connections x window "
        f"{args.window}) | {r['peak_acks']:,.0f} | >= 100,000 | {r['peak_gen_cpu']:.0%} |",
        f"| (a) ack latency at peak, p50 / p99 | {r['peak_p50']:.2f} / {r['peak_p99']:.2f} ms "
        "| — | |",
        f"| (a) {phase} ({r['half_target']:,.0f}/s offered): acks/s | {r['half_acks']:,.0f} "
        f"| | {r['half_gen_cpu']:.0%} |",
        f"| (a) ack latency at {phase}, p50 / p99 | {r['half_p50']:.2f} / "
        f"{r['half_p99']:.2f} ms | {target} | |",
        f"| (b) group fan-out deliveries/s, {args.members} online members | "
        f"{r['fan_deliveries']:,.0f} ({r['fan_messages']:,.0f} messages/s) | >= 1,000,000 | "
        f"{r['fan_gen_cpu']:.0%} |",
        "",
        f"Node CPU during the measured peak window: {r['peak_node_cpu']:.0%} of one core.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else None
    path.write_text(merge_report(old, "\n".join(lines)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="acks/s offered by the open-loop phase instead of half the measured peak "
        "(to compare the latency of two builds at the same load)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        profile = Path(tmp) / "node.prof" if args.profile else None
        proc, port = start_node(Path(tmp) / "data", profile)
        try:
            results = uvloop.run(bench(args, port, proc.pid))
        finally:
            proc.send_signal(2)
            proc.wait(30)
        if profile is not None and profile.exists():
            import pstats

            pstats.Stats(str(profile)).sort_stats("tottime").print_stats(25)
    cmd = "python benchmarks/bench_node.py " + " ".join(argv or sys.argv[1:])
    write_report(args.out, args, results, cmd.strip())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
