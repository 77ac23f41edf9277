"""The Cython ``WebSocketProtocol``: policy hooks, batching and limits, on both event loops."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable

import bluewren
from bluewren.protocol import OP_BINARY, OP_TEXT, BufferedWebSocketProtocol
from conftest import Run

TIMEOUT = 10.0


class Recorder(BufferedWebSocketProtocol):
    """Accepts `chat` when offered, refuses `/forbidden`, echoes upper-cased text."""

    def __init__(self, **limits: int) -> None:
        self.events: list[tuple[str, object]] = []

    def request_received(self, path: str, offered: list[str]) -> str | tuple[int, str] | None:
        self.events.append(("request", (path, offered, self.request_header("x-tenant"))))
        if path == "/forbidden":
            return (403, "not here")
        return "chat" if "chat" in offered else None

    def message_received(self, opcode: int, payload: bytes) -> None:
        self.events.append(("message", (opcode, payload)))
        self.send(opcode, payload.upper())

    def closing(self, code: int, reason: str) -> None:
        self.events.append(("closing", (code, reason)))


class Client:
    """A raw-socket client built on the engine's client-side codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = bluewren.WsDecoder(role="client")
        self.pending: list[tuple[int, bytes]] = []

    @classmethod
    async def connect(
        cls, port: int, path: str = "/", protocols: tuple[str, ...] = (), extra: bytes = b""
    ) -> tuple[Client, int, str | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = bluewren.client_handshake("127.0.0.1", path, key, list(protocols))
        writer.write(request.replace(b"\r\n\r\n", b"\r\nX-Tenant: acme\r\n\r\n") + extra)
        data = b""
        while (parsed := bluewren.parse_handshake_response(data, key)) is None:
            chunk = await reader.read(4096)
            assert chunk, "server closed during the handshake"
            data += chunk
        status, protocol, used = parsed
        client = cls(reader, writer)
        if data[used:]:
            client.pending += client.decoder.feed(data[used:])
        return client, status, protocol

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.writer.write(bluewren.encode_ws_frame(opcode, payload, fin=fin, mask=os.urandom(4)))

    async def recv(self) -> tuple[int, bytes]:
        while not self.pending:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise EOFError
            self.pending += self.decoder.feed(chunk)
        return self.pending.pop(0)


async def serve(factory: Callable[[], asyncio.BaseProtocol]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def test_hooks_choose_subprotocol_and_see_request_headers(run: Run) -> None:
    protocols: list[Recorder] = []

    async def main() -> None:
        server = await serve(lambda: protocols.append(Recorder()) or protocols[-1])
        client, status, proto = await Client.connect(port_of(server), "/room", ("json", "chat"))
        assert (status, proto) == (101, "chat")
        client.send(OP_TEXT, b"hello")
        assert await client.recv() == (OP_TEXT, b"HELLO")
        client.writer.close()
        server.close()

    run(asyncio.wait_for(main(), TIMEOUT))
    assert protocols[0].events[0] == ("request", ("/room", ["json", "chat"], "acme"))
    assert protocols[0].events[1] == ("message", (OP_TEXT, b"hello"))


def test_rejected_upgrade_answers_the_status_and_closes(run: Run) -> None:
    async def main() -> None:
        server = await serve(Recorder)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(bluewren.client_handshake("h", "/forbidden", "dGhlIHNhbXBsZSBub25jZQ==", []))
        response = await reader.read()  # until EOF: the server closed
        assert response.startswith(b"HTTP/1.1 403")
        server.close()

    run(asyncio.wait_for(main(), TIMEOUT))


def test_all_replies_of_one_read_leave_in_one_write(run: Run) -> None:
    writes: list[bytes] = []

    class CountingTransport(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            real_write = transport.write  # type: ignore[attr-defined]

            def write(data: bytes) -> None:
                writes.append(data)
                real_write(data)

            proxy = _Proxy(transport, write)
            super().connection_made(proxy)

    async def main() -> None:
        server = await serve(CountingTransport)
        client, _, _ = await Client.connect(port_of(server))
        writes.clear()
        burst = b"".join(
            bluewren.encode_ws_frame(OP_BINARY, b"m%d" % i, mask=b"abcd") for i in range(100)
        )
        client.writer.write(burst)
        got = [await client.recv() for _ in range(100)]
        assert got == [(OP_BINARY, b"M%d" % i) for i in range(100)]
        client.writer.close()
        server.close()

    run(asyncio.wait_for(main(), TIMEOUT))
    # The burst may arrive in more than one read, but never one write per message.
    assert 1 <= len(writes) <= 5, f"{len(writes)} writes for 100 replies"


def test_frames_pipelined_with_the_handshake_are_not_lost(run: Run) -> None:
    async def main() -> None:
        server = await serve(Recorder)
        early = bluewren.encode_ws_frame(OP_TEXT, b"early", mask=b"wxyz")
        client, status, _ = await Client.connect(port_of(server), extra=early)
        assert status == 101
        assert await client.recv() == (OP_TEXT, b"EARLY")
        client.writer.close()
        server.close()

    run(asyncio.wait_for(main(), TIMEOUT))


def test_message_over_the_limit_closes_with_1009(run: Run) -> None:
    protocols: list[Recorder] = []

    def factory() -> Recorder:
        protocols.append(Recorder(max_frame_size=1024, max_message_size=1024))
        return protocols[-1]

    async def main() -> None:
        server = await serve(factory)
        client, _, _ = await Client.connect(port_of(server))
        client.send(OP_BINARY, b"x" * 1025)
        opcode, payload = await client.recv()
        assert opcode == 8
        assert int.from_bytes(payload[:2], "big") == 1009
        server.close()

    run(asyncio.wait_for(main(), TIMEOUT))
    assert protocols[0].events[-1][0] == "closing"
    assert protocols[0].events[-1][1][0] == 1009  # type: ignore[index]


class _Proxy:
    """A transport whose write is observed; everything else is the real transport."""

    def __init__(self, transport: asyncio.BaseTransport, write: Callable[[bytes], None]) -> None:
        self._transport = transport
        self.write = write

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def test_write_raw_passes_bytes_through_and_keeps_queued_replies_first(run: Run) -> None:
    writes: list[bytes] = []
    raw_a = bluewren.encode_ws_frame(OP_BINARY, b"fan-out A")
    raw_b = bluewren.encode_ws_frame(OP_BINARY, b"fan-out B")

    class Raw(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            real_write = transport.write  # type: ignore[attr-defined]

            def write(data: bytes) -> None:
                writes.append(data)
                real_write(data)

            super().connection_made(_Proxy(transport, write))

        def message_received(self, opcode: int, payload: bytes) -> None:
            if payload == b"idle":
                self.write_raw(raw_a)  # nothing queued: the very object is written
            else:
                self.send(opcode, payload.upper())  # queued for the end of the pass
                self.write_raw(raw_b)  # so this goes after it, in the same write

    async def main() -> None:
        server = await serve(Raw)
        client, _, _ = await Client.connect(port_of(server))
        writes.clear()
        client.send(OP_TEXT, b"idle")
        assert await client.recv() == (OP_BINARY, b"fan-out A")
        assert writes[-1] is raw_a
        client.send(OP_TEXT, b"busy")
        assert await client.recv() == (OP_TEXT, b"BUSY")
        assert await client.recv() == (OP_BINARY, b"fan-out B")
        assert writes[-1].endswith(raw_b)
        assert len(writes[-1]) > len(raw_b)
        client.writer.close()
        server.close()

    run(asyncio.wait_for(main(), TIMEOUT))
