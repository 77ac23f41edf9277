"""The node as a process: graceful stop, crash, restart on the same data, start-up errors.

A node runs as a subprocess (``python -m bluewren serve``) while several
``bluewren.client.Client`` senders in this process load it (5 senders x 300 messages
into one group). Mid-load the node gets SIGTERM (it must exit 0 within its shutdown
bound) or SIGKILL; it is restarted on the same port and data directory, the senders'
clients reconnect and retry what was not acknowledged with the same cmid, and at the end
the store must hold every acknowledged message exactly once, under the sequence number
its ACK carried, each sender's messages in the order they were sent, and an explicit
re-send of acknowledged messages after the restart must not store them again. One test
locks SQLite from this process so that the node acknowledges from its message log only,
then SIGKILLs it: the store opened again must hold every acknowledged message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bluewren.auth import TokenIssuer
from bluewren.client import Ack, Client, ConnectionLost
from bluewren.node import Node, NodeConfig
from bluewren.store import AppendResult, SQLiteStore, StoredMessage
from conftest import reap

SECRET = "r" * 48
SENDERS = 5
MESSAGES = 300
SHUTDOWN_TIMEOUT = 5.0
LINE = re.compile(r"bluewren node listening on ws://([\d.]+):(\d+)/")


class NodeProcess:
    """``python -m bluewren serve`` on a data directory; restartable on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "BLUEWREN_TOKEN_SECRET": SECRET}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bluewren",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--shutdown-timeout",
                str(SHUTDOWN_TIMEOUT),
                # The load is bounded by the test; the per-connection rate limit is not
                # what this file is about.
                "--set",
                "send_rate=1000000",
                "--set",
                "send_burst=1000000",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = LINE.search(line)
        if match is None:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"node did not start: {line!r} {err!r}")
        self.port = int(match.group(2))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None:
            reap(self.proc)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path / "data")
    proc.start()
    yield proc
    proc.kill()


async def stored_history(data_dir: Path, conv: int) -> list[StoredMessage]:
    store = SQLiteStore(data_dir / "bluewren.db")
    await store.open()
    try:
        out: list[StoredMessage] = []
        while True:
            page = await store.history(conv, out[-1].seq if out else 0, 1000)
            if not page:
                return out
            out += page
    finally:
        await store.close()


async def load_and_interrupt(node: NodeProcess, sig: int) -> None:
    issuer = TokenIssuer(SECRET)
    users = [f"s{i}" for i in range(SENDERS)]

    def client(user: str) -> Client:
        return Client(node.url, lambda: issuer.mint(user, "d1"), retries=40, timeout=5.0)

    owner = client(users[0])
    await owner.connect()
    conv = (await owner.create_group("load", users[1:])).conv
    await owner.close()

    acked: dict[tuple[str, int], int] = {}  # (user, cmid) -> seq of its ACK
    cmids: dict[str, list[int]] = {}
    total = 0
    interrupt = asyncio.Event()

    async def sender(user: str) -> None:
        nonlocal total
        c = client(user)
        await c.connect()
        base = (users.index(user) + 1) * 1_000_000
        cmids[user] = []
        try:
            for i in range(MESSAGES):
                cmid = base + i
                ack = await c.send(conv, f"{user}:{i}", cmid=cmid)
                assert ack.cmid == cmid
                acked[(user, cmid)] = ack.seq
                cmids[user].append(cmid)
                total += 1
                if total == SENDERS * MESSAGES // 3:
                    interrupt.set()
            # Retries after the restart: the same cmid gets the same seq, nothing new.
            for cmid in cmids[user][-5:]:
                again = await c.send(conv, "retried", cmid=cmid)
                assert again.seq == acked[(user, cmid)]
        finally:
            await c.close()

    tasks = [asyncio.ensure_future(sender(u)) for u in users]
    await asyncio.wait_for(interrupt.wait(), 60)
    node.signal(sig)
    status = await asyncio.to_thread(node.wait, SHUTDOWN_TIMEOUT + 5.0)
    if sig == signal.SIGTERM:
        assert status == 0, node.proc.stderr.read() if node.proc and node.proc.stderr else ""
    else:
        assert status == -signal.SIGKILL
    assert 0 < len(acked) < SENDERS * MESSAGES, "the interruption came mid-load"
    node.start()  # same port, same data directory
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    assert len(acked) == SENDERS * MESSAGES

    node.signal(signal.SIGTERM)
    assert await asyncio.to_thread(node.wait, SHUTDOWN_TIMEOUT + 5.0) == 0
    history = await stored_history(node.data_dir, conv)

    # Exactly once: every acknowledged (sender, cmid) is stored once, nothing else is.
    counts = Counter((m.sender, m.cmid) for m in history)
    assert set(counts) == set(acked)
    assert all(n == 1 for n in counts.values())
    # Under the sequence number its ACK carried; sequence numbers have no gap.
    assert [m.seq for m in history] == list(range(1, len(history) + 1))
    assert {(m.sender, m.cmid): m.seq for m in history} == acked
    # Each sender's messages in the order it sent them, with the body it sent first.
    for user in users:
        mine = [m for m in history if m.sender == user]
        assert [m.cmid for m in mine] == cmids[user]
        base = (users.index(user) + 1) * 1_000_000
        assert [m.body for m in mine] == [f"{user}:{c - base}".encode() for c in cmids[user]]


def test_sigterm_mid_load_exits_0_and_keeps_every_acked_message_exactly_once(
    node: NodeProcess,
) -> None:
    asyncio.run(load_and_interrupt(node, signal.SIGTERM))


def test_sigkill_mid_load_loses_no_acked_message_and_retries_store_nothing_twice(
    node: NodeProcess,
) -> None:
    asyncio.run(load_and_interrupt(node, signal.SIGKILL))


def test_acks_go_on_while_sqlite_is_locked_and_a_sigkill_then_loses_none(
    node: NodeProcess,
) -> None:
    """Another process holds SQLite's write lock, so the node cannot index anything: SENDs
    of a known sender are still acknowledged, from the message log. SIGKILL the node,
    release the lock, and the store, opened again, holds every acknowledged message."""

    async def scenario() -> None:
        issuer = TokenIssuer(SECRET)
        alice = Client(node.url, issuer.mint("alice", "d1"), reconnect=False, timeout=5.0)
        await alice.connect()
        conv = (await alice.create_direct("bob")).conv
        await alice.send(conv, "first")  # a sender's first message goes through SQLite
        blocker = sqlite3.connect(node.data_dir / "bluewren.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            acks = [await alice.send(conv, f"m{i}") for i in range(50)]
            assert [a.seq for a in acks] == list(range(2, 52))
            node.signal(signal.SIGKILL)
            assert await asyncio.to_thread(node.wait, 10) == -signal.SIGKILL
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with contextlib.suppress(ConnectionLost, OSError):
            await alice.close()
        history = await stored_history(node.data_dir, conv)
        assert [m.seq for m in history] == list(range(1, 52))
        assert [m.body for m in history] == [b"first"] + [b"m%d" % i for i in range(50)]

    asyncio.run(scenario())


def test_sigint_closes_clients_with_1001_and_exits_0(node: NodeProcess) -> None:
    async def scenario() -> None:
        c = Client(node.url, TokenIssuer(SECRET).mint("idle", "d1"), reconnect=False)
        await c.connect()
        node.signal(signal.SIGINT)
        assert await asyncio.wait_for(c.wait_closed(), SHUTDOWN_TIMEOUT + 5.0) == 1001
        assert await asyncio.to_thread(node.wait, SHUTDOWN_TIMEOUT + 5.0) == 0
        await c.close()

    asyncio.run(scenario())


def test_port_in_use_is_one_clear_line_and_a_non_zero_status(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bluewren",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "BLUEWREN_TOKEN_SECRET": SECRET},
        )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "already in use" in lines[0]
    assert str(port) in lines[0]
    assert result.stdout == ""


def test_unwritable_data_dir_is_one_clear_line_and_a_non_zero_status(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    data_dir = blocker / "data"  # cannot be created whatever the user's privileges
    result = subprocess.run(
        [sys.executable, "-m", "bluewren", "serve", "--port", "0", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "BLUEWREN_TOKEN_SECRET": SECRET},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not writable" in lines[0]
    assert str(data_dir) in lines[0]


# -- in-process: what the graceful stop does with a command in flight ---------------------


class SlowStore(SQLiteStore):
    """Appends wait ``delay`` seconds before the real write (signalling ``started``)."""

    def __init__(self, path: Path, delay: float) -> None:
        super().__init__(path)
        self.delay = delay
        self.started = asyncio.Event()

    async def append(
        self, conv: int, sender: str, device: str, cmid: int, body: bytes, kind: str = "text"
    ) -> AppendResult:
        if body == b"slow":
            self.started.set()
            await asyncio.sleep(self.delay)
        return await super().append(conv, sender, device, cmid, body, kind)


async def stop_during_a_send(tmp_path: Path, delay: float, bound: float) -> tuple[int, Any]:
    """Starts a send the store holds for ``delay`` s, stops the node meanwhile; returns
    the client's close code and the send's outcome (Ack or the exception)."""
    store = SlowStore(tmp_path / "slow.db", delay)
    await store.open()
    node = Node(
        NodeConfig(port=0, data_dir=tmp_path, token_secret=SECRET, shutdown_timeout=bound),
        store=store,
    )
    await node.start()
    client = Client(node.url, node.issuer.mint("alice", "d1"), reconnect=False)
    try:
        await client.connect()
        conv = (await client.create_direct("bob")).conv
        send = asyncio.ensure_future(client.send(conv, "slow"))
        await asyncio.wait_for(store.started.wait(), 10)
        await asyncio.wait_for(node.stop(), bound + 5.0)
        outcome: Any
        try:
            outcome = await asyncio.wait_for(send, 10)
        except Exception as exc:
            outcome = exc
        code = await asyncio.wait_for(client.wait_closed(), 10)
        assert code is not None
        return code, outcome
    finally:
        await client.close()
        await store.close()


def test_graceful_stop_lets_a_send_in_flight_commit_and_ack_before_closing_with_1001(
    tmp_path: Path,
) -> None:
    code, outcome = asyncio.run(stop_during_a_send(tmp_path, delay=0.5, bound=5.0))
    assert isinstance(outcome, Ack)
    assert outcome.seq == 1
    assert code == 1001


def test_graceful_stop_is_bounded_by_shutdown_timeout_when_a_send_hangs(tmp_path: Path) -> None:
    # The store holds the send for a minute; the stop gives up after 0.5 s and still
    # closes the connection with 1001. The send is not acknowledged (the client retries).
    code, outcome = asyncio.run(stop_during_a_send(tmp_path, delay=60.0, bound=0.5))
    assert isinstance(outcome, ConnectionLost)
    assert code == 1001
