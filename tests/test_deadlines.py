"""Deadlines: every connection's HELLO timeout and token expiry on one loop timer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop

from bluewren.client import Client
from bluewren.node import CloseCode, Node
from bluewren.node.deadlines import COMPACT_MIN, Deadlines
from conftest import NodeRunner, node_runner

SECRET = "d" * 48


@pytest.fixture
def run(loop_name: str, tmp_path: Path) -> NodeRunner:
    return node_runner(loop_name, tmp_path, timeout=30.0, token_secret=SECRET)


class Conn:
    def __init__(self, conn_id: int, fired: list[int]) -> None:
        self.conn_id = conn_id
        self.deadline = 0.0
        self._fired = fired

    def deadline_passed(self) -> None:
        self._fired.append(self.conn_id)


def make(n: int) -> tuple[Deadlines, dict[int, Conn], list[int]]:
    fired: list[int] = []
    conns = {i: Conn(i, fired) for i in range(n)}
    return Deadlines(conns.get), conns, fired


def test_deadlines_fire_in_time_order_once_each() -> None:
    async def scenario() -> None:
        deadlines, conns, fired = make(4)
        for conn_id, delay in ((0, 0.08), (1, 0.02), (2, 0.05), (3, 0.5)):
            deadlines.set(conns[conn_id], delay)
        await asyncio.sleep(0.15)
        assert fired == [1, 2, 0]
        assert conns[0].deadline == 0.0
        assert conns[3].deadline > 0.0
        deadlines.close()
        await asyncio.sleep(0.45)
        assert fired == [1, 2, 0]  # closed: 3 never fires

    uvloop.run(scenario())


def test_a_replaced_or_cleared_deadline_does_not_fire() -> None:
    async def scenario() -> None:
        deadlines, conns, fired = make(3)
        deadlines.set(conns[0], 0.02)
        deadlines.set(conns[0], 0.2)  # replaced by a later one
        deadlines.set(conns[1], 0.02)
        deadlines.clear(conns[1])
        deadlines.set(conns[2], 0.02)
        del conns[2]  # the connection is gone
        await asyncio.sleep(0.08)
        assert fired == []
        await asyncio.sleep(0.2)
        assert fired == [0]

    uvloop.run(scenario())


def test_an_earlier_deadline_rearms_the_timer() -> None:
    async def scenario() -> None:
        deadlines, conns, fired = make(2)
        deadlines.set(conns[0], 10.0)
        deadlines.set(conns[1], 0.02)
        await asyncio.sleep(0.1)
        assert fired == [1]
        deadlines.close()

    uvloop.run(scenario())


def test_churn_of_cleared_deadlines_does_not_grow_the_heap() -> None:
    async def scenario() -> None:
        deadlines, conns, fired = make(1)
        conn = conns[0]
        for _ in range(20 * COMPACT_MIN):
            deadlines.set(conn, 3600.0)
            deadlines.clear(conn)
        # Stale entries are dropped once they are half the heap and at least COMPACT_MIN.
        assert len(deadlines) <= 2 * COMPACT_MIN
        deadlines.set(conn, 0.01)
        await asyncio.sleep(0.05)
        assert fired == [0]
        deadlines.close()

    uvloop.run(scenario())


def test_live_deadlines_survive_compaction() -> None:
    async def scenario() -> None:
        deadlines, conns, fired = make(COMPACT_MIN * 3)
        for conn in conns.values():
            deadlines.set(conn, 0.05 if conn.conn_id % 2 else 3600.0)
        for conn in conns.values():
            if conn.conn_id % 2 == 0:
                deadlines.clear(conn)
        assert len(deadlines) < COMPACT_MIN * 3  # compacted
        await asyncio.sleep(0.15)
        assert sorted(fired) == [i for i in range(COMPACT_MIN * 3) if i % 2]
        deadlines.close()

    uvloop.run(scenario())


def test_sessions_keep_no_instance_dict_and_no_timer_of_their_own(run: NodeRunner) -> None:
    async def scenario(node: Node) -> None:
        client = Client(node.url, node.issuer.mint("alice", ttl=600), reconnect=False)
        await client.connect()
        (session,) = node._sessions.values()
        assert not hasattr(session, "__dict__")
        assert session.deadline > asyncio.get_running_loop().time() + 500  # the token's expiry
        await client.close()

    run(scenario)


def test_hello_timeout_then_token_expiry_close_codes(run: NodeRunner) -> None:
    async def scenario(node: Node) -> None:
        client = Client(node.url, node.issuer.mint("bob", ttl=3), reconnect=False)
        await client.connect()
        # The HELLO deadline (0.3 s) was replaced by the token's (2 to 3 s away, since
        # exp is whole seconds): still open past the first.
        await asyncio.sleep(0.5)
        assert client.connected
        assert await asyncio.wait_for(client.wait_closed(), 5) == CloseCode.UNAUTHORIZED
        await client.close()

    run(scenario, hello_timeout=0.3)
