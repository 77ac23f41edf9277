"""Outbox and FanOut: watermarks and the hard limit at their exact edges, order,
readiness, draining, and encode-once publish to many recipients."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bluewren import PUSH_ABOVE_HIGH, PUSH_OVERFLOW, PUSH_QUEUED, FanOut, Outbox

KIB = 1024
DEFAULTS = {"low_water": 64 * KIB, "high_water": 1024 * KIB, "max_bytes": 8 * 1024 * KIB}


def test_push_codes_are_distinct_small_ints() -> None:
    assert (PUSH_QUEUED, PUSH_ABOVE_HIGH, PUSH_OVERFLOW) == (0, 1, 2)


def test_default_limits_are_64k_1m_8m() -> None:
    outbox = Outbox()
    assert outbox.push(b"x" * (DEFAULTS["high_water"] - 1)) == PUSH_QUEUED
    assert not outbox.below_low_water
    assert outbox.push(b"x") == PUSH_ABOVE_HIGH
    assert outbox.push(b"x" * (DEFAULTS["max_bytes"] - DEFAULTS["high_water"])) == PUSH_ABOVE_HIGH
    assert outbox.push(b"x") == PUSH_OVERFLOW
    assert outbox.queued_bytes == DEFAULTS["max_bytes"]


# -- Outbox ------------------------------------------------------------------------


def test_push_below_high_water_is_queued() -> None:
    outbox = Outbox(low_water=4, high_water=10, max_bytes=20)
    assert outbox.push(b"123456789") == PUSH_QUEUED
    assert outbox.queued_bytes == 9


def test_push_reaching_high_water_exactly_is_above_high() -> None:
    outbox = Outbox(low_water=4, high_water=10, max_bytes=20)
    assert outbox.push(b"123456789") == PUSH_QUEUED
    assert outbox.push(b"0") == PUSH_ABOVE_HIGH
    assert outbox.queued_bytes == 10


def test_push_landing_on_max_bytes_is_accepted_and_one_more_overflows_unqueued() -> None:
    outbox = Outbox(low_water=4, high_water=10, max_bytes=20)
    assert outbox.push(b"a" * 19) == PUSH_ABOVE_HIGH
    assert outbox.push(b"b" * 2) == PUSH_OVERFLOW
    assert outbox.queued_bytes == 19
    assert outbox.push(b"c") == PUSH_ABOVE_HIGH
    assert outbox.queued_bytes == 20
    assert outbox.push(b"d") == PUSH_OVERFLOW
    assert outbox.drain() == b"a" * 19 + b"c"


def test_single_push_larger_than_max_bytes_overflows_an_empty_outbox() -> None:
    outbox = Outbox(low_water=0, high_water=5, max_bytes=5)
    assert outbox.push(b"123456") == PUSH_OVERFLOW
    assert outbox.queued_bytes == 0
    assert len(outbox) == 0
    assert outbox.drain() == b""


def test_below_low_water_holds_at_the_mark_and_not_one_above() -> None:
    outbox = Outbox(low_water=4, high_water=10, max_bytes=20)
    assert outbox.below_low_water
    outbox.push(b"1234")
    assert outbox.below_low_water
    outbox.push(b"5")
    assert not outbox.below_low_water
    outbox.drain()
    assert outbox.below_low_water


def test_equal_limits_are_valid() -> None:
    outbox = Outbox(low_water=8, high_water=8, max_bytes=8)
    assert outbox.push(b"1234567") == PUSH_QUEUED
    assert outbox.push(b"8") == PUSH_ABOVE_HIGH
    assert outbox.push(b"9") == PUSH_OVERFLOW


def test_empty_push_queues_nothing() -> None:
    outbox = Outbox(low_water=0, high_water=1, max_bytes=1)
    assert outbox.push(b"") == PUSH_QUEUED
    assert len(outbox) == 0
    assert outbox.queued_bytes == 0


def test_outbox_drain_returns_everything_in_order_then_empty() -> None:
    outbox = Outbox()
    chunks = [bytes([i]) * (i * 37 % 500) for i in range(200)]
    for chunk in chunks:
        outbox.push(chunk)
    assert outbox.queued_bytes == sum(map(len, chunks))
    assert outbox.drain() == b"".join(chunks)
    assert outbox.queued_bytes == 0
    assert len(outbox) == 0
    assert outbox.drain() == b""


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=40), st.integers(0, 400))
def test_outbox_keeps_order_and_counts_exactly_what_fits(
    chunks: list[bytes], max_bytes: int
) -> None:
    outbox = Outbox(low_water=0, high_water=max_bytes // 2, max_bytes=max_bytes)
    kept: list[bytes] = []
    for chunk in chunks:
        code = outbox.push(chunk)
        queued = sum(map(len, kept))
        if queued + len(chunk) > max_bytes:
            assert code == PUSH_OVERFLOW
            continue
        kept.append(chunk)
        queued += len(chunk)
        assert code == (PUSH_ABOVE_HIGH if queued >= max_bytes // 2 else PUSH_QUEUED)
        assert outbox.queued_bytes == queued
    assert outbox.drain() == b"".join(kept)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (
            {"low_water": 11, "high_water": 10, "max_bytes": 20},
            r"low_water \(11\).*high_water \(10\)",
        ),
        (
            {"low_water": 1, "high_water": 21, "max_bytes": 20},
            r"high_water \(21\).*max_bytes \(20\)",
        ),
        ({"low_water": 2 * 1024 * KIB}, r"low_water \(2097152\).*high_water \(1048576\)"),
        ({"max_bytes": 1024}, r"high_water \(1048576\).*max_bytes \(1024\)"),
    ],
)
def test_invalid_limits_raise_value_error_naming_the_problem(
    limits: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Outbox(**limits)
    fan = FanOut()
    with pytest.raises(ValueError, match=message):
        fan.register(1, **limits)
    assert 1 not in fan


# -- FanOut ------------------------------------------------------------------------


def test_register_twice_is_refused_and_keeps_the_queue() -> None:
    fan = FanOut()
    assert fan.register(1)
    fan.send(1, b"kept")
    assert not fan.register(1, low_water=0, high_water=1, max_bytes=1)
    assert len(fan) == 1
    assert fan.drain(1) == b"kept"


def test_unregister_forgets_the_connection() -> None:
    fan = FanOut()
    fan.register(1)
    fan.send(1, b"dropped")
    assert fan.unregister(1)
    assert not fan.unregister(1)
    assert 1 not in fan
    assert len(fan) == 0
    assert fan.total_queued_bytes == 0


def test_publish_reports_queued_paused_and_overflowed_at_the_edges() -> None:
    fan = FanOut()
    fan.register(1, low_water=0, high_water=10, max_bytes=20)  # 6 + 4 = 10: reaches high
    fan.register(2, low_water=0, high_water=10, max_bytes=20)  # 0 + 4: stays below high
    fan.register(3, low_water=0, high_water=10, max_bytes=20)  # 17 + 4 = 21: overflows
    fan.register(4, low_water=0, high_water=10, max_bytes=20)  # 16 + 4 = 20: lands on max
    assert fan.send(1, b"x" * 6) == PUSH_QUEUED
    assert fan.send(3, b"x" * 17) == PUSH_ABOVE_HIGH
    assert fan.send(4, b"x" * 16) == PUSH_ABOVE_HIGH
    queued, paused, overflowed = fan.publish(b"MSG!", [1, 2, 3, 4])
    assert queued == 3
    assert paused == [1, 4]
    assert overflowed == [3]
    assert fan.queued_bytes(1) == 10
    assert fan.queued_bytes(2) == 4
    assert fan.queued_bytes(3) == 17
    assert fan.queued_bytes(4) == 20
    assert fan.total_queued_bytes == 51


def test_publish_skips_unknown_ids() -> None:
    fan = FanOut()
    fan.register(7)
    assert fan.publish(b"m", [99, 7, 100]) == (1, [], [])
    assert fan.drain(7) == b"m"
    assert fan.drain(99) == b""
    assert fan.send(99, b"m") is None
    assert fan.queued_bytes(99) == 0
    assert 99 not in fan


def test_publish_to_a_recipient_listed_twice_queues_it_twice() -> None:
    fan = FanOut()
    fan.register(1)
    assert fan.publish(b"ab", [1, 1]) == (2, [], [])
    assert fan.drain(1) == b"abab"


def test_send_returns_the_push_code_at_the_edges() -> None:
    fan = FanOut()
    fan.register(5, low_water=1, high_water=3, max_bytes=4)
    assert fan.send(5, b"12") == PUSH_QUEUED
    assert fan.send(5, b"3") == PUSH_ABOVE_HIGH
    assert fan.send(5, b"45") == PUSH_OVERFLOW
    assert fan.send(5, b"4") == PUSH_ABOVE_HIGH
    assert fan.drain(5) == b"1234"


def test_order_is_preserved_across_publish_and_send() -> None:
    fan = FanOut()
    fan.register(1)
    fan.register(2)
    expected = {1: b"", 2: b""}
    for i in range(300):
        frame = f"<{i}>".encode()
        if i % 3 == 0:
            fan.send(1 + i % 2, frame)
            expected[1 + i % 2] += frame
        else:
            fan.publish(frame, [1, 2])
            expected[1] += frame
            expected[2] += frame
    assert fan.drain(1) == expected[1]
    assert fan.drain(2) == expected[2]


def test_take_ready_lists_each_connection_once_per_pass() -> None:
    fan = FanOut()
    for conn in (1, 2, 3):
        fan.register(conn)
    fan.publish(b"a", [2, 1])
    fan.send(2, b"b")
    fan.publish(b"c", [1, 2])
    assert fan.take_ready() == [2, 1]
    assert fan.take_ready() == []
    fan.send(3, b"d")
    assert fan.take_ready() == [3]


def test_take_ready_relists_a_connection_after_it_is_drained_and_refilled() -> None:
    fan = FanOut()
    fan.register(1)
    fan.send(1, b"a")
    assert fan.take_ready() == [1]
    assert fan.drain(1) == b"a"
    fan.send(1, b"b")
    assert fan.take_ready() == [1]


def test_take_ready_skips_connections_drained_or_unregistered_since() -> None:
    fan = FanOut()
    for conn in (1, 2, 3):
        fan.register(conn)
    fan.publish(b"x", [1, 2, 3])
    fan.drain(1)
    fan.unregister(2)
    assert fan.take_ready() == [3]


def test_publish_that_only_overflows_makes_nothing_ready() -> None:
    fan = FanOut()
    fan.register(1, low_water=0, high_water=1, max_bytes=2)
    assert fan.publish(b"toolong", [1]) == (0, [], [1])
    assert fan.take_ready() == []


def test_fanout_drain_returns_everything_in_order_then_empty() -> None:
    fan = FanOut()
    fan.register(1)
    frames = [f"frame-{i};".encode() for i in range(100)]
    for frame in frames:
        fan.publish(frame, [1])
    assert fan.queued_bytes(1) == sum(map(len, frames))
    assert fan.drain(1) == b"".join(frames)
    assert fan.drain(1) == b""
    assert fan.queued_bytes(1) == 0


def test_publish_to_1000_recipients_gives_every_one_the_same_bytes() -> None:
    # 1,000 recipients is past the size at which publish releases the GIL.
    fan = FanOut()
    recipients = list(range(10_000, 11_000))
    for conn in recipients:
        fan.register(conn)
    frame = bytes(range(256)) * 8
    assert fan.publish(frame, recipients) == (1000, [], [])
    assert fan.publish(b"second", recipients[::-1]) == (1000, [], [])
    assert sorted(fan.take_ready()) == recipients
    assert fan.total_queued_bytes == 1000 * (len(frame) + 6)
    for conn in recipients:
        assert fan.drain(conn) == frame + b"second"


def test_publish_to_1000_recipients_reports_each_overflow_and_pause() -> None:
    fan = FanOut()
    recipients = list(range(1000))
    for conn in recipients:
        # Every third connection is too small for the frame, every other one pauses at once.
        size = 4 if conn % 3 == 0 else 64
        high = 8 if conn % 2 == 0 else 64
        fan.register(conn, low_water=0, high_water=min(high, size), max_bytes=size)
    queued, paused, overflowed = fan.publish(b"x" * 8, recipients)
    assert overflowed == [c for c in recipients if c % 3 == 0]
    assert paused == [c for c in recipients if c % 3 != 0 and c % 2 == 0]
    assert queued == 1000 - len(overflowed)
