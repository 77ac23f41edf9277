"""The open-file limit at ``bluewren serve`` start: the soft RLIMIT_NOFILE goes up to the
hard limit (or to ``max_open_files``), and a ``max_connections`` that cannot fit is
warned about. Real processes, started with a low soft limit; the limit they run with is
read from /proc/PID/limits."""

from __future__ import annotations

import re
import resource
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bluewren.node.lifecycle import EXIT_CONFIG, FD_HEADROOM
from conftest import node_env, reap, serve_process

SECRET = "f" * 48
TIMEOUT = 30.0
START_SOFT = 256
HARD = 4096

_OWN_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

pytestmark = [
    pytest.mark.skipif(
        not Path("/proc/self/limits").exists(), reason="needs /proc/PID/limits (Linux)"
    ),
    pytest.mark.skipif(
        _OWN_HARD != resource.RLIM_INFINITY and _OWN_HARD < HARD,
        reason=f"the children are started with a hard open-file limit of {HARD}",
    ),
]


def _limits(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def _serve(tmp_path: Path, *sets: str) -> subprocess.Popen[str]:
    args = ["--port", "0", "--data-dir", str(tmp_path / "data"), "--shutdown-timeout", "3"]
    for item in sets:
        args += ["--set", item]
    return serve_process(
        *args,
        env=node_env(BLUEWREN_TOKEN_SECRET=SECRET),
        preexec_fn=_limits(START_SOFT, HARD),
    )


def _open_files(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", text, re.M)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def _run(tmp_path: Path, *sets: str) -> tuple[tuple[int, int], str]:
    """((soft, hard) of the running node, its stderr once stopped)."""
    proc = _serve(tmp_path, *sets)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on ws://" not in line:
            proc.kill()  # its stderr could not be read to the end while it runs
            _, err = proc.communicate(timeout=TIMEOUT)
            raise AssertionError(f"node did not start: {line!r} {err!r}")
        limits = _open_files(proc.pid)
        proc.terminate()
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        return limits, err
    finally:
        reap(proc)


def test_soft_limit_is_raised_to_the_hard_limit_and_a_too_large_max_connections_warned(
    tmp_path: Path,
) -> None:
    (soft, hard), err = _run(tmp_path)  # max_connections: the default 100000
    assert (soft, hard) == (HARD, HARD)
    assert f"open-file limit set from {START_SOFT} to {HARD} (hard {HARD})" in err
    assert "warning: max_connections 100000" in err
    assert f"the limit is {HARD}" in err


def test_max_open_files_sets_the_soft_limit_and_fitting_connections_are_not_warned(
    tmp_path: Path,
) -> None:
    fits = 1024 - FD_HEADROOM  # the edge: exactly fits
    (soft, hard), err = _run(tmp_path, "max_open_files=1024", f"max_connections={fits}")
    assert (soft, hard) == (1024, HARD)
    assert f"open-file limit set from {START_SOFT} to 1024" in err
    assert "warning" not in err


def test_one_connection_past_the_limit_is_warned(tmp_path: Path) -> None:
    over = 1024 - FD_HEADROOM + 1
    (soft, _), err = _run(tmp_path, "max_open_files=1024", f"max_connections={over}")
    assert soft == 1024
    assert f"warning: max_connections {over} + {FD_HEADROOM} other files needs 1025" in err


def test_max_open_files_above_the_hard_limit_exits_2(tmp_path: Path) -> None:
    proc = _serve(tmp_path, f"max_open_files={HARD + 1}")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == EXIT_CONFIG == 2
    assert "listening" not in out
    assert err.strip() == (
        f"bluewren: max_open_files {HARD + 1} is above the hard open-file limit {HARD}: raise "
        "the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower max_open_files"
    )
