"""The echo server (``python -m bluewren.echo``) against three independent peers.

- the ``websockets`` client and the ``wsproto`` state machine: well-formed traffic
  (every length boundary of the frame header, fragmentation, ping, close);
- a raw socket speaking hand-built bytes: the opening handshake and every malformed
  frame RFC 6455 says must fail the connection, each with the exact close code (or
  HTTP status) the server must answer, and a fresh connection must still echo after.

Nothing here uses BlueWren's own codec: frames are packed with ``struct`` and the
accept key is computed with ``hashlib``, so a bug in the code under test cannot
cancel itself out.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.sync.client import ClientConnection, connect
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from conftest import LOOPS, EchoServer, run_echo_server

IO_TIMEOUT = 10.0
"""Seconds any single read may wait: a server that stays silent fails, it never hangs."""

LENGTHS = (0, 1, 125, 126, 127, 65535, 65536, 1 << 20)
"""Payload lengths around each switch of the frame header's length encoding."""

SMALL_LIMIT = 1024
"""``--max-message-size`` of the dedicated small-limit server."""

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
MASK = b"\x37\xfa\x21\x3d"

NORMAL, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1000, 1002, 1007, 1009


# -- payloads -----------------------------------------------------------------------


def text_of(length: int) -> str:
    """A string whose UTF-8 encoding is exactly ``length`` bytes, multi-byte characters included."""
    unit = "héllo wörld €𝄞 "
    out = (unit * (length // len(unit.encode()) + 1)).encode()[:length]
    # Cutting may have split a character: pad the broken tail with ASCII.
    text = out.decode("utf-8", "ignore")
    return text + "a" * (length - len(text.encode()))


def bytes_of(length: int) -> bytes:
    """Every byte value, repeated to ``length`` bytes."""
    return (bytes(range(256)) * (length // 256 + 1))[:length]


# -- hand-built frames --------------------------------------------------------------


def masked(payload: bytes, mask: bytes = MASK) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (RFC 6455 section 5.3)."""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    flags: int = 0,
    mask: bytes | None = MASK,
    length: int | None = None,
    length_bits: int | None = None,
) -> bytes:
    """One frame, packed by hand.

    ``length`` is the declared payload length (default: the real one) and
    ``length_bits`` forces its encoding (7, 16 or 64; default: the minimal one),
    so that lying and non-minimal headers can be built.
    """
    declared = len(payload) if length is None else length
    if length_bits is None:
        length_bits = 7 if declared <= 125 else 16 if declared <= 0xFFFF else 64
    mask_bit = 0x80 if mask is not None else 0
    head = bytes([(0x80 if fin else 0) | flags | opcode])
    if length_bits == 7:
        head += bytes([mask_bit | declared])
    elif length_bits == 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", declared)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", declared)
    if mask is None:
        return head + payload
    return head + mask + masked(payload, mask)


def close_frame(code: int | None = None, reason: bytes = b"") -> bytes:
    """A masked client close frame with ``code`` (none: empty body) and a raw ``reason``."""
    body = b"" if code is None else struct.pack("!H", code) + reason
    return frame(OP_CLOSE, body)


class Frame(NamedTuple):
    """A frame as the server sent it."""

    fin: bool
    flags: int
    opcode: int
    payload: bytes


# -- a raw client -------------------------------------------------------------------


def handshake_request(
    port: int,
    *,
    key: str | None = None,
    version: str = "13",
    extra: tuple[str, ...] = (),
    with_key: bool = True,
) -> bytes:
    """An upgrade request built by hand."""
    lines = [
        "GET / HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Version: {version}",
    ]
    if with_key:
        lines.append(f"Sec-WebSocket-Key: {key or new_key()}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def expected_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class HttpResponse(NamedTuple):
    status: int
    headers: dict[str, str]
    """Header names lower-cased."""
    body: bytes


class RawClient:
    """A blocking socket that speaks hand-built WebSocket bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        self.buf += chunk
        return bool(chunk)

    def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"server closed with {len(self.buf)} of {n} bytes read")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_http_response(self) -> HttpResponse:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"server closed mid-response: {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.read_exactly(int(headers.get("content-length", "0")))
        return HttpResponse(int(status), headers, body)

    def read_frame(self) -> Frame:
        b0, b1 = self.read_exactly(2)
        assert not b1 & 0x80, "the server masked a frame (RFC 6455 5.1: it must not)"
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self.read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self.read_exactly(8))
        return Frame(bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F, self.read_exactly(length))

    def read_close(self) -> tuple[int | None, bytes]:
        """The server's next frame, which must be a close: ``(code, reason)``."""
        got = self.read_frame()
        assert got.opcode == OP_CLOSE, f"expected a close frame, got {got!r:.200}"
        assert got.fin, "a close frame must not be fragmented"
        if not got.payload:
            return None, b""
        assert len(got.payload) >= 2, f"a 1-byte close body from the server: {got.payload!r}"
        return struct.unpack("!H", got.payload[:2])[0], got.payload[2:]

    def assert_eof(self) -> None:
        """The server closes the TCP connection and sends nothing more."""
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            # A reset after the last byte is a close too (unread input on the server).
            pass
        assert self.buf == b"", f"bytes after the end: {self.buf!r:.200}"


@contextmanager
def raw_connection(server: EchoServer) -> Iterator[RawClient]:
    """A TCP connection to ``server``, not yet upgraded."""
    sock = socket.create_connection(server.address, timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield RawClient(sock)
    finally:
        sock.close()


@contextmanager
def raw_websocket(server: EchoServer) -> Iterator[RawClient]:
    """A connection upgraded by a hand-built handshake, the response checked."""
    with raw_connection(server) as client:
        key = new_key()
        client.send(handshake_request(server.port, key=key))
        resp = client.read_http_response()
        assert resp.status == 101, resp
        assert resp.headers.get("upgrade", "").lower() == "websocket", resp
        assert "upgrade" in resp.headers.get("connection", "").lower(), resp
        assert resp.headers.get("sec-websocket-accept") == expected_accept(key), resp
        assert "sec-websocket-extensions" not in resp.headers, "no extension was offered"
        yield client


def assert_fails_with(server: EchoServer, data: bytes, code: int) -> None:
    """Sends ``data`` on a fresh connection: the server answers a close frame with
    ``code`` (and nothing before it), closes TCP, and stays up for the next client."""
    with raw_websocket(server) as client:
        client.send(data)
        got, _ = client.read_close()
        assert got == code, f"close code {got}, expected {code}"
        client.assert_eof()
    assert_still_echoes(server)


def assert_still_echoes(server: EchoServer) -> None:
    """The server process is alive and a new connection gets its message back."""
    assert server.is_running(), f"the server exited with status {server.process.returncode}"
    with raw_websocket(server) as client:
        client.send(frame(OP_TEXT, b"still here"))
        assert client.read_frame() == Frame(True, 0, OP_TEXT, b"still here")
        client.send(close_frame(NORMAL))
        assert client.read_close()[0] == NORMAL
        client.assert_eof()


@pytest.fixture(scope="module", params=LOOPS)
def small_server(request: pytest.FixtureRequest) -> Iterator[EchoServer]:
    """An echo server started with ``--max-message-size 1024``."""
    with run_echo_server(request.param, "--max-message-size", str(SMALL_LIMIT)) as server:
        yield server


# == the websockets client ==========================================================


def ws_connect(server: EchoServer, compression: str | None = None) -> ClientConnection:
    """The ``websockets`` sync client, without its keepalive pings or proxy lookup."""
    return connect(
        server.url,
        compression=compression,
        max_size=None,
        proxy=None,
        ping_interval=None,
        open_timeout=IO_TIMEOUT,
        close_timeout=IO_TIMEOUT,
    )


@pytest.mark.parametrize("length", LENGTHS)
def test_websockets_client_gets_text_and_binary_back_at_each_length(
    echo_server: EchoServer, length: int
) -> None:
    with ws_connect(echo_server) as ws:
        text, data = text_of(length), bytes_of(length)
        ws.send(text)
        assert ws.recv(timeout=IO_TIMEOUT) == text
        ws.send(data)
        assert ws.recv(timeout=IO_TIMEOUT) == data


def test_websockets_client_fragmented_messages_come_back_whole(echo_server: EchoServer) -> None:
    with ws_connect(echo_server) as ws:
        ws.send(["hé", "", "llo ", "wörld €" * 30000])
        assert ws.recv(timeout=IO_TIMEOUT) == "héllo " + "wörld €" * 30000
        parts = [bytes_of(10), b"", bytes_of(70000), b"\xff"]
        ws.send(parts)
        assert ws.recv(timeout=IO_TIMEOUT) == b"".join(parts)


@pytest.mark.parametrize("payload", [b"", b"probe", bytes_of(125)])
def test_websockets_client_ping_is_answered(echo_server: EchoServer, payload: bytes) -> None:
    with ws_connect(echo_server) as ws:
        assert ws.ping(payload).wait(IO_TIMEOUT), "no pong"
        ws.send("after the ping")
        assert ws.recv(timeout=IO_TIMEOUT) == "after the ping"


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
def test_websockets_client_close_is_answered_with_its_code(
    echo_server: EchoServer, code: int
) -> None:
    with ws_connect(echo_server) as ws:
        ws.send("last words")
        assert ws.recv(timeout=IO_TIMEOUT) == "last words"
        ws.close(code, "done")
        assert ws.close_code == code


def test_websockets_client_offering_permessage_deflate_gets_no_extension(
    echo_server: EchoServer,
) -> None:
    with ws_connect(echo_server, compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send(text_of(1000))
        assert ws.recv(timeout=IO_TIMEOUT) == text_of(1000)


# == wsproto =======================================================================


class WsprotoClient:
    """wsproto's client state machine over a blocking socket."""

    def __init__(self, server: EchoServer) -> None:
        self.sock = socket.create_connection(server.address, timeout=IO_TIMEOUT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []
        self.send(Request(host=f"127.0.0.1:{server.port}", target="/"))
        accepted = self.next_event()
        assert isinstance(accepted, AcceptConnection), accepted
        assert accepted.extensions == []

    def send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    def next_event(self) -> Event:
        while not self.pending:
            data = self.sock.recv(1 << 16)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                raise ConnectionError("server closed the connection")
        return self.pending.pop(0)

    def next_message(self) -> str | bytes:
        """The next whole message, however wsproto splits it into events."""
        text: list[str] = []
        data: list[bytes] = []
        while True:
            event = self.next_event()
            if isinstance(event, TextMessage):
                text.append(event.data)
            elif isinstance(event, BytesMessage):
                data.append(bytes(event.data))
            else:
                raise AssertionError(f"expected a message, got {event!r:.200}")
            if event.message_finished:
                break
        assert not (text and data), "text and binary chunks in one message"
        return "".join(text) if text else b"".join(data)

    def close(self) -> None:
        self.sock.close()


@contextmanager
def wsproto_client(server: EchoServer) -> Iterator[WsprotoClient]:
    client = WsprotoClient(server)
    try:
        yield client
    finally:
        client.close()


@pytest.mark.parametrize("length", LENGTHS)
def test_wsproto_gets_text_and_binary_back_at_each_length(
    echo_server: EchoServer, length: int
) -> None:
    with wsproto_client(echo_server) as client:
        text, data = text_of(length), bytes_of(length)
        client.send(TextMessage(data=text))
        assert client.next_message() == text
        client.send(BytesMessage(data=data))
        assert client.next_message() == data


def test_wsproto_fragmented_messages_come_back_whole(echo_server: EchoServer) -> None:
    with wsproto_client(echo_server) as client:
        texts = ["frag", "", "mented €", "𝄞" * 40000]
        for i, part in enumerate(texts):
            client.send(TextMessage(data=part, message_finished=i == len(texts) - 1))
        assert client.next_message() == "".join(texts)
        blobs = [bytes_of(65536), bytes_of(3), b""]
        for i, blob in enumerate(blobs):
            client.send(BytesMessage(data=blob, message_finished=i == len(blobs) - 1))
        assert client.next_message() == b"".join(blobs)


def test_wsproto_ping_is_answered_with_the_same_payload(echo_server: EchoServer) -> None:
    with wsproto_client(echo_server) as client:
        client.send(Ping(payload=b"wsproto ping"))
        pong = client.next_event()
        assert isinstance(pong, Pong), pong
        assert pong.payload == b"wsproto ping"


def test_wsproto_close_is_answered_with_1000_and_tcp_closes(echo_server: EchoServer) -> None:
    with wsproto_client(echo_server) as client:
        client.send(TextMessage(data="bye soon"))
        assert client.next_message() == "bye soon"
        client.send(CloseConnection(code=NORMAL, reason="bye"))
        reply = client.next_event()
        assert isinstance(reply, CloseConnection), reply
        assert reply.code == NORMAL
        assert client.sock.recv(1) == b"", "the server kept TCP open after the close handshake"


# == raw sockets: well-formed traffic ===============================================


def test_handshake_answers_101_with_the_accept_key_of_rfc_6455(echo_server: EchoServer) -> None:
    # The sample nonce of RFC 6455 section 1.3 and its published accept value.
    with raw_connection(echo_server) as client:
        client.send(handshake_request(echo_server.port, key="dGhlIHNhbXBsZSBub25jZQ=="))
        resp = client.read_http_response()
        assert resp.status == 101
        assert resp.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_frames_pipelined_behind_the_handshake_are_echoed(echo_server: EchoServer) -> None:
    with raw_connection(echo_server) as client:
        client.send(handshake_request(echo_server.port) + frame(OP_TEXT, b"early bird"))
        assert client.read_http_response().status == 101
        assert client.read_frame() == Frame(True, 0, OP_TEXT, b"early bird")


def test_many_frames_in_one_write_are_echoed_in_order(echo_server: EchoServer) -> None:
    with raw_websocket(echo_server) as client:
        client.send(b"".join(frame(OP_BINARY, b"%d" % i) for i in range(500)))
        for i in range(500):
            assert client.read_frame() == Frame(True, 0, OP_BINARY, b"%d" % i)


def test_frame_dripped_one_byte_at_a_time_is_echoed(echo_server: EchoServer) -> None:
    with raw_websocket(echo_server) as client:
        data = frame(OP_TEXT, text_of(300).encode())
        for i in range(len(data)):
            client.send(data[i : i + 1])
        assert client.read_frame() == Frame(True, 0, OP_TEXT, text_of(300).encode())


def test_ping_between_fragments_is_answered_and_the_message_echoes_whole(
    echo_server: EchoServer,
) -> None:
    with raw_websocket(echo_server) as client:
        client.send(frame(OP_TEXT, b"one ", fin=False) + frame(OP_PING, b"mid"))
        assert client.read_frame() == Frame(True, 0, OP_PONG, b"mid")
        client.send(frame(OP_CONT, b"two", fin=False) + frame(OP_CONT, b" three"))
        assert client.read_frame() == Frame(True, 0, OP_TEXT, b"one two three")


def test_multibyte_character_split_across_fragments_is_valid(echo_server: EchoServer) -> None:
    euro = "€".encode()
    with raw_websocket(echo_server) as client:
        client.send(frame(OP_TEXT, b"price " + euro[:1], fin=False))
        client.send(frame(OP_CONT, euro[1:2], fin=False) + frame(OP_CONT, euro[2:] + b"5"))
        assert client.read_frame() == Frame(True, 0, OP_TEXT, b"price " + euro + b"5")


def test_unsolicited_pong_is_ignored(echo_server: EchoServer) -> None:
    with raw_websocket(echo_server) as client:
        client.send(frame(OP_PONG, b"heartbeat") + frame(OP_TEXT, b"next"))
        assert client.read_frame() == Frame(True, 0, OP_TEXT, b"next")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, b"done"),
        (1001, b""),
        (1003, b""),
        (1011, b""),
        (1012, b""),
        (1014, b""),
        (3000, b""),
        (3999, b""),
        (4000, b""),
        (4999, "é".encode()),
    ],
)
def test_valid_close_is_echoed_with_its_code(
    echo_server: EchoServer, code: int, reason: bytes
) -> None:
    with raw_websocket(echo_server) as client:
        client.send(close_frame(code, reason))
        assert client.read_close()[0] == code
        client.assert_eof()


def test_close_without_a_body_is_answered_with_1000(echo_server: EchoServer) -> None:
    # RFC 6455 5.5.1: an empty close body is valid; the reply then carries 1000 or nothing.
    with raw_websocket(echo_server) as client:
        client.send(close_frame(None))
        assert client.read_close()[0] in (None, NORMAL)
        client.assert_eof()


def test_nothing_after_the_close_frame_is_echoed(echo_server: EchoServer) -> None:
    with raw_websocket(echo_server) as client:
        client.send(close_frame(NORMAL) + frame(OP_TEXT, b"too late"))
        assert client.read_close()[0] == NORMAL
        client.assert_eof()


# == raw sockets: malformed frames ==================================================

MALFORMED_FRAMES = {
    # RFC 6455 5.2: "the most significant bit MUST be 0" in a 64-bit length.
    "64-bit length with the top bit set": frame(OP_BINARY, length=1 << 63, length_bits=64),
    "64-bit length of all ones": frame(OP_BINARY, length=(1 << 64) - 1, length_bits=64),
    # 5.2: "the minimal number of bytes MUST be used to encode the length".
    "16-bit length of 5": frame(OP_BINARY, b"12345", length_bits=16),
    "16-bit length of 125": frame(OP_BINARY, bytes_of(125), length_bits=16),
    "64-bit length of 200": frame(OP_BINARY, bytes_of(200), length_bits=64),
    "64-bit length of 65535": frame(OP_BINARY, bytes_of(65535), length_bits=64),
    "64-bit length of 5": frame(OP_BINARY, b"12345", length_bits=64),
    # 5.5: control frames are never fragmented and carry at most 125 bytes.
    "fragmented ping": frame(OP_PING, b"x", fin=False) + frame(OP_CONT, b"y"),
    "fragmented close": frame(OP_CLOSE, b"\x03\xe8", fin=False) + frame(OP_CONT, b""),
    "fragmented pong": frame(OP_PONG, b"x", fin=False),
    "ping of 126 bytes": frame(OP_PING, bytes_of(126)),
    "pong of 126 bytes": frame(OP_PONG, bytes_of(126)),
    "close of 126 bytes": close_frame(NORMAL, b"r" * 124),
    "ping of 125 bytes in a 16-bit length": frame(OP_PING, bytes_of(125), length_bits=16),
    # 5.2: RSV bits without a negotiated extension.
    "RSV1 on text": frame(OP_TEXT, b"x", flags=RSV1),
    "RSV2 on text": frame(OP_TEXT, b"x", flags=RSV2),
    "RSV3 on text": frame(OP_TEXT, b"x", flags=RSV3),
    "RSV1 on ping": frame(OP_PING, b"x", flags=RSV1),
    "RSV3 on binary": frame(OP_BINARY, b"x", flags=RSV3),
    "all RSV bits on close": frame(OP_CLOSE, b"\x03\xe8", flags=RSV1 | RSV2 | RSV3),
    "RSV2 on a continuation": frame(OP_TEXT, b"a", fin=False) + frame(OP_CONT, b"b", flags=RSV2),
    # 5.1: "The server MUST close the connection upon receiving a frame that is not masked."
    "unmasked text": frame(OP_TEXT, b"plain", mask=None),
    "unmasked empty binary": frame(OP_BINARY, b"", mask=None),
    "unmasked ping": frame(OP_PING, b"", mask=None),
    "unmasked close": frame(OP_CLOSE, b"\x03\xe8", mask=None),
    # 5.4: a continuation needs a started message, a new message a finished one.
    "continuation without a start": frame(OP_CONT, b"orphan"),
    "final continuation without a start": frame(OP_CONT, b"orphan", fin=True),
    "text during a fragmented text": frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"),
    "binary during a fragmented text": frame(OP_TEXT, b"a", fin=False) + frame(OP_BINARY, b"b"),
    "text during a fragmented binary": frame(OP_BINARY, b"a", fin=False) + frame(OP_TEXT, b"b"),
    # 5.5.1: a close body is empty or at least 2 bytes.
    "1-byte close body": frame(OP_CLOSE, b"\x03"),
}
for _op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
    MALFORMED_FRAMES[f"reserved opcode {_op}"] = frame(_op, b"x")
MALFORMED_FRAMES["reserved opcode 3 mid-message"] = frame(OP_TEXT, b"a", fin=False) + frame(3, b"")
# 7.4.1 / 7.4.2: codes that must never be sent on the wire, unassigned ones, out of range.
for _code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
    MALFORMED_FRAMES[f"close code {_code}"] = close_frame(_code)


@pytest.mark.parametrize("data", MALFORMED_FRAMES.values(), ids=MALFORMED_FRAMES.keys())
def test_malformed_frame_closes_with_1002_and_the_server_stays_up(
    echo_server: EchoServer, data: bytes
) -> None:
    assert_fails_with(echo_server, data, PROTOCOL_ERROR)


def test_valid_message_before_a_malformed_frame_is_still_echoed(echo_server: EchoServer) -> None:
    with raw_websocket(echo_server) as client:
        client.send(frame(OP_TEXT, b"fine") + frame(OP_TEXT, b"bad", mask=None))
        assert client.read_frame() == Frame(True, 0, OP_TEXT, b"fine")
        assert client.read_close()[0] == PROTOCOL_ERROR
        client.assert_eof()


INVALID_UTF8 = {
    "lone 0xff": b"\xff",
    "overlong slash": b"\xc0\xaf",
    "overlong NUL (3 bytes)": b"\xe0\x80\x80",
    "UTF-16 surrogate": b"\xed\xa0\x80",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
    "stray continuation byte": b"abc\x80",
    "truncated at the end": b"price \xe2\x82",
    "kosme with a surrogate": "κόσμε".encode() + b"\xed\xa0\x80edited",
}


@pytest.mark.parametrize("payload", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
def test_invalid_utf8_text_closes_with_1007(echo_server: EchoServer, payload: bytes) -> None:
    assert_fails_with(echo_server, frame(OP_TEXT, payload), INVALID_DATA)


@pytest.mark.parametrize("payload", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
def test_invalid_utf8_split_over_one_byte_fragments_closes_with_1007(
    echo_server: EchoServer, payload: bytes
) -> None:
    pieces = [payload[i : i + 1] for i in range(len(payload))]
    data = frame(OP_TEXT, pieces[0], fin=len(pieces) == 1)
    last = len(pieces) - 2
    data += b"".join(frame(OP_CONT, p, fin=i == last) for i, p in enumerate(pieces[1:]))
    assert_fails_with(echo_server, data, INVALID_DATA)


def test_character_split_across_fragments_with_a_bad_continuation_closes_with_1007(
    echo_server: EchoServer,
) -> None:
    data = frame(OP_TEXT, b"price \xe2\x82", fin=False) + frame(OP_CONT, b"(5")
    assert_fails_with(echo_server, data, INVALID_DATA)


def test_invalid_utf8_fails_before_the_message_is_finished(echo_server: EchoServer) -> None:
    # RFC 6455 8.1: the endpoint fails the connection on invalid UTF-8 as it finds it;
    # the last fragment is never sent, so a server that only checks whole messages hangs.
    assert_fails_with(echo_server, frame(OP_TEXT, b"ok so far \xff", fin=False), INVALID_DATA)


def test_invalid_utf8_in_a_close_reason_closes_with_1007(echo_server: EchoServer) -> None:
    assert_fails_with(echo_server, close_frame(NORMAL, b"bad \xff reason"), INVALID_DATA)


# -- sizes --------------------------------------------------------------------------


def test_length_of_2_to_the_62_closes_with_1009_from_the_header_alone(
    echo_server: EchoServer,
) -> None:
    # 2**62 is a well-formed 64-bit length (top bit clear), so this is not a framing error:
    # it is a frame larger than the limit, which the server's documented contract
    # (WebSocketProtocol: max_frame_size closes with 1009) and RFC 6455 7.4.1 answer with
    # 1009 Message Too Big. Only the header is sent: the answer cannot wait for the body.
    assert_fails_with(echo_server, frame(OP_BINARY, length=1 << 62, length_bits=64), TOO_BIG)


def _vm_peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmPeak:"):
                return int(line.split()[1])
    raise AssertionError("no VmPeak in /proc/PID/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_huge_declared_lengths_are_refused_without_reserving_memory(
    echo_server: EchoServer,
) -> None:
    # VmPeak is the high-water mark of the address space: a buffer reserved for the
    # declared length would raise it even if its pages were never touched.
    before = _vm_peak_kib(echo_server.process.pid)
    for length in (1 << 32, 1 << 40, 1 << 62):
        assert_fails_with(echo_server, frame(OP_BINARY, length=length, length_bits=64), TOO_BIG)
        for op in (OP_TEXT, OP_CONT):
            start = frame(OP_BINARY, b"x", fin=False) if op == OP_CONT else b""
            data = start + frame(op, length=length, length_bits=64)
            assert_fails_with(echo_server, data, TOO_BIG)
    grown_mib = (_vm_peak_kib(echo_server.process.pid) - before) / 1024
    assert grown_mib < 256, f"address space grew by {grown_mib:.0f} MiB for headers alone"


def test_frame_over_the_limit_closes_with_1009_before_its_body(
    small_server: EchoServer,
) -> None:
    header_only = frame(OP_BINARY, length=SMALL_LIMIT + 1)
    assert_fails_with(small_server, header_only, TOO_BIG)


def test_whole_frame_over_the_limit_closes_with_1009(small_server: EchoServer) -> None:
    assert_fails_with(small_server, frame(OP_TEXT, b"a" * (SMALL_LIMIT + 1)), TOO_BIG)


def test_fragmented_message_over_the_limit_closes_with_1009(small_server: EchoServer) -> None:
    part = b"a" * 400
    data = frame(OP_TEXT, part, fin=False) + frame(OP_CONT, part, fin=False)
    assert_fails_with(small_server, data + frame(OP_CONT, part), TOO_BIG)


def test_messages_of_exactly_the_limit_are_echoed(small_server: EchoServer) -> None:
    half = bytes_of(SMALL_LIMIT // 2)
    with raw_websocket(small_server) as client:
        client.send(frame(OP_BINARY, bytes_of(SMALL_LIMIT)))
        assert client.read_frame() == Frame(True, 0, OP_BINARY, bytes_of(SMALL_LIMIT))
        client.send(frame(OP_BINARY, half, fin=False) + frame(OP_CONT, half))
        assert client.read_frame() == Frame(True, 0, OP_BINARY, half + half)


def test_control_frames_do_not_count_toward_the_message_limit(small_server: EchoServer) -> None:
    half = b"b" * (SMALL_LIMIT // 2)
    with raw_websocket(small_server) as client:
        data = frame(OP_TEXT, half, fin=False) + frame(OP_PING, bytes_of(125))
        client.send(data + frame(OP_CONT, half))
        assert client.read_frame() == Frame(True, 0, OP_PONG, bytes_of(125))
        assert client.read_frame() == Frame(True, 0, OP_TEXT, half + half)


# -- the opening handshake ------------------------------------------------------------


def assert_rejected(server: EchoServer, request: bytes, status: int) -> HttpResponse:
    """Sends ``request``: the server answers ``status``, closes TCP and stays up."""
    with raw_connection(server) as client:
        client.send(request)
        resp = client.read_http_response()
        assert resp.status == status, resp
        client.assert_eof()
    assert_still_echoes(server)
    return resp


def test_request_over_8_kib_is_rejected_with_431(echo_server: EchoServer) -> None:
    padding = tuple(f"X-Padding-{i}: {'p' * 3000}" for i in range(3))
    request = handshake_request(echo_server.port, extra=padding)
    assert len(request) > 9000
    assert_rejected(echo_server, request, 431)


def test_endless_request_line_is_rejected_with_431(echo_server: EchoServer) -> None:
    # No line end at all: the server must give up at its limit, not buffer forever.
    assert_rejected(echo_server, b"GET /" + b"a" * 20000, 431)


def test_request_with_too_many_headers_is_rejected_with_431(echo_server: EchoServer) -> None:
    many = tuple(f"X-H{i}: v" for i in range(100))
    request = handshake_request(echo_server.port, extra=many)
    assert len(request) < 2048, "small enough that only the count can be the reason"
    assert_rejected(echo_server, request, 431)


@pytest.mark.parametrize("version", ["8", "12", "14", "abc"])
def test_unsupported_version_is_rejected_with_426_naming_13(
    echo_server: EchoServer, version: str
) -> None:
    resp = assert_rejected(echo_server, handshake_request(echo_server.port, version=version), 426)
    assert resp.headers.get("sec-websocket-version") == "13", resp


def test_request_without_a_key_is_rejected_with_400(echo_server: EchoServer) -> None:
    assert_rejected(echo_server, handshake_request(echo_server.port, with_key=False), 400)


# == many clients at once ===========================================================

CLIENTS = 200
MESSAGES = 50


async def _client_round(url: str, client: int) -> list[str]:
    async with async_connect(
        url, compression=None, proxy=None, ping_interval=None, open_timeout=60
    ) as ws:
        # All sends first, then all receives: ordering is checked under pipelining.
        for i in range(MESSAGES):
            await ws.send(f"client {client} message {i}")
        return [str(await ws.recv()) for _ in range(MESSAGES)]


async def _many_clients(url: str) -> list[list[str]]:
    async with asyncio.timeout(120):
        return await asyncio.gather(*(_client_round(url, c) for c in range(CLIENTS)))


def test_200_concurrent_clients_get_every_echo_in_order(echo_server: EchoServer) -> None:
    received = asyncio.run(_many_clients(echo_server.url))
    for client, messages in enumerate(received):
        assert messages == [f"client {client} message {i}" for i in range(MESSAGES)]
    assert_still_echoes(echo_server)
