"""Runs one load-test scenario headless against a fresh node on loopback.

    python loadtest/run.py direct -u 10 -r 10 -t 30s \
        -- --threshold-fail-ratio 0 --threshold-p99 "send->ack=50"

Starts ``python -m bluewren serve`` on 127.0.0.1 (a free port, a temporary data dir,
the rate limits lifted), runs Locust headless with ``--csv`` and ``--html`` into
``--out`` (default ``loadtest/results``), stops the node and exits with Locust's exit
code (1 when a threshold was missed or a request failed). Everything after ``--``
goes to Locust as is.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SCENARIOS = {
    "direct": "DirectChatUser",
    "group100": "Group100User",
    "group1000": "Group1000User",
    "storm": "ReconnectStormUser",
    "presence": "PresenceChurnUser",
}

LIFTED_LIMITS = (
    "send_rate=1000000",
    "send_burst=1000000",
    "connect_rate=100000",
    "connect_burst=100000",
    "login_rate=100000",
    "login_burst=100000",
    "max_typing_per_second=1000",
)


def start_node(
    data_dir: Path, secret: str, timeout: float = 30.0
) -> tuple[subprocess.Popen[str], str]:
    """A node subprocess on 127.0.0.1 and its ws:// URL (once it says it listens)."""
    cmd = [sys.executable, "-m", "bluewren", "serve", "--port", "0"]
    cmd += ["--data-dir", str(data_dir), "--log-level", "WARNING"]
    for item in ("host=127.0.0.1", *LIFTED_LIMITS):
        cmd += ["--set", item]
    env = {**os.environ, "BLUEWREN_TOKEN_SECRET": secret}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not found and line.startswith("bluewren node listening on ws://"):
                found.append(line.split(" on ", 1)[1].strip())
                ready.set()
            elif not found:
                sys.stderr.write(f"node: {line}")
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(timeout)
    if not found:
        stop_node(proc)
        raise RuntimeError(f"the node did not start within {timeout:g} s")
    return proc, found[0]


def stop_node(proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """SIGINT (a graceful stop), then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("-u", "--users", type=int, default=10, help="Locust users (10)")
    parser.add_argument("-r", "--spawn-rate", type=float, default=10.0, help="users/s (10)")
    parser.add_argument("-t", "--run-time", default="30s", help="run time, e.g. 30s, 2m (30s)")
    parser.add_argument("--processes", type=int, default=0, help="Locust worker processes")
    parser.add_argument("--out", default=str(HERE / "results"), help="CSV/HTML directory")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    with tempfile.TemporaryDirectory(prefix="bluewren-load-") as tmp:
        node, url = start_node(Path(tmp) / "data", secret)
        try:
            cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py")]
            cmd += ["--headless", "-H", url, "-u", str(args.users), "-r", str(args.spawn_rate)]
            cmd += ["-t", args.run_time, "--stop-timeout", "5", "--only-summary"]
            cmd += ["--csv", str(out / args.scenario), "--html", str(out / f"{args.scenario}.html")]
            if args.processes:
                cmd += ["--processes", str(args.processes)]
            cmd += [*extra, SCENARIOS[args.scenario]]
            env = {**os.environ, "BLUEWREN_TOKEN_SECRET": secret}
            started = time.monotonic()
            code = subprocess.call(cmd, env=env)
            print(f"locust exited {code} after {time.monotonic() - started:.1f} s", flush=True)
        finally:
            stop_node(node)
    return code


if __name__ == "__main__":
    sys.exit(main())
