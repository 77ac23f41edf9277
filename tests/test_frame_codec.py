"""The BlueWren frame codec: wire layout, round trips over any chunking, and every
error at its exact edge."""

import struct
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bluewren import (
    FLAG_COMPRESSED,
    FLAG_DICT,
    FRAME_HEADER_LEN,
    FRAME_VERSION,
    FrameDecoder,
    FrameError,
    decode_frames,
    encode_frame,
    encode_frames,
)

Frame = tuple[int, int, int, int, int, bytes]
HEADER = struct.Struct(">BBBBIQQQ")
DEFAULT_MAX_BODY = 1 << 20

u64 = st.integers(0, 2**64 - 1)
frames_st = st.tuples(
    st.integers(0, 255),
    st.integers(0, FLAG_COMPRESSED | FLAG_DICT),
    u64,
    u64,
    u64,
    st.binary(max_size=300),
)
fast = settings(max_examples=150, deadline=None)


def header(
    body_len: int,
    *,
    version: int = FRAME_VERSION,
    kind: int = 7,
    flags: int = 0,
    reserved: int = 0,
    conv: int = 0,
    seq: int = 0,
    cmid: int = 0,
) -> bytes:
    return HEADER.pack(version, kind, flags, reserved, body_len, conv, seq, cmid)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


def feed_all(decoder: FrameDecoder, pieces: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    return out


def test_constants_describe_the_wire_format() -> None:
    assert (FRAME_VERSION, FRAME_HEADER_LEN) == (1, 32)
    assert (FLAG_COMPRESSED, FLAG_DICT) == (0x01, 0x02)
    assert HEADER.size == FRAME_HEADER_LEN


def test_encode_frame_writes_the_big_endian_header_then_the_body() -> None:
    got = encode_frame(9, b"hello", conv=0x0102030405060708, seq=42, cmid=2**64 - 1, flags=1)
    assert got == header(5, kind=9, flags=1, conv=0x0102030405060708, seq=42, cmid=2**64 - 1) + (
        b"hello"
    )


@pytest.mark.parametrize("flags", [0x04, 0x80, 0xFF])
def test_encoding_reserved_flag_bits_raises_frame_error(flags: int) -> None:
    with pytest.raises(FrameError, match="reserved"):
        encode_frame(1, b"", flags=flags)
    with pytest.raises(FrameError, match="reserved"):
        encode_frames([(1, flags, 0, 0, 0, b"")])


def test_encode_frame_defaults_to_an_empty_body_and_zero_ids() -> None:
    assert encode_frame(3) == header(0, kind=3)
    assert decode_frames(encode_frame(3)) == [(3, 0, 0, 0, 0, b"")]


@fast
@given(frames_st)
def test_one_frame_round_trips(frame: Frame) -> None:
    kind, flags, conv, seq, cmid, body = frame
    data = encode_frame(kind, body, conv=conv, seq=seq, cmid=cmid, flags=flags)
    assert len(data) == FRAME_HEADER_LEN + len(body)
    assert decode_frames(data) == [frame]


@fast
@given(st.lists(frames_st, max_size=8))
def test_encode_frames_is_the_concatenation_and_decodes_back(frames: list[Frame]) -> None:
    data = encode_frames(frames)
    assert data == b"".join(
        encode_frame(k, b, conv=c, seq=s, cmid=m, flags=f) for k, f, c, s, m, b in frames
    )
    assert decode_frames(data) == frames


@fast
@given(st.lists(frames_st, max_size=8), st.lists(st.integers(0, 10_000), max_size=30))
def test_stream_decoder_yields_every_frame_once_over_any_chunking(
    frames: list[Frame], cuts: list[int]
) -> None:
    data = encode_frames(frames)
    decoder = FrameDecoder()
    assert feed_all(decoder, chunked(data, cuts)) == frames
    assert decoder.buffered == 0


@fast
@given(frames_st, st.integers(1, 10_000))
def test_stream_decoder_buffers_a_partial_frame_until_it_completes(frame: Frame, cut: int) -> None:
    kind, flags, conv, seq, cmid, body = frame
    data = encode_frame(kind, body, conv=conv, seq=seq, cmid=cmid, flags=flags)
    cut %= len(data)
    decoder = FrameDecoder()
    assert decoder.feed(data[:cut]) == []
    assert decoder.buffered == cut
    assert decoder.feed(data[cut:]) == [frame]
    assert decoder.buffered == 0


def test_stream_decoder_byte_by_byte() -> None:
    frames: list[Frame] = [
        (1, 0, 1, 2, 3, b"a" * 40),
        (2, 3, 0, 0, 0, b""),
        (255, 1, 9, 9, 9, b"z"),
    ]
    data = encode_frames(frames)
    decoder = FrameDecoder(max_body=40)
    assert feed_all(decoder, [data[i : i + 1] for i in range(len(data))]) == frames


# -- limits --------------------------------------------------------------------


@pytest.mark.parametrize("max_body", [0, 1, 100])
def test_body_of_exactly_max_body_is_accepted(max_body: int) -> None:
    data = encode_frame(1, b"x" * max_body)
    assert decode_frames(data, max_body=max_body) == [(1, 0, 0, 0, 0, b"x" * max_body)]
    assert FrameDecoder(max_body=max_body).feed(data) == [(1, 0, 0, 0, 0, b"x" * max_body)]


@pytest.mark.parametrize("max_body", [0, 1, 100])
def test_body_one_over_max_body_is_refused_naming_size_and_limit(max_body: int) -> None:
    data = encode_frame(1, b"x" * (max_body + 1))
    message = f"body of {max_body + 1} bytes exceeds the {max_body}-byte limit"
    with pytest.raises(FrameError, match=message):
        decode_frames(data, max_body=max_body)
    with pytest.raises(FrameError, match=message):
        FrameDecoder(max_body=max_body).feed(data)


def test_default_max_body_is_one_mebibyte() -> None:
    body = bytes(DEFAULT_MAX_BODY)
    assert decode_frames(encode_frame(1, body))[0][5] == body
    assert FrameDecoder().feed(encode_frame(1, body))[0][5] == body
    with pytest.raises(FrameError, match=f"exceeds the {DEFAULT_MAX_BODY}-byte limit"):
        decode_frames(header(DEFAULT_MAX_BODY + 1))


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    # The declared length is refused before a byte of the body is buffered.
    decoder = FrameDecoder(max_body=1024)
    with pytest.raises(FrameError, match="4294967295 bytes exceeds the 1024-byte limit"):
        decoder.feed(header(2**32 - 1))


# -- malformed headers -----------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, 255])
def test_bad_version_is_refused_naming_the_version(version: int) -> None:
    data = header(0, version=version)
    with pytest.raises(FrameError, match=f"unsupported BlueWren frame version {version}"):
        decode_frames(data)
    with pytest.raises(FrameError, match=f"version {version}: header byte 0 must be 1"):
        FrameDecoder().feed(data)


@pytest.mark.parametrize("bit", range(2, 8))
def test_reserved_flag_bits_are_refused(bit: int) -> None:
    data = header(0, flags=1 << bit)
    with pytest.raises(FrameError, match="reserved BlueWren header bits set"):
        decode_frames(data)
    with pytest.raises(FrameError, match="flags bits 2-7"):
        FrameDecoder().feed(data)


@pytest.mark.parametrize("value", [1, 0x80, 0xFF])
def test_nonzero_reserved_byte_is_refused(value: int) -> None:
    data = header(0, reserved=value)
    with pytest.raises(FrameError, match="byte 3 must be 0"):
        decode_frames(data)
    with pytest.raises(FrameError, match="byte 3 must be 0"):
        FrameDecoder().feed(data)


def test_checks_run_version_then_reserved_then_length() -> None:
    with pytest.raises(FrameError, match="version 9"):
        decode_frames(header(10**6, version=9, flags=0xFC), max_body=1)
    with pytest.raises(FrameError, match="reserved"):
        decode_frames(header(10**6, flags=0xFC), max_body=1)


def test_truncated_header_says_how_many_bytes_are_present() -> None:
    with pytest.raises(FrameError, match="truncated BlueWren frame: 31 of its 32 bytes present"):
        decode_frames(encode_frame(1)[:31])


def test_truncated_body_says_how_many_bytes_the_frame_needs() -> None:
    data = encode_frame(1, b"0123456789")
    with pytest.raises(FrameError, match="truncated BlueWren frame: 41 of its 42 bytes present"):
        decode_frames(data[:-1])


def test_trailing_partial_frame_fails_the_whole_message() -> None:
    data = encode_frame(1, b"ok") + encode_frame(2, b"cut")[:-1]
    with pytest.raises(FrameError, match="must end on a frame boundary"):
        decode_frames(data)


def test_empty_message_holds_no_frames() -> None:
    assert decode_frames(b"") == []
    assert FrameDecoder().feed(b"") == []


def test_stream_decoder_error_is_final() -> None:
    decoder = FrameDecoder()
    good = encode_frame(1, b"fine")
    with pytest.raises(FrameError, match="version 0"):
        decoder.feed(good + bytes(FRAME_HEADER_LEN))
    with pytest.raises(FrameError, match="version 0"):
        decoder.feed(good)


def test_frame_error_is_a_value_error() -> None:
    assert issubclass(FrameError, ValueError)


# -- arbitrary input ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 64))
def test_arbitrary_bytes_decode_or_raise_frame_error(data: bytes, max_body: int) -> None:
    try:
        frames = decode_frames(data, max_body=max_body)
    except FrameError:
        return
    assert encode_frames(frames) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8), st.integers(0, 64))
def test_arbitrary_chunks_stream_or_raise_frame_error(
    data: bytes, cuts: list[int], max_body: int
) -> None:
    decoder = FrameDecoder(max_body=max_body)
    try:
        frames = feed_all(decoder, chunked(data, cuts))
    except FrameError:
        return
    encoded = encode_frames(frames)
    assert data.startswith(encoded)
    assert decoder.buffered == len(data) - len(encoded)


@fast
@given(st.lists(frames_st, min_size=1, max_size=4), st.data())
def test_valid_prefix_then_garbage_yields_frames_before_the_error(
    frames: list[Frame], data: st.DataObject
) -> None:
    version = data.draw(st.integers(0, 255).filter(lambda v: v != FRAME_VERSION))
    decoder = FrameDecoder()
    assert decoder.feed(encode_frames(frames)) == frames
    with pytest.raises(FrameError, match=f"version {version}"):
        decoder.feed(header(0, version=version))
