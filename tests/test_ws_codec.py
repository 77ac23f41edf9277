"""The RFC 6455 codec: WsDecoder and the frame encoders checked against wsproto in
both directions, round trips over any chunking and fragmentation, every protocol
violation with its close code, and the opening-handshake helpers."""

import struct
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol

from bluewren import (
    HandshakeError,
    WebSocketError,
    WsDecoder,
    accept_key,
    client_handshake,
    encode_ws_close,
    encode_ws_frame,
    parse_handshake_request,
    parse_handshake_response,
)

Event = tuple[int, bytes]
TEXT, BINARY, CLOSE, PING, PONG, CONT = 1, 2, 8, 9, 10, 0
KEY = b"\x37\xfa\x21\x3d"
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
MIB = 1 << 20

fast = settings(max_examples=120, deadline=None)
masks = st.binary(min_size=4, max_size=4)
# Mostly small payloads, some past the 16-bit length form.
payloads = st.binary(max_size=300) | st.builds(
    bytes.__mul__, st.binary(min_size=1, max_size=3), st.integers(40, 25_000)
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


def feed_all(decoder: WsDecoder, pieces: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    return events


def raw_frame(
    b0: int, payload: bytes = b"", *, length: bytes | None = None, mask: bytes = KEY
) -> bytes:
    """A client frame with a hand-made first byte and (optionally) length field."""
    if length is None:
        n = len(payload)
        length = (
            bytes([n])
            if n < 126
            else b"\x7e" + struct.pack(">H", n)
            if n < 1 << 16
            else b"\x7f" + struct.pack(">Q", n)
        )
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([b0, 0x80 | length[0]]) + length[1:] + mask + masked


def violation(data: bytes, role: str = "server", **limits: int) -> WebSocketError:
    with pytest.raises(WebSocketError) as info:
        WsDecoder(role, **limits).feed(data)
    return info.value


def parse_request(data: bytes, **limits: int) -> tuple[dict[str, Any], int]:
    parsed = parse_handshake_request(data, **limits)
    assert parsed is not None, "request head incomplete"
    return parsed


def wsproto_events(proto: FrameProtocol, pieces: list[bytes]) -> list[Event]:
    """Whole messages wsproto's frame parser sees, in the decoder's event format."""
    out: list[Event] = []
    data_buf, control_buf = b"", b""
    for piece in pieces:
        proto.receive_bytes(piece)
        for frame in proto.received_frames():
            op, payload = int(frame.opcode), frame.payload
            if isinstance(payload, tuple):  # a close frame: (code, reason)
                code, reason = payload
                out.append((CLOSE, struct.pack(">H", int(code)) + reason.encode()))
                continue
            chunk = payload.encode() if isinstance(payload, str) else bytes(payload)
            if op in (PING, PONG):
                control_buf += chunk
                if frame.frame_finished:
                    out.append((op, control_buf))
                    control_buf = b""
            else:
                data_buf += chunk
                if frame.message_finished:
                    out.append((op, data_buf))
                    data_buf = b""
    return out


# -- interoperability with wsproto -----------------------------------------------------


def test_server_decoder_reads_wsproto_client_frames() -> None:
    client = FrameProtocol(client=True, extensions=[])
    data = (
        client.send_data("héllo ✓")
        + client.send_data(b"\x00\x01binary")
        + client.ping(b"are you there")
        + client.send_data("frag", fin=False)
        + client.pong(b"between fragments")
        + client.send_data("mented", fin=True)
        + client.send_data(b"x" * 70_000)
        + client.close(1001, "going away")
    )
    assert WsDecoder("server").feed(bytes(data)) == [
        (TEXT, "héllo ✓".encode()),
        (BINARY, b"\x00\x01binary"),
        (PING, b"are you there"),
        (PONG, b"between fragments"),
        (TEXT, b"fragmented"),
        (BINARY, b"x" * 70_000),
        (CLOSE, struct.pack(">H", 1001) + b"going away"),
    ]


def test_client_decoder_reads_wsproto_server_frames() -> None:
    server = FrameProtocol(client=False, extensions=[])
    data = server.send_data("hi") + server.send_data(b"\xff" * 300) + server.close(1000, "")
    assert WsDecoder("client").feed(bytes(data)) == [
        (TEXT, b"hi"),
        (BINARY, b"\xff" * 300),
        (CLOSE, struct.pack(">H", 1000)),
    ]


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_wsproto_reads_our_frames_at_every_length_form(size: int) -> None:
    body = bytes(i % 251 for i in range(size))
    unmasked = encode_ws_frame(BINARY, body)
    masked = encode_ws_frame(BINARY, body, mask=KEY)
    assert len(unmasked) == size + {0: 2, 125: 2, 126: 4, 65_535: 4, 65_536: 10}[size]
    assert len(masked) == len(unmasked) + 4
    assert wsproto_events(FrameProtocol(client=True, extensions=[]), [unmasked]) == [(BINARY, body)]
    assert wsproto_events(FrameProtocol(client=False, extensions=[]), [masked]) == [(BINARY, body)]


def test_wsproto_reads_our_fragments_control_frames_and_close() -> None:
    data = b"".join(
        [
            encode_ws_frame(TEXT, "ünï".encode()[:3], fin=False, mask=KEY),
            encode_ws_frame(PING, b"p", mask=KEY),
            encode_ws_frame(CONT, "ünï".encode()[3:], mask=KEY),
            encode_ws_frame(PONG, b"", mask=KEY),
            encode_ws_close(4000, "bye", mask=KEY),
        ]
    )
    assert wsproto_events(FrameProtocol(client=False, extensions=[]), [data]) == [
        (PING, b"p"),
        (TEXT, "ünï".encode()),
        (PONG, b""),
        (CLOSE, struct.pack(">H", 4000) + b"bye"),
    ]


def test_full_session_with_a_wsproto_client() -> None:
    client = WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(host="chat.example", target="/ws?v=1", subprotocols=["bw1"]))
    parsed, used = parse_request(request)
    assert used == len(request)
    assert (parsed["path"], parsed["host"], parsed["protocols"]) == (
        "/ws?v=1",
        "chat.example",
        ["bw1"],
    )
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(parsed['key'])}\r\n"
        "Sec-WebSocket-Protocol: bw1\r\n\r\n"
    )
    client.receive_data(response.encode())
    accepted = list(client.events())
    assert len(accepted) == 1
    assert isinstance(accepted[0], AcceptConnection)
    assert accepted[0].subprotocol == "bw1"

    outgoing = client.send(TextMessage("hello")) + client.send(BytesMessage(b"\x01\x02"))
    outgoing += client.send(Ping(b"hb"))
    server = WsDecoder("server")
    assert server.feed(outgoing) == [(TEXT, b"hello"), (BINARY, b"\x01\x02"), (PING, b"hb")]

    client.receive_data(encode_ws_frame(TEXT, b"welcome") + encode_ws_close(1000, "done"))
    events = list(client.events())
    assert isinstance(events[0], TextMessage)
    assert events[0].data == "welcome"
    assert isinstance(events[1], CloseConnection)
    assert (events[1].code, events[1].reason) == (1000, "done")


def test_full_session_with_a_wsproto_server() -> None:
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client_handshake("chat.example", "/ws", RFC_KEY, ["bw1", "bw0"]))
    (request,) = list(server.events())
    assert isinstance(request, Request)
    assert (request.host, request.target, request.subprotocols) == (
        "chat.example",
        "/ws",
        ["bw1", "bw0"],
    )
    response = server.send(AcceptConnection(subprotocol="bw1"))
    assert parse_handshake_response(response, RFC_KEY) == (101, "bw1", len(response))

    server.receive_data(encode_ws_frame(TEXT, b"from client", mask=KEY))
    (message,) = list(server.events())
    assert isinstance(message, TextMessage)
    assert message.data == "from client"

    outgoing = server.send(BytesMessage(b"\x00" * 1000)) + server.send(Ping(b"x"))
    assert WsDecoder("client").feed(outgoing) == [(BINARY, b"\x00" * 1000), (PING, b"x")]


# -- round trips --------------------------------------------------------------------------

messages_st = st.lists(
    st.one_of(
        st.tuples(st.just(TEXT), st.text(max_size=200).map(str.encode)),
        st.tuples(st.just(BINARY), payloads),
    ),
    max_size=6,
)


def encode_message(
    op: int, payload: bytes, cuts: list[int], ping: bool, mask: bytes | None
) -> bytes:
    """`payload` as fragments cut at `cuts` (any byte, even inside a character),
    with a ping between the first two fragments if `ping`."""
    pieces = chunked(payload, cuts)
    out = []
    for i, piece in enumerate(pieces):
        out.append(
            encode_ws_frame(op if i == 0 else CONT, piece, fin=i == len(pieces) - 1, mask=mask)
        )
        if ping and i == 0 and len(pieces) > 1:
            out.append(encode_ws_frame(PING, b"mid", mask=mask))
    return b"".join(out)


@fast
@given(
    messages_st,
    st.sampled_from(["server", "client"]),
    masks,
    st.data(),
    st.lists(st.integers(0, 200_000), max_size=12),
)
def test_round_trip_over_any_fragmentation_and_chunking(
    messages: list[Event], role: str, mask: bytes, data: st.DataObject, cuts: list[int]
) -> None:
    frame_mask = mask if role == "server" else None
    wire, expected = b"", []
    for op, payload in messages:
        frag_cuts = data.draw(st.lists(st.integers(0, 100_000), max_size=4))
        ping = data.draw(st.booleans())
        wire += encode_message(op, payload, frag_cuts, ping, frame_mask)
        if ping and len(chunked(payload, frag_cuts)) > 1:
            expected.append((PING, b"mid"))
        expected.append((op, payload))
    code = data.draw(st.sampled_from([1000, 1001, 1003, 1011, 3000, 4999]))
    reason = data.draw(st.text(max_size=40))
    wire += encode_ws_close(code, reason, mask=frame_mask)
    expected.append((CLOSE, struct.pack(">H", code) + reason.encode()))

    decoder = WsDecoder(role, max_frame_size=MIB, max_message_size=MIB)
    assert feed_all(decoder, chunked(wire, cuts)) == expected
    assert decoder.buffered == 0
    # wsproto agrees on every byte of it.
    assert wsproto_events(FrameProtocol(client=role == "client", extensions=[]), [wire]) == expected


@fast
@given(st.sampled_from([TEXT, BINARY, PING, PONG]), st.binary(max_size=125), masks)
def test_masking_is_the_xor_of_the_payload_with_the_key(
    op: int, payload: bytes, mask: bytes
) -> None:
    if op == TEXT:
        payload = payload.decode("latin-1")[:62].encode()
    frame = encode_ws_frame(op, payload, mask=mask)
    assert frame[:2] == bytes([0x80 | op, 0x80 | len(payload)])
    assert frame[2:6] == mask
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6:])) == payload
    assert WsDecoder("server").feed(frame) == [(op, payload)]


def test_close_reason_is_cut_at_a_character_boundary_within_125_bytes() -> None:
    frame = encode_ws_close(1000, "é" * 100)
    (event,) = WsDecoder("client").feed(frame)
    assert event[0] == CLOSE
    assert len(event[1]) <= 125
    assert event[1] == struct.pack(">H", 1000) + ("é" * 61).encode()


def test_close_without_status_has_an_empty_payload() -> None:
    assert encode_ws_close(1005) == b"\x88\x00"
    assert WsDecoder("client").feed(encode_ws_close(1005)) == [(CLOSE, b"")]


def test_encoder_rejects_unknown_opcodes_and_bad_masks() -> None:
    with pytest.raises(ValueError, match="opcode 3 is not a WebSocket opcode"):
        encode_ws_frame(3, b"")
    with pytest.raises(ValueError, match="a mask is 4 bytes, got 3"):
        encode_ws_frame(TEXT, b"", mask=b"abc")
    with pytest.raises(ValueError, match="a mask is 4 bytes, got 5"):
        encode_ws_close(1000, "", mask=b"abcde")


def test_role_must_be_server_or_client() -> None:
    with pytest.raises(ValueError, match="role must be 'server' or 'client'"):
        WsDecoder("peer")


def test_partial_frame_is_buffered_until_complete() -> None:
    frame = encode_ws_frame(BINARY, b"x" * 1000, mask=KEY)
    decoder = WsDecoder()
    assert decoder.feed(frame[:500]) == []
    assert decoder.buffered > 0
    assert decoder.feed(frame[500:]) == [(BINARY, b"x" * 1000)]
    assert decoder.buffered == 0


def test_bytes_after_a_close_frame_are_ignored() -> None:
    decoder = WsDecoder()
    data = encode_ws_close(1000, "", mask=KEY) + encode_ws_frame(TEXT, b"late", mask=KEY)
    assert decoder.feed(data) == [(CLOSE, struct.pack(">H", 1000))]
    assert decoder.feed(encode_ws_frame(TEXT, b"later", mask=KEY)) == []


# -- protocol violations ------------------------------------------------------------------

VIOLATIONS = [
    ("unmasked client frame", 1002, encode_ws_frame(TEXT, b"hi")),
    ("reserved bits set", 1002, raw_frame(0x80 | 0x40 | TEXT, b"x")),
    ("reserved bits set", 1002, raw_frame(0x80 | 0x10 | BINARY, b"x")),
    ("reserved opcode", 1002, raw_frame(0x80 | 3)),
    ("reserved opcode", 1002, raw_frame(0x80 | 11)),
    ("fragmented control frame", 1002, raw_frame(PING, b"p")),
    ("control frame longer than 125 bytes", 1002, raw_frame(0x80 | PING, b"p" * 126)),
    ("continuation frame without a message", 1002, raw_frame(0x80 | CONT, b"x")),
    (
        "new message inside a fragmented message",
        1002,
        raw_frame(TEXT, b"a") + raw_frame(0x80 | BINARY, b"b"),
    ),
    ("non-minimal frame length", 1002, raw_frame(0x80 | BINARY, b"x" * 5, length=b"\x7e\x00\x05")),
    (
        "non-minimal frame length",
        1002,
        raw_frame(0x80 | BINARY, b"", length=b"\x7f" + struct.pack(">Q", 0xFFFF)),
    ),
    (
        "frame length has its top bit set",
        1002,
        raw_frame(0x80 | BINARY, b"", length=b"\x7f" + struct.pack(">Q", 1 << 63)),
    ),
    (
        "frame exceeds the size limit",
        1009,
        raw_frame(0x80 | BINARY, b"", length=b"\x7f" + struct.pack(">Q", MIB + 1)),
    ),
    ("invalid UTF-8 in text message", 1007, raw_frame(0x80 | TEXT, b"ok \xff")),
    ("invalid UTF-8 in text message", 1007, raw_frame(0x80 | TEXT, "€".encode()[:2])),
    ("invalid UTF-8 in text message", 1007, raw_frame(0x80 | TEXT, b"\xed\xa0\x80")),  # surrogate
    (
        "invalid UTF-8 in text message",
        1007,
        raw_frame(TEXT, "€".encode()[:2]) + raw_frame(0x80 | CONT, b"x"),
    ),
    ("close payload of 1 byte", 1002, raw_frame(0x80 | CLOSE, b"\x03")),
    *(
        ("invalid close code", 1002, raw_frame(0x80 | CLOSE, struct.pack(">H", code)))
        for code in (0, 999, 1004, 1005, 1006, 1015, 2999, 5000)
    ),
    ("invalid UTF-8 in close reason", 1007, raw_frame(0x80 | CLOSE, b"\x03\xe8\xc3")),
]


@pytest.mark.parametrize(("reason", "close_code", "data"), VIOLATIONS)
def test_violation_raises_with_close_code_and_a_message_naming_it(
    reason: str, close_code: int, data: bytes
) -> None:
    err = violation(data)
    assert err.close_code == close_code
    assert reason in str(err)
    assert f"close code {close_code}" in str(err)
    assert err.events == []


@pytest.mark.parametrize(("reason", "close_code", "data"), VIOLATIONS)
def test_violation_after_good_frames_keeps_the_events_decoded_before_it(
    reason: str, close_code: int, data: bytes
) -> None:
    good = (
        raw_frame(0x80 | TEXT, b"first")
        + raw_frame(0x80 | PING, b"p")
        + raw_frame(0x80 | BINARY, b"b")
    )
    decoder = WsDecoder()
    assert decoder.feed(raw_frame(0x80 | BINARY, b"earlier feed")) == [(BINARY, b"earlier feed")]
    with pytest.raises(WebSocketError) as info:
        decoder.feed(good + data)
    assert info.value.close_code == close_code
    assert info.value.events == [(TEXT, b"first"), (PING, b"p"), (BINARY, b"b")]


def test_masked_frame_to_a_client_is_a_protocol_error() -> None:
    err = violation(encode_ws_frame(TEXT, b"hi", mask=KEY), role="client")
    assert (err.close_code, "masked server frame" in str(err)) == (1002, True)


def test_decoder_stays_failed_after_a_violation() -> None:
    decoder = WsDecoder()
    with pytest.raises(WebSocketError):
        decoder.feed(encode_ws_frame(TEXT, b"unmasked"))
    with pytest.raises(WebSocketError) as info:
        decoder.feed(encode_ws_frame(TEXT, b"fine", mask=KEY))
    assert info.value.close_code == 1002
    assert info.value.events == []


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    header = bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40) + KEY
    err = violation(header)
    assert err.close_code == 1009


def test_invalid_utf8_is_refused_before_the_frame_is_complete() -> None:
    frame = raw_frame(0x80 | TEXT, b"\xff" + b"a" * 1000)
    decoder = WsDecoder()
    with pytest.raises(WebSocketError) as info:
        decoder.feed(frame[:20])
    assert info.value.close_code == 1007


@pytest.mark.parametrize("limit", [0, 1, 125, 126, 1000])
def test_frame_of_exactly_max_frame_size_is_accepted_and_one_more_refused(limit: int) -> None:
    exact = encode_ws_frame(BINARY, b"x" * limit, mask=KEY)
    assert WsDecoder(max_frame_size=limit).feed(exact) == [(BINARY, b"x" * limit)]
    err = violation(encode_ws_frame(BINARY, b"x" * (limit + 1), mask=KEY), max_frame_size=limit)
    assert err.close_code == 1009
    assert "frame exceeds the size limit" in str(err)


def test_message_of_exactly_max_message_size_is_accepted_and_one_more_refused() -> None:
    def fragments(total: int) -> bytes:
        return encode_ws_frame(BINARY, b"a" * 60, fin=False, mask=KEY) + encode_ws_frame(
            CONT, b"b" * (total - 60), mask=KEY
        )

    decoder = WsDecoder(max_frame_size=100, max_message_size=100)
    assert decoder.feed(fragments(100)) == [(BINARY, b"a" * 60 + b"b" * 40)]
    err = violation(fragments(101), max_frame_size=100, max_message_size=100)
    assert err.close_code == 1009
    assert "message exceeds the size limit" in str(err)


def test_control_frames_are_bounded_by_the_protocol_not_the_frame_limit() -> None:
    ping = encode_ws_frame(PING, b"p" * 125, mask=KEY)
    assert WsDecoder(max_frame_size=10, max_message_size=10).feed(ping) == [(PING, b"p" * 125)]


def test_default_limits_are_one_mebibyte() -> None:
    exact = encode_ws_frame(BINARY, bytes(MIB), mask=KEY)
    assert WsDecoder().feed(exact) == [(BINARY, bytes(MIB))]
    assert violation(encode_ws_frame(BINARY, bytes(MIB + 1), mask=KEY)).close_code == 1009


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300),
    st.sampled_from(["server", "client"]),
    st.lists(st.integers(0, 300), max_size=6),
)
def test_arbitrary_bytes_decode_or_raise_websocket_error(
    data: bytes, role: str, cuts: list[int]
) -> None:
    decoder = WsDecoder(role, max_frame_size=200, max_message_size=250)
    events: list[Event] = []
    close_code = None
    try:
        for piece in chunked(data, cuts):
            events.extend(decoder.feed(piece))
    except WebSocketError as err:
        events.extend(err.events)
        close_code = err.close_code
    assert close_code in (None, 1002, 1007, 1009)
    for op, payload in events:
        assert op in (TEXT, BINARY, CLOSE, PING, PONG)
        if op == TEXT:
            payload.decode("utf-8")


def test_websocket_and_handshake_errors_are_value_errors() -> None:
    assert issubclass(WebSocketError, ValueError)
    assert issubclass(HandshakeError, ValueError)


# -- handshake ------------------------------------------------------------------------------


def request_head(*lines: str, start: str = "GET /chat HTTP/1.1") -> bytes:
    return ("\r\n".join([start, *lines]) + "\r\n\r\n").encode()


VALID_LINES = (
    "Host: example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {RFC_KEY}",
    "Sec-WebSocket-Version: 13",
)


def handshake_error(data: bytes, **limits: int) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        parse_handshake_request(data, **limits)
    return info.value


def test_accept_key_matches_the_rfc_6455_example() -> None:
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_client_handshake_parses_back() -> None:
    data = client_handshake("example.com:8080", "/chat?room=7", RFC_KEY, ["chat", "superchat"])
    assert data.startswith(b"GET /chat?room=7 HTTP/1.1\r\n")
    assert data.endswith(b"\r\n\r\n")
    request, used = parse_request(data + encode_ws_frame(TEXT, b"early", mask=KEY))
    assert used == len(data)
    assert request["path"] == "/chat?room=7"
    assert request["host"] == "example.com:8080"
    assert request["origin"] is None
    assert request["key"] == RFC_KEY
    assert request["protocols"] == ["chat", "superchat"]
    assert request["extensions"] == []
    headers = dict(request["headers"])
    assert headers["sec-websocket-version"] == "13"
    assert headers["upgrade"] == "websocket"


def test_client_handshake_without_protocols_offers_none() -> None:
    data = client_handshake("h", "/", RFC_KEY)
    assert b"Sec-WebSocket-Protocol" not in data
    request, _ = parse_request(data)
    assert request["protocols"] == []


def test_hand_written_request_parses_with_case_insensitive_names_and_token_lists() -> None:
    data = request_head(
        "host: chat.example.com",
        "UPGRADE: WebSocket",
        "connection: keep-alive, Upgrade",
        "Origin: https://app.example.com",
        f"sec-websocket-key:   {RFC_KEY}  ",
        "Sec-WebSocket-Protocol: bw1, bw0",
        "Sec-WebSocket-Protocol: legacy",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-custom",
        "Sec-WebSocket-Version: 13",
        "X-Trace: abc",
        start="GET /ws?token=a%20b HTTP/1.1",
    )
    request, used = parse_request(data)
    assert used == len(data)
    assert request["path"] == "/ws?token=a%20b"
    assert request["host"] == "chat.example.com"
    assert request["origin"] == "https://app.example.com"
    assert request["key"] == RFC_KEY
    assert request["protocols"] == ["bw1", "bw0", "legacy"]
    assert request["extensions"] == ["permessage-deflate; client_max_window_bits", "x-custom"]
    assert request["headers"][0] == ("host", "chat.example.com")
    assert request["headers"][-1] == ("x-trace", "abc")
    assert len(request["headers"]) == 10


def test_incomplete_request_returns_none() -> None:
    data = request_head(*VALID_LINES)
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        assert parse_handshake_request(data[:cut]) is None


def test_request_of_exactly_max_request_bytes_is_accepted_and_one_more_is_431() -> None:
    data = request_head(*VALID_LINES)
    assert parse_handshake_request(data, max_request_bytes=len(data)) is not None
    err = handshake_error(data, max_request_bytes=len(data) - 1)
    assert err.status == 431
    assert "max_request_bytes" in str(err)


def test_endless_head_is_431_once_it_reaches_the_limit() -> None:
    data = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 9000
    assert handshake_error(data).status == 431
    assert parse_handshake_request(data[:8191]) is None
    assert handshake_error(data[:8192]).status == 431


def test_more_header_lines_than_max_headers_is_431() -> None:
    data = request_head(*VALID_LINES, *(f"X-{i}: v" for i in range(5)))
    assert parse_handshake_request(data, max_headers=10) is not None
    err = handshake_error(data, max_headers=9)
    assert err.status == 431
    assert "max_headers" in str(err)


@pytest.mark.parametrize("version", ["8", "12", "14"])
def test_unsupported_version_is_426(version: str) -> None:
    lines = [line for line in VALID_LINES if not line.startswith("Sec-WebSocket-Version")]
    err = handshake_error(request_head(*lines, f"Sec-WebSocket-Version: {version}"))
    assert err.status == 426
    assert "use 13" in str(err)


def without(prefix: str) -> list[str]:
    return [line for line in VALID_LINES if not line.startswith(prefix)]


BAD_REQUESTS = [
    ("method must be GET", request_head(*VALID_LINES, start="POST /chat HTTP/1.1")),
    ("HTTP version must be 1.1", request_head(*VALID_LINES, start="GET /chat HTTP/1.0")),
    ("request line", request_head(*VALID_LINES, start="GET /chat")),
    ("request target must be a path", request_head(*VALID_LINES, start="GET chat HTTP/1.1")),
    ("missing `Upgrade: websocket`", request_head(*without("Upgrade"))),
    ("missing `Connection: Upgrade`", request_head(*without("Connection"), "Connection: close")),
    ("missing Sec-WebSocket-Version", request_head(*without("Sec-WebSocket-Version"))),
    ("missing Sec-WebSocket-Key", request_head(*without("Sec-WebSocket-Key"))),
    (
        "base64 of 16 bytes",
        request_head(*without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: c2hvcnQ="),
    ),
    ("duplicate Host header", request_head(*VALID_LINES, "Host: other.example.com")),
    ("header line without a colon", request_head(*VALID_LINES, "NoColonHere")),
    ("header name is not a token", request_head(*VALID_LINES, "Bad Name: x")),
    ("control character", request_head(*VALID_LINES, "X-Ctl: a\x01b")),
    ("subprotocol is not a token", request_head(*VALID_LINES, "Sec-WebSocket-Protocol: a b")),
    ("CRLF", request_head(*VALID_LINES).replace(b"\r\nHost", b"\nHost")),
]


@pytest.mark.parametrize(("reason", "data"), BAD_REQUESTS)
def test_bad_request_is_400_with_a_message_naming_the_problem(reason: str, data: bytes) -> None:
    err = handshake_error(data)
    assert err.status == 400
    assert reason in str(err)


def response_head(*lines: str, status: str = "101 Switching Protocols") -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *lines]) + "\r\n\r\n").encode()


RESPONSE_LINES = (
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Accept: {RFC_ACCEPT}",
)


def test_parse_handshake_response_returns_status_protocol_and_consumed() -> None:
    data = response_head(*RESPONSE_LINES)
    assert parse_handshake_response(data, RFC_KEY) == (101, None, len(data))
    with_protocol = response_head(*RESPONSE_LINES, "Sec-WebSocket-Protocol: chat")
    frame = encode_ws_frame(TEXT, b"first")
    assert parse_handshake_response(with_protocol + frame, RFC_KEY) == (
        101,
        "chat",
        len(with_protocol),
    )
    assert parse_handshake_response(data[:-1], RFC_KEY) is None


BAD_RESPONSES = [
    ("server answered HTTP 403 instead of 101", response_head(status="403 Forbidden")),
    (
        "does not match the key",
        response_head(*RESPONSE_LINES[:2], f"Sec-WebSocket-Accept: {accept_key('x')}"),
    ),
    ("does not match the key", response_head(*RESPONSE_LINES[:2])),
    ("missing `Upgrade: websocket`", response_head(*RESPONSE_LINES[1:])),
    (
        "extension not offered",
        response_head(*RESPONSE_LINES, "Sec-WebSocket-Extensions: permessage-deflate"),
    ),
    ("status line", b"HTTP/1.1 1O1 Switching\r\n\r\n"),
]


@pytest.mark.parametrize(("reason", "data"), BAD_RESPONSES)
def test_bad_response_raises_handshake_error_naming_the_problem(reason: str, data: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        parse_handshake_response(data, RFC_KEY)
    assert reason in str(info.value)
    assert info.value.status == 400
