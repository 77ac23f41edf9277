"""Smoke runs of the Locust load test (loadtest/) against a node subprocess on loopback.

Each run goes through loadtest/run.py: a node on 127.0.0.1 with a free port and a
temporary data dir, Locust headless for a few seconds, the node stopped.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

# Only look for locust: importing it monkey-patches this process with gevent, which
# would break every asyncio test that runs after this module.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed", allow_module_level=True)

RUN = Path(__file__).resolve().parents[1] / "loadtest" / "run.py"


def run_scenario(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def stats_rows(out: Path, scenario: str) -> dict[str, dict[str, str]]:
    with (out / f"{scenario}_stats.csv").open(newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_direct_chat_smoke_run_passes_with_acks_and_no_failures(tmp_path: Path) -> None:
    result = run_scenario(
        tmp_path,
        "direct",
        *("-u", "10", "-r", "10", "-t", "5s"),
        "--",
        *("--threshold-fail-ratio", "0", "--threshold-p99", "send->ack=60000"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = stats_rows(tmp_path, "direct")
    assert int(rows["send->ack"]["Request Count"]) > 0
    assert int(rows["send->deliver"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert (tmp_path / "direct.html").stat().st_size > 0


def test_impossible_p99_threshold_fails_the_run(tmp_path: Path) -> None:
    result = run_scenario(
        tmp_path,
        "direct",
        *("-u", "2", "-r", "2", "-t", "2s"),
        "--",
        *("--threshold-p99", "send->ack=0.001"),
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "THRESHOLDS MISSED" in output
    assert "--threshold-p99 0.001 ms" in output
    # The run itself was healthy: only the threshold failed it.
    assert int(stats_rows(tmp_path, "direct")["Aggregated"]["Failure Count"]) == 0


# Importing locust monkey-patches the process (gevent), so the unit checks run in a child.
ORDER_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
from locust.env import Environment
from bluewren_load.client import Delivery
from bluewren_load.users import ReconnectStormUser, stamp

env = Environment(user_classes=[ReconnectStormUser], host="ws://127.0.0.1:1/")
failures = []
env.events.request.add_listener(
    lambda name, exception=None, **kw: failures.append((name, str(exception)))
    if exception else None
)
user = ReconnectStormUser(env)
user.conv, user.last_seen, user.expect_up_to = 7, None, 0
import threading
user.arrived = threading.Event()
for seq in (1, 2, 2, 5, 6):
    user.check_order(Delivery(7, seq, seq, "w", "load", stamp(16)))
print(failures)
print(user.last_seen)
"""


def test_storm_reader_records_duplicates_and_gaps_as_failures() -> None:
    result = subprocess.run(
        [sys.executable, "-c", ORDER_CHECK, str(RUN.parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failures, last_seen = result.stdout.strip().splitlines()[-2:]
    assert failures == (
        "[('resume-order', 'duplicate at seq 2'), ('resume-order', 'gap of 2 at seq 5')]"
    )
    assert last_seen == "6"
