"""Autobahn|Testsuite's fuzzing client against the echo server.

Autobahn|Testsuite (``wstest``) runs on Python 2.7 only, so it lives in its own
virtualenv, found through ``$BLUEWREN_WSTEST``, then ``PATH``, then the place the
recipe below installs it; without it the test is skipped. The recipe::

    python2.7 -m pip install 'virtualenv<20.22'
    python2.7 -m virtualenv /opt/autobahn-py27
    /opt/autobahn-py27/bin/pip install autobahntestsuite==25.10.1

The framing, ping/pong, reserved bits, opcodes, fragmentation, UTF-8, closing and
auto-fragmentation groups run (1-7 and 10); compression (12, 13) is not offered by
the server and performance (9) belongs to the benchmarks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import EchoServer

CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
WSTEST_ENV = "BLUEWREN_WSTEST"
WSTEST_INSTALLED = Path("/opt/autobahn-py27/bin/wstest")
WSTEST_TIMEOUT = 240.0

# "FAILED" is Autobahn's verdict on the exchange; on the closing handshake a wrong
# close code, an unclean close where a clean one is required, or a close by the wrong
# endpoint are failures too.
FAILED_CLOSE = {"FAILED", "WRONG CODE", "UNCLEAN"}


def find_wstest() -> str | None:
    """``wstest`` from ``$BLUEWREN_WSTEST``, ``PATH`` or the recipe's virtualenv."""
    configured = os.environ.get(WSTEST_ENV)
    if configured:
        # Named on purpose, so a wrong name is an error, not a silent skip.
        if not os.access(configured, os.X_OK):
            pytest.fail(f"{WSTEST_ENV}={configured} is not an executable wstest")
        return configured
    on_path = shutil.which("wstest")
    if on_path:
        return on_path
    return str(WSTEST_INSTALLED) if os.access(WSTEST_INSTALLED, os.X_OK) else None


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def run_fuzzingclient(wstest: str, server: EchoServer, workdir: Path) -> dict[str, Any]:
    """Runs every case in ``CASES`` against ``server``; returns ``{case id: verdict}``."""
    agent = f"bluewren-echo-{server.loop}"
    outdir = workdir / "reports"
    spec = {
        "outdir": str(outdir),
        "servers": [{"agent": agent, "url": server.url}],
        "cases": CASES,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    spec_file = workdir / "fuzzingclient.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    proc = subprocess.run(
        [wstest, "--mode", "fuzzingclient", "--spec", str(spec_file)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=WSTEST_TIMEOUT,
        check=False,
    )
    log = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, f"wstest exited with {proc.returncode}:\n{log[-3000:]}"
    verdicts: dict[str, Any] = json.loads((outdir / "index.json").read_text())[agent]
    for case_id, verdict in verdicts.items():
        verdict["detail"] = json.loads((outdir / verdict["reportfile"]).read_text())
        verdict["id"] = case_id
    return verdicts


def describe(verdict: dict[str, Any]) -> str:
    detail = verdict["detail"]
    return (
        f"{verdict['id']}: {verdict['behavior']} / close {verdict['behaviorClose']} "
        f"(server sent close code {verdict.get('remoteCloseCode')})\n"
        f"    case: {detail.get('description', '').strip()[:300]}\n"
        f"    expected: {detail.get('expectation', '').strip()[:300]}\n"
        f"    result: {detail.get('result', '')} / {detail.get('resultClose', '')}"
    )


@pytest.fixture(scope="module")
def wstest() -> str:
    """The ``wstest`` executable; skips the module's tests when there is none."""
    found = find_wstest()
    if found is None:
        pytest.skip(
            "Autobahn|Testsuite needs Python 2.7 (wstest not found); install it into a "
            f"virtualenv (see {Path(__file__).name}) and set {WSTEST_ENV} to its wstest"
        )
    return found


def test_autobahn_fuzzingclient_finds_no_failed_case(
    wstest: str, echo_server: EchoServer, tmp_path: Path
) -> None:
    # ``wstest`` comes first so that a skip starts no server.
    verdicts = run_fuzzingclient(wstest, echo_server, tmp_path)
    ordered = sorted(verdicts.values(), key=lambda v: case_key(v["id"]))

    groups = {case_id.split(".")[0] for case_id in verdicts}
    assert groups == {c.split(".")[0] for c in CASES}, f"groups that ran: {sorted(groups)}"
    counts = Counter(f"{v['behavior']} / {v['behaviorClose']}" for v in ordered)
    print(f"\nAutobahn|Testsuite, {len(ordered)} cases on {echo_server.loop}: {dict(counts)}")
    for verdict in ordered:
        if verdict["behavior"] != "OK" or verdict["behaviorClose"] != "OK":
            print(describe(verdict))

    failed = [v for v in ordered if v["behavior"] == "FAILED" or v["behaviorClose"] in FAILED_CLOSE]
    assert not failed, f"{len(failed)} failed cases:\n" + "\n".join(map(describe, failed))
