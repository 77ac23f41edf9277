"""The admin API on the observability port: auth, connections, kick, system messages, drain.

A node runs in-process with ``metrics_port=0`` and an ``admin_token``; every test talks to
it over real HTTP on loopback and to the node with the real client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bluewren import encode_frame
from bluewren.client import Client, ConnectionLost
from bluewren.node import Kind, Node, NodeConfig
from bluewren.node.admin import DRAIN_CLOSE_CODE, KICK_CLOSE_CODE, SYSTEM_SENDER
from bluewren.node.commands import CloseCode

SECRET = "m" * 48
ADMIN = "admin-token-" + "x" * 20
TEST_TIMEOUT = 30.0

Scenario = Callable[[Node], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, **config: Any) -> None:
    async def main() -> None:
        settings: dict[str, Any] = {
            "port": 0,
            "metrics_port": 0,
            "data_dir": tmp_path,
            "token_secret": SECRET,
            "admin_token": ADMIN,
            **config,
        }
        node = Node(NodeConfig(**settings))
        await node.start()
        try:
            await asyncio.wait_for(scenario(node), TEST_TIMEOUT)
        finally:
            await node.stop()

    asyncio.run(main())


async def http(
    port: int,
    method: str,
    path: str,
    token: str | None = ADMIN,
    body: object = None,
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one request to 127.0.0.1:port."""
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n" + data)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    top, _, payload = raw.partition(b"\r\n\r\n")
    status = int(top.split(b"\r\n", 1)[0].split()[1])
    assert b"Content-Type: application/json" in top
    return status, json.loads(payload)


async def http_text(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    top, _, payload = raw.partition(b"\r\n\r\n")
    return int(top.split(b"\r\n", 1)[0].split()[1]), payload.decode()


async def connect(node: Node, user: str, device: str = "d1", protocol: str = "binary") -> Client:
    client = Client(node.url, node.issuer.mint(user, device), protocol=protocol)  # type: ignore[arg-type]
    await client.connect()
    return client


def test_admin_api_is_off_without_an_admin_token(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        status, body = await http(node.metrics_port, "GET", "/admin/connections")
        assert status == 404
        assert "admin_token" in body["message"]

    run(tmp_path, scenario, admin_token=None)


def test_admin_needs_the_bearer_token_401_without_403_when_wrong(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        port = node.metrics_port
        status, body = await http(port, "GET", "/admin/connections", token=None)
        assert (status, body["error"]) == (401, "unauthorized")
        status, body = await http(port, "GET", "/admin/connections", token=ADMIN + "y")
        assert (status, body["error"]) == (403, "forbidden")
        status, body = await http(port, "POST", "/admin/drain", token="wrong")
        assert (status, body["error"]) == (403, "forbidden")
        assert not getattr(node, "draining", False)
        status, _ = await http(port, "GET", "/admin/connections")
        assert status == 200

    run(tmp_path, scenario)


def test_admin_lists_connections_with_user_device_protocol_and_remote(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice", "phone")
        bob = await connect(node, "bob", "laptop", protocol="json")
        status, body = await http(node.metrics_port, "GET", "/admin/connections")
        assert status == 200
        rows = sorted(body["connections"], key=lambda r: r["user"])
        assert [(r["user"], r["device"], r["subprotocol"]) for r in rows] == [
            ("alice", "phone", "bluewren.v1"),
            ("bob", "laptop", "bluewren.json.v1"),
        ]
        for row in rows:
            assert row["remote"].startswith("127.0.0.1:")
            assert row["outbox_bytes"] == 0
            assert body["at"] - 60 < row["connected_since"] <= body["at"]
            assert row["id"] in node._sessions
        await alice.close()
        await bob.close()

    run(tmp_path, scenario)


def test_admin_kick_closes_that_connection_with_4003_only(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        (victim,) = [s.conn_id for s in node.online("alice")]
        status, body = await http(node.metrics_port, "POST", f"/admin/connections/{victim}/kick")
        assert (status, body) == (200, {"kicked": victim, "code": KICK_CLOSE_CODE})
        code = await asyncio.wait_for(alice.wait_closed(), 10)
        assert code == CloseCode.KICKED
        assert code == 4003
        await bob.sync()  # bob's connection still answers
        status, body = await http(node.metrics_port, "POST", f"/admin/connections/{victim}/kick")
        assert (status, body["error"]) == (404, "not_found")
        status, body = await http(node.metrics_port, "POST", "/admin/connections/abc/kick")
        assert (status, body["error"]) == (400, "bad_request")
        await bob.close()

    run(tmp_path, scenario)


def test_admin_system_message_is_stored_and_delivered_from_the_system_sender(
    tmp_path: Path,
) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        await bob.sync()
        chat = await alice.create_direct("bob")
        status, body = await http(
            node.metrics_port,
            "POST",
            "/admin/system-message",
            body={"conv": chat.conv, "body": "maintenance at 22:00"},
        )
        assert status == 200
        assert body["sender"] == SYSTEM_SENDER
        assert body["conv"] == chat.conv
        while True:
            event = await bob.next_event(10)
            if event.kind == "deliver":
                break
        assert (event.sender, event.body, event.seq) == (
            SYSTEM_SENDER,
            b"maintenance at 22:00",
            body["seq"],
        )
        stored = await node.store.history(chat.conv, 0, 10)
        assert [(m.sender, m.body) for m in stored] == [(SYSTEM_SENDER, b"maintenance at 22:00")]
        for bad in ({"conv": chat.conv}, {"conv": "x", "body": "hi"}, [1]):
            status, reply = await http(node.metrics_port, "POST", "/admin/system-message", body=bad)
            assert (status, reply["error"]) == (400, "bad_request")
        status, reply = await http(
            node.metrics_port, "POST", "/admin/system-message", body={"conv": 9999, "body": "x"}
        )
        assert status in (404, 409)
        await alice.close()
        await bob.close()

    run(tmp_path, scenario)


def test_admin_drain_closes_with_1001_refuses_new_connections_and_fails_readyz(
    tmp_path: Path,
) -> None:
    async def scenario(node: Node) -> None:
        port = node.metrics_port
        assert (await http_text(port, "/readyz"))[0] == 200
        url = node.url
        alice = await connect(node, "alice")
        bob = await connect(node, "bob", protocol="json")
        status, body = await http(port, "POST", "/admin/drain")
        assert (status, body) == (200, {"draining": True, "closed": 2})
        assert await asyncio.wait_for(alice.wait_closed(), 10) == DRAIN_CLOSE_CODE
        assert await asyncio.wait_for(bob.wait_closed(), 10) == DRAIN_CLOSE_CODE
        status, text = await http_text(port, "/readyz")
        assert (status, text) == (503, "not ready: draining\n")
        late = Client(url, node.issuer.mint("carol", "d"), reconnect=False)
        with pytest.raises((OSError, ConnectionLost)):
            await asyncio.wait_for(late.connect(), 10)
        status, body = await http(port, "POST", "/admin/drain")
        assert (status, body["error"]) == (409, "conflict")
        assert (await http_text(port, "/healthz"))[0] == 200

    run(tmp_path, scenario)


def test_admin_lists_and_kicks_a_raw_tcp_connection(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
        try:
            token = node.issuer.mint("carol", "sensor").encode()
            writer.write(encode_frame(int(Kind.HELLO), token))
            await writer.drain()
            async with asyncio.timeout(10):
                while True:
                    _, body = await http(node.metrics_port, "GET", "/admin/connections")
                    rows = [r for r in body["connections"] if r["user"] == "carol"]
                    if rows:
                        break
                    await asyncio.sleep(0.01)
            (row,) = rows
            assert (row["device"], row["subprotocol"]) == ("sensor", "tcp")
            status, _ = await http(
                node.metrics_port, "POST", f"/admin/connections/{row['id']}/kick"
            )
            assert status == 200
            async with asyncio.timeout(10):
                while await reader.read(65536):  # the node closes the stream
                    pass
            _, body = await http(node.metrics_port, "GET", "/admin/connections")
            assert body["connections"] == []
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    run(tmp_path, scenario, tcp_port=0)


def test_every_close_code_is_documented_in_the_protocol_close_code_table() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    table = text.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    for code in CloseCode:
        assert f"\n| {int(code)} |" in table, code
    assert KICK_CLOSE_CODE is CloseCode.KICKED
    assert "kick" in table.split("\n| 4003 |", 1)[1].split("\n", 1)[0]
