"""Observability of a node: /metrics, /healthz and /readyz over HTTP, and JSON logs.

A node runs in-process with ``metrics_port=0``; the tests scrape over loopback, parse
the scrape with prometheus_client's text parser and check that the values move as
traffic flows. The log tests capture the ``bluewren`` loggers as JSON lines and check
that neither a message body nor a token ever reaches them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bluewren import encode_frame, encode_ws_frame
from bluewren.client import Client, ClientError, Event
from bluewren.node import Kind, MessageContext, Node, NodeConfig
from bluewren.node.logs import JsonFormatter, configure_logging
from conftest import NodeRunner, NodeScenario, node_runner

SECRET = "m" * 48
TEST_TIMEOUT = 30.0

Scenario = NodeScenario
Run = NodeRunner
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def run(loop_name: str, tmp_path: Path) -> NodeRunner:
    """Runs a scenario against a fresh node (metrics on) on the parametrised loop."""
    return node_runner(
        loop_name, tmp_path, timeout=TEST_TIMEOUT, token_secret=SECRET, metrics_port=0
    )


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request to 127.0.0.1:port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    if method != "HEAD":  # HEAD announces the length GET would send, and sends nothing
        assert int(headers["Content-Length"]) == len(body)
    return status, headers["Content-Type"], body.decode()


async def scrape(node: Node) -> Samples:
    status, ctype, text = await http_get(node.metrics_port, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def connect(node: Node, user: str, device: str = "d1", protocol: str = "binary") -> Client:
    client = Client(node.url, node.issuer.mint(user, device), protocol=protocol)  # type: ignore[arg-type]
    await client.connect()
    return client


async def deliveries(client: Client, n: int) -> list[Event]:
    out: list[Event] = []
    while len(out) < n:
        event = await client.next_event(10)
        if event.kind == "deliver":
            out.append(event)
    return out


# -- /metrics ----------------------------------------------------------------------


def test_metrics_move_as_messages_flow(run: Run) -> None:
    async def scenario(node: Node) -> None:
        before = await scrape(node)
        assert value(before, "bluewren_connections", subprotocol="bluewren.v1") == 0
        assert value(before, "bluewren_connections", subprotocol="bluewren.json.v1") == 0
        assert value(before, "bluewren_messages_in_total") == 0
        assert value(before, "bluewren_fanout_size_count") == 0
        alice = await connect(node, "alice")
        bob = await connect(node, "bob", protocol="json")
        await bob.sync()
        chat = await alice.create_direct("bob")
        for i in range(3):
            await alice.send(chat.conv, f"m{i}")
        await deliveries(bob, 3)
        after = await scrape(node)
        assert value(after, "bluewren_connections", subprotocol="bluewren.v1") == 1
        assert value(after, "bluewren_connections", subprotocol="bluewren.json.v1") == 1
        assert value(after, "bluewren_messages_in_total") == 3
        assert value(after, "bluewren_messages_out_total") == 3  # one recipient each
        assert value(after, "bluewren_fanout_size_count") == 3
        assert value(after, "bluewren_fanout_size_sum") == 3
        assert value(after, "bluewren_fanout_size_bucket", le="1.0") == 3
        assert value(after, "bluewren_fanout_size_bucket", le="0.0") == 0
        assert value(after, "bluewren_store_append_seconds_count") == 3
        assert value(after, "bluewren_store_append_seconds_bucket", le="+Inf") == 3
        assert value(after, "bluewren_store_append_seconds_sum") > 0
        assert value(after, "bluewren_slow_consumer_closes_total") == 0
        assert value(after, "bluewren_outbox_bytes") >= 0
        assert value(after, "bluewren_process_rss_bytes") > 1_000_000
        assert value(after, "bluewren_event_loop_lag_seconds") >= 0
        await bob.close()
        await alice.close()
        while node._sessions:  # noqa: ASYNC110 - the close reaches the node a bit later
            await asyncio.sleep(0.01)
        closed = await scrape(node)
        assert value(closed, "bluewren_connections", subprotocol="bluewren.v1") == 0

    run(scenario)


def test_histogram_counts_repeated_observations_in_their_bucket() -> None:
    """``observe(value, times)`` (the node counts a committed run of SENDs at once) is
    ``times`` observations: edges land in the bucket whose bound they equal."""
    from bluewren.node.metrics import Histogram, NodeMetrics

    hist = Histogram([0.001, 0.01])
    hist.observe(0.001, 5)
    hist.observe(0.0011)
    hist.observe(1.0, 2)
    assert hist.counts == [5, 1, 2]
    assert hist.count == 8
    assert hist.sum == pytest.approx(0.005 + 0.0011 + 2.0)
    metrics = NodeMetrics()
    metrics.stored(0.002, 0)  # a run of duplicates only: nothing was stored
    assert metrics.messages_in == 0
    assert metrics.store_append_seconds.count == 0
    metrics.stored(0.002, 3)
    assert metrics.messages_in == 3
    assert metrics.store_append_seconds.count == 3


def test_breaker_states_are_exported_one_per_breaker(run: Run) -> None:
    async def scenario(node: Node) -> None:
        registry = getattr(node, "breakers", None)
        if registry is None:
            pytest.skip("this node has no breaker registry")
        samples = await scrape(node)
        names = {b.name for b in registry}
        assert names
        for name in names:
            states = {
                state: value(samples, "bluewren_breaker_state", breaker=name, state=state)
                for state in ("closed", "open", "half_open")
            }
            assert states == {"closed": 1, "open": 0, "half_open": 0}

    run(scenario)


def test_outbox_bytes_and_slow_consumer_closes_are_counted(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        token = node.issuer.mint("bob", "stalled")
        sock = socket.socket()  # authenticates, syncs, then never reads
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", node.port))
        handshake = (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: bluewren.v1\r\n\r\n"
        )
        mask = os.urandom(4)
        hello = encode_ws_frame(2, encode_frame(int(Kind.HELLO), token.encode()), mask=mask)
        sync = encode_ws_frame(2, encode_frame(int(Kind.SYNC), b"{}"), mask=mask)
        await loop.sock_sendall(sock, handshake + hello + sync)
        while not any(s.live for s in node.online("bob")):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        try:
            most_queued = 0.0
            sent = 0
            while node.online("bob") and sent < 50_000:
                await asyncio.gather(*(alice.send(chat.conv, b"y" * 1000) for _ in range(10)))
                sent += 10
                samples = await scrape(node)
                most_queued = max(most_queued, value(samples, "bluewren_outbox_bytes"))
            assert not node.online("bob"), "the stalled reader was never closed"
            samples = await scrape(node)
            assert most_queued > 0
            assert value(samples, "bluewren_slow_consumer_closes_total") == 1
            assert value(samples, "bluewren_outbox_bytes") == 0  # its outbox went with it
        finally:
            sock.close()
        await alice.close()

    run(
        scenario,
        max_message_bytes=2048,
        outbox_low_water=4096,
        outbox_high_water=16384,
        outbox_max_bytes=65536,
        send_rate=1_000_000,
        send_burst=1_000_000,
    )


def test_raw_tcp_connections_are_counted_under_their_own_label(run: Run) -> None:
    async def scenario(node: Node) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", node.tcp_port)
        try:
            while not node._sessions:  # noqa: ASYNC110 - accepted on the node's next pass
                await asyncio.sleep(0.01)
            samples = await scrape(node)
            assert value(samples, "bluewren_connections", subprotocol="tcp") == 1
            assert value(samples, "bluewren_connections", subprotocol="bluewren.v1") == 0
        finally:
            writer.close()
            await writer.wait_closed()

    run(scenario, tcp_port=0)


# -- health endpoints --------------------------------------------------------------


def test_healthz_and_readyz_answer_200_while_serving(run: Run) -> None:
    async def scenario(node: Node) -> None:
        assert await http_get(node.metrics_port, "/healthz") == (
            200,
            "text/plain; charset=utf-8",
            "ok\n",
        )
        status, _, body = await http_get(node.metrics_port, "/readyz")
        assert (status, body) == (200, "ready\n")

    run(scenario)


def test_readyz_is_503_while_the_node_drains(run: Run) -> None:
    async def scenario(node: Node) -> None:
        entered = asyncio.Event()
        release = asyncio.Event()

        async def hold(ctx: MessageContext) -> None:
            entered.set()
            await release.wait()

        node.hooks.on_message = hold
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        send = asyncio.ensure_future(alice.send(chat.conv, "in flight"))
        await entered.wait()
        metrics_port = node.metrics_port
        stopping = asyncio.ensure_future(node.stop())
        while node.serving:  # noqa: ASYNC110 - stop() closes the listeners first
            await asyncio.sleep(0.01)
        status, _, body = await http_get(metrics_port, "/readyz")
        assert status == 503
        assert body.startswith("not ready: ")
        status, _, _ = await http_get(metrics_port, "/healthz")
        assert status == 200  # alive while draining
        release.set()
        await stopping
        ack = await send
        assert ack.seq == 1  # the command in flight still committed
        await alice.close()
        with pytest.raises(OSError):
            await http_get(metrics_port, "/healthz")  # the endpoint went with the node

    run(scenario, shutdown_timeout=20.0)


def test_unknown_path_is_404_and_other_methods_405(run: Run) -> None:
    async def scenario(node: Node) -> None:
        status, _, _ = await http_get(node.metrics_port, "/nope")
        assert status == 404
        status, _, _ = await http_get(node.metrics_port, "/metrics", method="POST")
        assert status == 405
        status, _, body = await http_get(node.metrics_port, "/healthz", method="HEAD")
        assert (status, body) == (200, "")

    run(scenario)


def test_metrics_endpoint_is_off_by_default(tmp_path: Path) -> None:
    async def main() -> None:
        async with Node(NodeConfig(port=0, data_dir=tmp_path, token_secret=SECRET)) as node:
            with pytest.raises(RuntimeError, match="metrics endpoint is off"):
                _ = node.metrics_port

    asyncio.run(main())


# -- logs --------------------------------------------------------------------------


@pytest.fixture
def captured_logs() -> io.StringIO:
    """The ``bluewren`` loggers as JSON lines at DEBUG, restored afterwards."""
    logger = logging.getLogger("bluewren")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    stream = io.StringIO()
    configure_logging(logging.DEBUG, stream)
    yield stream  # type: ignore[misc]
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_logs_are_json_with_ids_and_never_hold_bodies_or_tokens(
    run: Run, captured_logs: io.StringIO
) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    tokens: list[str] = []

    async def scenario(node: Node) -> None:
        alice_token = node.issuer.mint("alice", "d1")
        bob_token = node.issuer.mint("bob", "d1")
        tokens.extend([alice_token, bob_token])
        alice = Client(node.url, alice_token)
        bob = Client(node.url, bob_token)
        await alice.connect()
        await bob.connect()
        await bob.sync()
        chat = await alice.create_direct("bob")
        await alice.send(chat.conv, marker)
        [event] = await deliveries(bob, 1)
        assert event.body == marker.encode()
        # A refused token: its text must not be logged either.
        bad_token = bob_token[:-4] + ("AAAA" if not bob_token.endswith("AAAA") else "BBBB")
        tokens.append(bad_token)
        forged = Client(node.url, bad_token, reconnect=False)
        with pytest.raises(ClientError):
            await forged.connect()
        await forged.close()
        await bob.close()
        await alice.close()

    run(scenario)
    text = captured_logs.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines, "nothing was logged"
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= line.keys()
    assert any(line.get("msg") == "message stored" and "request_id" in line for line in lines)
    assert any("conn_id" in line for line in lines)
    assert any(line["msg"].startswith("token refused: ") and "conn_id" in line for line in lines)
    assert marker not in text
    for token in tokens:
        assert token not in text
        for part in token.split("."):
            assert part not in text


def test_json_formatter_redacts_token_shaped_text() -> None:
    from bluewren.auth import TokenIssuer

    token = TokenIssuer("r" * 48).mint("carol", "d1")
    record = logging.LogRecord(
        "bluewren.node", logging.WARNING, __file__, 1, "refused %s", (token,), None
    )
    record.conn_id = 7
    line = json.loads(JsonFormatter().format(record))
    assert token not in json.dumps(line)
    assert line["msg"] == "refused [redacted-token]"
    assert line["conn_id"] == 7
    assert line["level"] == "warning"
