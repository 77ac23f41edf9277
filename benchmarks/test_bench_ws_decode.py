"""WebSocket frame decoding from Python, server side, on the same bytes.

One buffer of masked client frames (binary, random payloads, a fresh mask per
frame) is decoded by three implementations; each group puts them side by side:

- ``bluewren``: ``bluewren.WsDecoder(role="server").feed(buffer)``;
- ``wsproto``: ``wsproto.frame_protocol.FrameProtocol(client=False, extensions=[])``,
  ``receive_bytes(buffer)`` then ``received_frames()``;
- ``websockets``: ``websockets.frames.Frame.parse`` driven by a
  ``websockets.streams.StreamReader`` holding the buffer, as its protocol does.

Every round starts from a fresh decoder and ends with the list of the library's
own events (tuples, wsproto ``Frame`` objects, websockets ``Frame`` objects), so
all three do the same whole job. The buffers are built here with ``struct`` (not
with any implementation under test), and each implementation's opcodes and
payloads are checked equal to the originals once, outside the timed part.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from websockets.frames import Frame as WebsocketsFrame
from websockets.streams import StreamReader
from wsproto.frame_protocol import FrameProtocol

import bluewren

OP_BINARY = 0x2

CASES = {
    "1000x100B": (1_000, 100),
    "16x64KiB": (16, 64 * 1024),
}
"""Group suffix -> (frame count, payload length)."""


def masked_frame(payload: bytes, mask: bytes) -> bytes:
    """One final, masked binary frame as a client sends it (RFC 6455, 5.2)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | OP_BINARY, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | OP_BINARY, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | OP_BINARY, 0x80 | 127, n)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return header + mask + masked


def make_case(count: int, size: int) -> tuple[bytes, list[bytes]]:
    """The wire buffer of ``count`` frames of ``size`` bytes, and their payloads."""
    rng = random.Random(f"{count}x{size}")
    payloads = [rng.randbytes(size) for _ in range(count)]
    wire = b"".join(masked_frame(p, rng.randbytes(4)) for p in payloads)
    return wire, payloads


def decode_bluewren(wire: bytes) -> list[tuple[int, bytes]]:
    return bluewren.WsDecoder(role="server").feed(wire)


def decode_wsproto(wire: bytes) -> list[Any]:
    protocol = FrameProtocol(client=False, extensions=[])
    protocol.receive_bytes(wire)
    return list(protocol.received_frames())


def decode_websockets(wire: bytes) -> list[WebsocketsFrame]:
    reader = StreamReader()
    reader.feed_data(wire)
    frames = []
    while reader.buffer:
        parser = WebsocketsFrame.parse(reader.read_exact, mask=True, max_size=None)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("the buffer ends inside a frame")
    return frames


Decoder = tuple[Callable[[bytes], list[Any]], Callable[[Any], tuple[int, bytes]]]

DECODERS: dict[str, Decoder] = {
    "bluewren": (decode_bluewren, lambda event: event),
    "wsproto": (decode_wsproto, lambda frame: (frame.opcode.value, frame.payload)),
    "websockets": (decode_websockets, lambda frame: (frame.opcode.value, frame.data)),
}
"""Name -> (the timed decode, which returns the library's own events; the function
that reads ``(opcode, payload)`` out of one event, used outside the timed part)."""


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, bytes, list[bytes]]:
    count, size = CASES[request.param]
    wire, payloads = make_case(count, size)
    return request.param, wire, payloads


@pytest.mark.parametrize("impl", list(DECODERS))
def test_ws_decode(benchmark: Any, case: tuple[str, bytes, list[bytes]], impl: str) -> None:
    name, wire, payloads = case
    decode, opcode_and_payload = DECODERS[impl]
    assert [opcode_and_payload(event) for event in decode(wire)] == [
        (OP_BINARY, payload) for payload in payloads
    ]
    benchmark.group = f"ws-decode-{name}"
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["wire_bytes"] = len(wire)
    benchmark.extra_info["frames"] = len(payloads)
    benchmark(decode, wire)
