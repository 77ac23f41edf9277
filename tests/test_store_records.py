"""The store's record types built by their positional constructors (the hot path's
``new_stored_message``, ``new_append_result``, ``new_message``) are the very objects
the dataclasses build: same type, equal, same hash, same repr, still frozen, and they
pickle; a generated constructor follows the field order of any frozen slotted class."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bluewren.store.base import (
    AppendResult,
    NewMessage,
    StoredMessage,
    new_append_result,
    new_message,
    new_stored_message,
    positional_constructor,
)

ints = st.integers(min_value=0, max_value=(1 << 64) - 1)
texts = st.text(max_size=20)


@given(ints, ints, texts, texts, ints, st.binary(max_size=64), texts, st.floats(allow_nan=False))
def test_new_stored_message_equals_the_dataclass(
    conv: int, seq: int, sender: str, device: str, cmid: int, body: bytes, kind: str, at: float
) -> None:
    fast = new_stored_message(conv, seq, sender, device, cmid, body, kind, at)
    slow = StoredMessage(conv, seq, sender, device, cmid, body, kind, at)
    assert type(fast) is StoredMessage
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert pickle.loads(pickle.dumps(fast)) == slow
    result = new_append_result(fast, True)
    assert result == AppendResult(slow, True)
    assert type(result) is AppendResult


def test_new_message_equals_the_dataclass_and_validates_the_same() -> None:
    fast = new_message(7, "alice", "phone", 9, b"hi", "text")
    assert fast == NewMessage(7, "alice", "phone", 9, b"hi", "text")
    assert fast.validated() is fast
    with pytest.raises(ValueError, match="conv"):
        new_message(0, "alice", "phone", 9, b"hi", "text").validated()


def test_records_built_fast_are_still_frozen() -> None:
    message = new_stored_message(1, 2, "a", "d", 3, b"x", "text", 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.seq = 5  # type: ignore[misc]


def test_positional_constructor_follows_the_field_order_and_needs_every_field() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Point:
        x: int
        y: int = 0
        label: str = "p"

    make = positional_constructor(Point)
    assert make(1, 2, "q") == Point(1, 2, "q")
    with pytest.raises(TypeError):
        make(1, 2)  # no defaults: the hot path passes everything
