"""The raw TCP transport (bluewren.node.tcp) and per-connection zstd compression.

Raw sockets speak bare BlueWren frames to a node started in-process with ``tcp_port=0``;
WebSocket peers in the same conversation use ``bluewren.client.Client`` (which does not
negotiate compression) or a raw WebSocket (which does). Every test runs on stdlib
asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from bluewren import (
    FLAG_COMPRESSED,
    FLAG_DICT,
    Compressor,
    Decompressor,
    FrameDecoder,
    WsDecoder,
    client_handshake,
    encode_frame,
    encode_ws_frame,
    parse_handshake_response,
)
from bluewren.client import Client, Event
from bluewren.errors import ConversationNotFoundError
from bluewren.node import ErrorCode, Kind, Node, NodeConfig, decode_envelope
from bluewren.node.compression import CAP_ZSTD, COMPRESS_MIN_BYTES, chat_corpus, load_dictionary
from bluewren.store import AppendResult, SQLiteStore
from conftest import LOOP_FACTORIES, NodeRunner, NodeScenario, node_runner

SECRET = "t" * 48
Frame = tuple[int, int, int, int, int, bytes]
Scenario = NodeScenario
Run = NodeRunner
LONG = b"Let me know when the release build passed review. " * 10  # chat-like, > threshold


@pytest.fixture
def run(loop_name: str, tmp_path: Path) -> NodeRunner:
    return node_runner(loop_name, tmp_path, timeout=30, token_secret=SECRET, tcp_port=0)


class Stream:
    """A raw connection (TCP, or WebSocket carrying binary frames) reading frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameDecoder(1 << 24)
        self.ws: WsDecoder | None = None
        self.pending: list[Frame] = []

    @classmethod
    async def tcp(cls, node: Node) -> Stream:
        return cls(*await asyncio.open_connection("127.0.0.1", node.tcp_port))

    @classmethod
    async def websocket(cls, node: Node) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        writer.write(client_handshake(f"127.0.0.1:{node.port}", "/", key, ["bluewren.v1"]))
        buf = b""
        while (parsed := parse_handshake_response(buf, key)) is None:
            buf += await reader.read(4096)
        assert parsed[0] == 101
        stream = cls(reader, writer)
        stream.ws = WsDecoder("client", 1 << 24, 1 << 24)
        stream._take(buf[parsed[2] :])
        return stream

    def write(self, data: bytes) -> None:
        if self.ws is not None:
            data = encode_ws_frame(2, data, mask=os.urandom(4))
        self.writer.write(data)

    def command(
        self,
        kind: Kind,
        body: bytes = b"",
        conv: int = 0,
        seq: int = 0,
        cmid: int = 0,
        flags: int = 0,
    ) -> None:
        self.write(encode_frame(int(kind), body, conv, seq, cmid, flags))

    def _take(self, data: bytes) -> None:
        if self.ws is not None:
            for opcode, payload in self.ws.feed(data):
                if opcode == 2:
                    self.pending += self.frames.feed(payload)
        else:
            self.pending += self.frames.feed(data)

    async def next(self, kind: Kind | None = None) -> Frame:
        """The next frame (of ``kind``, skipping others); AssertionError at EOF."""
        while True:
            while self.pending:
                frame = self.pending.pop(0)
                if kind is None or frame[0] == kind:
                    return frame
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, "the node closed the connection"
            self._take(data)

    async def hello(self, node: Node, user: str, caps: int = 0) -> dict[str, object]:
        self.command(Kind.HELLO, node.issuer.mint(user, "svc").encode(), seq=caps)
        welcome = json.loads((await self.next())[5])
        assert isinstance(welcome, dict)
        self.command(Kind.SYNC, b"{}")
        await self.next(Kind.SYNCED)
        return welcome

    async def at_eof(self) -> bool:
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                return True
            self._take(data)

    def close(self) -> None:
        self.writer.close()


async def delivery(client: Client) -> Event:
    """The client's next delivery (other pushed events are skipped)."""
    while True:
        event = await client.next_event(10)
        if event.kind == "deliver":
            return event


async def direct(node: Node, user: str, peer: str) -> tuple[Client, int]:
    client = Client(node.url, node.issuer.mint(user, "phone"))
    await client.connect()
    return client, (await client.create_direct(peer)).conv


def test_tcp_hello_send_ack_and_delivery_both_ways_with_a_websocket_session(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice, conv = await direct(node, "alice", "bob")
        bob = await Stream.tcp(node)
        welcome = await bob.hello(node, "bob")
        assert welcome["user"] == "bob"
        assert welcome["compression"] is None
        bob.command(Kind.SEND, b"from tcp", conv=conv, cmid=7)
        kind, _flags, c, seq, cmid, _ = await bob.next()
        assert (kind, c, seq, cmid) == (Kind.ACK, conv, 1, 7)
        event = await delivery(alice)
        assert (event.sender, event.device, event.body) == ("bob", "svc", b"from tcp")
        await alice.send(conv, "from ws")
        kind, flags, c, seq, _, body = await bob.next(Kind.DELIVER)
        assert (flags, c, seq) == (0, conv, 2)
        assert decode_envelope(body) == ("alice", "phone", b"from ws")
        bob.close()
        await alice.close()

    run(scenario)


def test_tcp_frames_split_across_writes_and_batched_in_one_write_are_all_handled(
    run: Run,
) -> None:
    async def scenario(node: Node) -> None:
        alice, conv = await direct(node, "alice", "bob")
        bob = await Stream.tcp(node)
        await bob.hello(node, "bob")
        data = b"".join(encode_frame(Kind.SEND, b"m%d" % i, conv, 0, i + 1) for i in range(5))
        for i in range(0, len(data), 7):  # split anywhere, even inside headers
            bob.writer.write(data[i : i + 7])
            await bob.writer.drain()
        acks = [await bob.next(Kind.ACK) for _ in range(5)]
        assert [(a[3], a[4]) for a in acks] == [(i + 1, i + 1) for i in range(5)]
        bob.close()
        await alice.close()

    run(scenario)


def test_tcp_command_before_hello_gets_not_authenticated(run: Run) -> None:
    async def scenario(node: Node) -> None:
        s = await Stream.tcp(node)
        s.command(Kind.SEND, b"x", conv=1, cmid=1)
        kind, _, conv, _, cmid, body = await s.next()
        assert (kind, conv, cmid) == (Kind.ERROR, 1, 1)
        assert json.loads(body)["code"] == ErrorCode.NOT_AUTHENTICATED
        s.close()

    run(scenario)


def test_tcp_bad_token_gets_auth_failed_then_the_stream_closes(run: Run) -> None:
    async def scenario(node: Node) -> None:
        s = await Stream.tcp(node)
        s.command(Kind.HELLO, b"not-a-token")
        kind, *_, body = await s.next()
        assert kind == Kind.ERROR
        assert json.loads(body)["code"] == ErrorCode.AUTH_FAILED
        assert await s.at_eof()

    run(scenario)


def test_tcp_malformed_frame_gets_bad_frame_error_then_the_stream_closes(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice, conv = await direct(node, "alice", "bob")
        s = await Stream.tcp(node)
        await s.hello(node, "bob")
        good = encode_frame(Kind.SEND, b"ok", conv, 0, 1)
        bad = bytes([2]) + encode_frame(Kind.SEND, b"no", conv, 0, 2)[1:]  # version 2
        s.writer.write(good + bad)
        assert (await s.next())[0] == Kind.ACK  # the frame before the bad one was handled
        kind, *_, body = await s.next()
        assert kind == Kind.ERROR
        assert json.loads(body)["code"] == ErrorCode.BAD_FRAME
        assert await s.at_eof()
        assert [m.cmid for m in await node.store.history(conv, 0, 10)] == [1]
        await alice.close()

    run(scenario)


def test_tcp_frame_over_the_limit_gets_too_large_then_the_stream_closes(run: Run) -> None:
    async def scenario(node: Node) -> None:
        s = await Stream.tcp(node)
        await s.hello(node, "bob")
        header = encode_frame(Kind.SEND, b"", 1, 0, 1)
        huge = header[:4] + (node.config.max_ws_message_bytes + 1).to_bytes(4, "big") + header[8:]
        s.writer.write(huge)  # refused from the header alone
        kind, *_, body = await s.next()
        assert kind == Kind.ERROR
        assert json.loads(body)["code"] == ErrorCode.TOO_LARGE
        assert await s.at_eof()

    run(scenario)


def test_tcp_listener_is_off_unless_configured(run: Run) -> None:
    async def scenario(node: Node) -> None:
        with pytest.raises(RuntimeError, match="tcp_port"):
            _ = node.tcp_port

    run(scenario, tcp_port=None)


# -- compression ---------------------------------------------------------------------------


def test_shipped_dictionary_is_a_zstd_dictionary_that_shrinks_chat_bodies() -> None:
    dictionary = load_dictionary()
    assert dictionary[:4] == bytes.fromhex("37a430ec")  # zstd dictionary magic
    samples = chat_corpus(200, seed=99)
    plain = Compressor(3)
    with_dict = Compressor(3, dictionary)
    assert sum(len(with_dict.compress(b)) for b in samples) < sum(
        len(plain.compress(b)) for b in samples
    )


@pytest.mark.parametrize("transport", ["tcp", "websocket"])
def test_negotiated_session_gets_large_deliveries_compressed_with_the_dictionary(
    run: Run, transport: str
) -> None:
    async def scenario(node: Node) -> None:
        alice, conv = await direct(node, "alice", "bob")
        bob = await (Stream.tcp(node) if transport == "tcp" else Stream.websocket(node))
        assert (await bob.hello(node, "bob", CAP_ZSTD))["compression"] == "zstd-dict"
        await alice.send(conv, LONG)
        await alice.send(conv, "short")
        unpack = Decompressor(load_dictionary(), max_output=1 << 20)
        _, flags, _, seq, _, body = await bob.next(Kind.DELIVER)
        assert (flags, seq) == (FLAG_COMPRESSED | FLAG_DICT, 1)
        assert len(body) < len(LONG)
        assert decode_envelope(unpack.decompress(body)) == ("alice", "phone", LONG)
        _, flags, _, seq, _, body = await bob.next(Kind.DELIVER)
        assert (flags, seq) == (0, 2)  # below the threshold: sent as is
        assert len(b"short") + 20 < COMPRESS_MIN_BYTES
        assert decode_envelope(body)[2] == b"short"
        bob.close()
        await alice.close()

    run(scenario)


def test_session_that_did_not_negotiate_gets_plain_deliveries(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice, conv = await direct(node, "alice", "bob")
        zbob = await Stream.tcp(node)
        await zbob.hello(node, "bob", CAP_ZSTD)
        plain_bob = await Stream.tcp(node)
        assert (await plain_bob.hello(node, "bob"))["compression"] is None
        await alice.send(conv, LONG)
        assert (await zbob.next(Kind.DELIVER))[1] == FLAG_COMPRESSED | FLAG_DICT
        _, flags, *_, body = await plain_bob.next(Kind.DELIVER)
        assert flags == 0
        assert decode_envelope(body)[2] == LONG
        zbob.close()
        plain_bob.close()
        await alice.close()

    run(scenario)


def test_send_compressed_with_the_dictionary_is_stored_and_delivered_decompressed(
    run: Run,
) -> None:
    async def scenario(node: Node) -> None:
        alice, conv = await direct(node, "alice", "bob")
        bob = await Stream.tcp(node)
        await bob.hello(node, "bob")
        packed = Compressor(3, load_dictionary()).compress(LONG)
        bob.command(Kind.SEND, packed, conv=conv, cmid=5, flags=FLAG_COMPRESSED | FLAG_DICT)
        assert (await bob.next())[0] == Kind.ACK
        event = await delivery(alice)
        assert event.body == LONG
        assert (await node.store.history(conv, 0, 1))[0].body == LONG
        bob.close()
        await alice.close()

    run(scenario)


def test_dictionary_bomb_over_the_message_limit_is_refused_with_too_large(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice, conv = await direct(node, "alice", "bob")
        bob = await Stream.tcp(node)
        await bob.hello(node, "bob")
        limit = node.config.max_message_bytes
        bomb = Compressor(19, load_dictionary()).compress(b"\0" * (limit + 1))
        assert len(bomb) < 1024
        bob.command(Kind.SEND, bomb, conv=conv, cmid=9, flags=FLAG_COMPRESSED | FLAG_DICT)
        kind, _, c, _, cmid, body = await bob.next()
        assert (kind, c, cmid) == (Kind.ERROR, conv, 9)
        error = json.loads(body)
        assert error["code"] == ErrorCode.TOO_LARGE
        assert "limit" in error["message"]
        assert await node.store.history(conv, 0, 10) == []
        # The connection stays usable.
        bob.command(Kind.SEND, b"fine", conv=conv, cmid=10)
        assert (await bob.next())[0] == Kind.ACK
        bob.close()
        await alice.close()

    run(scenario, max_message_bytes=4096)


def test_dict_flag_without_compressed_gets_bad_request(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice, conv = await direct(node, "alice", "bob")
        bob = await Stream.tcp(node)
        await bob.hello(node, "bob")
        bob.command(Kind.SEND, b"plain", conv=conv, cmid=3, flags=FLAG_DICT)
        kind, *_, body = await bob.next()
        assert kind == Kind.ERROR
        assert json.loads(body)["code"] == ErrorCode.BAD_REQUEST
        bob.close()
        await alice.close()

    run(scenario)


def test_client_with_compression_reads_compressed_deliveries_and_plain_client_does_not_ask(
    run: Run,
) -> None:
    async def scenario(node: Node) -> None:
        alice, conv = await direct(node, "alice", "bob")
        bob = Client(node.url, node.issuer.mint("bob", "phone"), compression=True)
        await bob.connect()
        assert bob.compression == "zstd-dict"
        assert alice.compression is None
        await alice.send(conv, LONG)
        assert (await delivery(bob)).body == LONG
        await bob.send(conv, LONG)
        assert (await delivery(alice)).body == LONG
        await bob.close()
        await alice.close()

    run(scenario)


def test_json_client_asking_for_compression_gets_none(run: Run) -> None:
    async def scenario(node: Node) -> None:
        client = Client(
            node.url, node.issuer.mint("carol", "web"), protocol="json", compression=True
        )
        await client.connect()
        assert client.compression is None
        await client.close()

    run(scenario)


class _RefusesCmidTwo(SQLiteStore):
    """Appends whose cmid is 2 fail on their own (a StoreError that is the caller's
    business); an ``append`` of its own also routes the node's runs through it."""

    async def append(
        self, conv: int, sender: str, device: str, cmid: int, body: bytes, kind: str = "text"
    ) -> AppendResult:
        if cmid == 2:
            raise ConversationNotFoundError(conv)
        return await super().append(conv, sender, device, cmid, body, kind)


def test_a_run_answers_each_send_in_order_when_one_fails_alone(
    loop_name: str, tmp_path: Path
) -> None:
    """Three SENDs of one connection reach the store as one run; the middle one fails on
    its own: the connection gets ACK, ERROR, ACK in that order (the ACK queued before
    the failure leaves first), and the other two are stored."""

    async def main() -> None:
        store = _RefusesCmidTwo(tmp_path / "run.db")
        await store.open()
        config = NodeConfig(port=0, data_dir=tmp_path, token_secret=SECRET, tcp_port=0)
        node = Node(config, store=store)
        await node.start()
        try:
            alice, conv = await direct(node, "alice", "bob")
            bob = await Stream.tcp(node)
            await bob.hello(node, "bob")
            bob.command(Kind.SEND, b"warm-up", conv=conv, cmid=10)  # caches the membership
            assert (await bob.next(Kind.ACK))[4] == 10
            bob.write(b"".join(encode_frame(Kind.SEND, b"m", conv, 0, c) for c in (1, 2, 3)))
            answers = [await bob.next() for _ in range(3)]
            assert [(f[0], f[4]) for f in answers] == [
                (Kind.ACK, 1),
                (Kind.ERROR, 2),
                (Kind.ACK, 3),
            ]
            assert json.loads(answers[1][5])["code"] == ErrorCode.NO_SUCH_CONVERSATION
            assert [m.cmid for m in await store.history(conv, 0, 10)] == [10, 1, 3]
            bob.close()
            await alice.close()
        finally:
            await node.stop()
            await store.close()

    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_name]) as r:
        r.run(asyncio.wait_for(main(), 30))
