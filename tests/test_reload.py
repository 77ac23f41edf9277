"""SIGHUP reload: ``bluewren serve`` re-reads its config file and applies what it can.

The subprocess tests run ``python -m bluewren serve --config FILE``, rewrite the file,
send SIGHUP and check the lines printed and the behaviour that changed (the SEND rate
limit); the in-process tests pin which fields are live and which need a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from bluewren.auth import TokenIssuer
from bluewren.client import Client, ClientError
from bluewren.node import ErrorCode, Node, NodeConfig
from bluewren.node.reload import LIVE_FIELDS, apply_config, diff_configs

SECRET = "r" * 48
LINE = re.compile(r"listening on ws://([\d.]+):(\d+)/")
TIMEOUT = 20.0


def write_config(path: Path, **fields: object) -> None:
    lines = [f'token_secret = "{SECRET}"']
    for name, value in fields.items():
        lines.append(f'{name} = "{value}"' if isinstance(value, str) else f"{name} = {value}")
    path.write_text("\n".join(lines) + "\n")


async def _line(stream: asyncio.StreamReader, pattern: str) -> str:
    """The next line of ``stream`` containing ``pattern``."""
    while True:
        raw = await asyncio.wait_for(stream.readline(), TIMEOUT)
        if not raw:
            raise AssertionError(f"stream ended before a line with {pattern!r}")
        line = raw.decode()
        if pattern in line:
            return line


def test_sighup_applies_live_fields_and_names_those_needing_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "bluewren.toml"
    write_config(config, send_rate=1000.0, send_burst=1000)

    async def main() -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEWREN_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bluewren",
            "serve",
            "--loop",
            "asyncio",
            "--config",
            str(config),
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            match = LINE.search(await _line(proc.stdout, "listening on ws://"))
            assert match is not None
            url = f"ws://127.0.0.1:{match.group(2)}/"
            client = Client(url, TokenIssuer(SECRET).mint("alice", "d"))
            await client.connect()
            chat = await client.create_direct("bob")
            for i in range(5):  # the first limits: 1000/s
                await client.send(chat.conv, f"before {i}")

            write_config(config, send_rate=0.01, send_burst=1, log_level="DEBUG", tcp_port=0)
            proc.send_signal(signal.SIGHUP)
            applied = await _line(proc.stdout, "bluewren: reloaded:")
            assert "send_rate 1000.0 -> 0.01" in applied
            assert "send_burst 1000 -> 1" in applied
            assert "log_level 'INFO' -> 'DEBUG'" in applied
            assert "token_secret" not in applied
            restart = await _line(proc.stdout, "not reloaded (restart to apply)")
            assert "tcp_port None -> 0" in restart
            assert "send_rate" not in restart

            await client.send(chat.conv, "after 1")  # a fresh bucket of 1
            with pytest.raises(ClientError) as info:
                await client.send(chat.conv, "after 2")
            assert info.value.code == ErrorCode.RATE_LIMITED

            config.write_text("send_rate = -1\n")  # invalid: nothing changes
            proc.send_signal(signal.SIGHUP)
            failed = await _line(proc.stderr, "reload failed")
            assert "send_rate" in failed
            assert "keeping the running configuration" in failed
            await client.close()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    asyncio.run(main())


def test_diff_splits_live_fields_from_those_needing_a_restart() -> None:
    old = NodeConfig(token_secret=SECRET)
    new = NodeConfig(
        token_secret="t" * 40,
        port=9999,
        data_dir=Path("elsewhere"),
        max_connections=7,
        admin_token="a" * 20,
    )
    live, frozen = diff_configs(old, new)
    assert live == {"max_connections": (100_000, 7), "admin_token": ("***", "***")}
    assert frozen == {
        "token_secret": ("***", "***"),
        "port": (8470, 9999),
        "data_dir": (Path("bluewren-data"), Path("elsewhere")),
    }
    assert {"port", "data_dir", "metrics_port", "tcp_port", "breakers"}.isdisjoint(LIVE_FIELDS)


def test_apply_config_swaps_only_live_fields_into_a_running_node(tmp_path: Path) -> None:
    async def main() -> None:
        config = NodeConfig(port=0, data_dir=tmp_path, token_secret=SECRET)
        async with Node(config) as node:
            port = node.port
            wanted = NodeConfig(
                port=1,
                data_dir=tmp_path / "other",
                token_secret=SECRET,
                max_group_members=3,
                connect_rate=1.0,
                connect_burst=2,
                log_level="ERROR",
            )
            result = apply_config(node, wanted)
            assert set(result.applied) == {
                "max_group_members",
                "connect_rate",
                "connect_burst",
                "log_level",
            }
            assert set(result.restart_needed) == {"port", "data_dir"}
            assert node.config is result.config
            assert node.config.max_group_members == 3
            assert node.config.port == 0
            assert node.config.data_dir == tmp_path
            assert node.admission.config is node.config
            assert (node.admission.connects.rate, node.admission.connects.burst) == (1.0, 2)
            assert logging.getLogger("bluewren").level == logging.ERROR
            assert node.port == port
            again = apply_config(node, wanted)
            assert again.applied == {}
            assert again.lines()[0].startswith("bluewren: not reloaded")

    try:
        asyncio.run(main())
    finally:
        logging.getLogger("bluewren").setLevel(logging.NOTSET)
