"""zstd Compressor / Decompressor / train_dictionary: round trips, interoperability
with the reference zstd bindings both ways, and the output bound against bombs."""

import json
import random

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bluewren import CompressionError, Compressor, Decompressor, train_dictionary

MIB = 1 << 20
DICT_SIZE = 8 * 1024


def message(i: int) -> bytes:
    rng = random.Random(i)
    return json.dumps(
        {
            "type": "message",
            "conversation": f"team-{rng.randrange(40)}",
            "sender": f"user-{rng.randrange(500)}@example.com",
            "seq": rng.randrange(1, 10**6),
            "text": " ".join(
                rng.choice(["hello", "deploy", "ok", "ship it", "lunch?"]) for _ in range(6)
            ),
            "attachments": [],
        }
    ).encode()


SAMPLES = [message(i) for i in range(1_000)]


@pytest.fixture(scope="module")
def dictionary() -> bytes:
    return train_dictionary(SAMPLES, DICT_SIZE)


def zstd_decompress(data: bytes, dict_data: bytes | None = None) -> bytes:
    """Decompress with the reference bindings, whether or not the frame declares its size."""
    zdict = zstandard.ZstdCompressionDict(dict_data) if dict_data is not None else None
    return zstandard.ZstdDecompressor(dict_data=zdict).decompressobj().decompress(data)


def test_round_trip_without_dictionary() -> None:
    comp, decomp = Compressor(), Decompressor()
    for body in [b"", b"a", *SAMPLES[:50], bytes(range(256)) * 100]:
        assert decomp.decompress(comp.compress(body)) == body


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=5_000), st.sampled_from([-5, 1, 3, 19]))
def test_round_trip_of_arbitrary_bodies_at_any_level(body: bytes, level: int) -> None:
    assert Decompressor().decompress(Compressor(level).compress(body)) == body


def test_repeated_text_compresses() -> None:
    body = b"the same line, again and again\n" * 1_000
    assert len(Compressor().compress(body)) < len(body) // 20


def test_trained_dictionary_respects_its_size_and_is_a_zstd_dictionary(dictionary: bytes) -> None:
    assert 0 < len(dictionary) <= DICT_SIZE
    assert dictionary[:4] == b"\x37\xa4\x30\xec"  # zstd dictionary magic
    assert zstandard.ZstdCompressionDict(dictionary).dict_id() != 0


def test_round_trip_with_dictionary(dictionary: bytes) -> None:
    comp, decomp = Compressor(dictionary=dictionary), Decompressor(dictionary=dictionary)
    for body in [b"", *SAMPLES[:50], message(10_000)]:
        assert decomp.decompress(comp.compress(body)) == body


def test_dictionary_makes_small_messages_smaller(dictionary: bytes) -> None:
    fresh = [message(20_000 + i) for i in range(100)]
    plain = sum(len(Compressor().compress(m)) for m in fresh)
    trained = sum(len(Compressor(dictionary=dictionary).compress(m)) for m in fresh)
    assert trained < plain


def test_dictionary_compressed_body_needs_the_dictionary(dictionary: bytes) -> None:
    data = Compressor(dictionary=dictionary).compress(SAMPLES[0])
    with pytest.raises(CompressionError, match="zstd dictionary error"):
        Decompressor().decompress(data)


# -- interoperability ---------------------------------------------------------------


def test_our_output_decompresses_with_the_reference_bindings() -> None:
    for body in [b"", *SAMPLES[:20], bytes(MIB)]:
        assert zstd_decompress(Compressor().compress(body)) == body


def test_our_dictionary_output_decompresses_with_the_reference_bindings(dictionary: bytes) -> None:
    comp = Compressor(dictionary=dictionary)
    for body in SAMPLES[:20]:
        assert zstd_decompress(comp.compress(body), dictionary) == body


@pytest.mark.parametrize("write_size", [True, False])
def test_reference_output_decompresses_with_ours(write_size: bool) -> None:
    zc = zstandard.ZstdCompressor(level=3, write_content_size=write_size)
    decomp = Decompressor()
    for body in [b"", *SAMPLES[:20], bytes(range(256)) * 1000]:
        assert decomp.decompress(zc.compress(body)) == body


def test_reference_streamed_output_without_content_size_decompresses_with_ours() -> None:
    body = b"".join(SAMPLES[:200])
    cobj = zstandard.ZstdCompressor().compressobj()
    data = cobj.compress(body) + cobj.flush()
    assert Decompressor().decompress(data) == body


def test_reference_dictionary_output_decompresses_with_ours(dictionary: bytes) -> None:
    zc = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
    decomp = Decompressor(dictionary=dictionary)
    for body in SAMPLES[:20]:
        assert decomp.decompress(zc.compress(body)) == body


def test_reference_trained_dictionary_works_with_ours() -> None:
    zdict = zstandard.train_dictionary(DICT_SIZE, list[bytes | bytearray | memoryview](SAMPLES))
    raw = zdict.as_bytes()
    body = message(30_000)
    ours = Compressor(dictionary=raw).compress(body)
    assert zstandard.ZstdDecompressor(dict_data=zdict).decompressobj().decompress(ours) == body
    theirs = zstandard.ZstdCompressor(dict_data=zdict).compress(body)
    assert Decompressor(dictionary=raw).decompress(theirs) == body


# -- the output bound -----------------------------------------------------------------


@pytest.mark.parametrize("write_size", [True, False])
def test_bomb_is_rejected_by_the_output_bound(write_size: bool) -> None:
    bomb = zstandard.ZstdCompressor(level=19, write_content_size=write_size).compress(
        bytes(64 * MIB)
    )
    assert len(bomb) < 64 * 1024
    decomp = Decompressor(max_output=MIB)
    assert decomp.max_output == MIB
    with pytest.raises(CompressionError, match="decompresses past the 1048576-byte limit"):
        decomp.decompress(bomb)


def test_default_max_output_is_one_mebibyte() -> None:
    decomp = Decompressor()
    assert decomp.max_output == MIB
    assert decomp.decompress(Compressor().compress(bytes(MIB))) == bytes(MIB)
    with pytest.raises(CompressionError):
        decomp.decompress(Compressor().compress(bytes(MIB + 1)))


@pytest.mark.parametrize("max_output", [1, 1000, 4096, 128 * 1024 + 1])
@pytest.mark.parametrize("source", ["ours", "reference-sized", "reference-unsized"])
def test_output_of_exactly_max_output_is_accepted_and_one_more_rejected(
    max_output: int, source: str
) -> None:
    def compress(body: bytes) -> bytes:
        if source == "ours":
            return Compressor().compress(body)
        sized = source == "reference-sized"
        return zstandard.ZstdCompressor(write_content_size=sized).compress(body)

    exact = random.Random(max_output).randbytes(max_output)
    decomp = Decompressor(max_output=max_output)
    assert decomp.decompress(compress(exact)) == exact
    with pytest.raises(CompressionError, match=f"past the {max_output}-byte limit"):
        decomp.decompress(compress(exact + b"!"))
    # The decompressor stays usable after refusing a body.
    assert decomp.decompress(compress(exact)) == exact


def test_bound_applies_with_a_dictionary(dictionary: bytes) -> None:
    body = SAMPLES[0]
    comp = Compressor(dictionary=dictionary)
    assert Decompressor(dictionary, max_output=len(body)).decompress(comp.compress(body)) == body
    with pytest.raises(CompressionError):
        Decompressor(dictionary, max_output=len(body) - 1).decompress(comp.compress(body))


# -- corrupt input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not zstd at all",
        b"\x28\xb5\x2f\xfd",  # the magic number alone
        b"\x28\xb5\x2f\xfd" + b"\xff" * 16,
    ],
)
def test_corrupt_input_raises_compression_error(data: bytes) -> None:
    with pytest.raises(CompressionError, match="corrupt zstd body"):
        Decompressor().decompress(data)


def test_truncated_frame_raises_compression_error() -> None:
    data = Compressor().compress(b"".join(SAMPLES[:100]))
    decomp = Decompressor()
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(CompressionError):
            decomp.decompress(data[:cut])


def test_flipped_byte_in_a_checksummed_frame_raises_compression_error() -> None:
    body = b"".join(SAMPLES[:100])
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(body))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(CompressionError):
        Decompressor().decompress(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    decomp = Decompressor(max_output=64 * 1024)
    try:
        out = decomp.decompress(data)
    except CompressionError:
        return
    assert len(out) <= 64 * 1024


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=2_000), st.data())
def test_mutated_frames_never_crash(body: bytes, data: st.DataObject) -> None:
    frame = bytearray(Compressor().compress(body))
    at = data.draw(st.integers(0, len(frame) - 1))
    frame[at] ^= data.draw(st.integers(1, 255))
    try:
        out = Decompressor(max_output=4096).decompress(bytes(frame))
    except CompressionError:
        return
    assert len(out) <= 4096


def test_concatenated_frames_decompress_to_their_concatenation_within_the_bound() -> None:
    comp = Compressor()
    data = comp.compress(b"a" * 600) + comp.compress(b"b" * 400)
    assert Decompressor(max_output=1000).decompress(data) == b"a" * 600 + b"b" * 400
    with pytest.raises(CompressionError, match="past the 999-byte limit"):
        Decompressor(max_output=999).decompress(data)


def test_training_on_too_few_samples_raises_compression_error() -> None:
    with pytest.raises(CompressionError, match="training failed"):
        train_dictionary([b"tiny"], DICT_SIZE)


def test_corrupted_dictionary_is_refused_when_the_codec_is_created(dictionary: bytes) -> None:
    broken = dictionary[:8] + bytes(64)
    with pytest.raises(CompressionError, match="zstd dictionary error"):
        Compressor(dictionary=broken)
    with pytest.raises(CompressionError, match="zstd dictionary error"):
        Decompressor(dictionary=broken)


def test_compression_error_is_a_value_error() -> None:
    assert issubclass(CompressionError, ValueError)
