"""Behaviour of bluewren.store.SQLiteStore: the node's durable store.

Every async test runs twice, on stdlib asyncio and on uvloop. Each test gets its own
database file in a temporary directory. Tests assert outcomes (sequence numbers, rows,
commit counts), never speed; the hard-kill test runs the writer in a subprocess and
SIGKILLs it mid-stream.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import pickle
import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bluewren.errors import (
    BlueWrenError,
    ConversationKindError,
    ConversationNotFoundError,
    NotAMemberError,
    SchemaVersionError,
    SequenceConflictError,
    StoreArgumentError,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
)
from bluewren.store import (
    CMID_MAX,
    ERASED_KIND,
    MIGRATIONS,
    AppendResult,
    Migration,
    NewMessage,
    SQLiteStore,
    Store,
    StoredMessage,
    apply_migrations,
    schema_version,
)
from conftest import Run

T = TypeVar("T")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bluewren.db"


async def history_all(store: Store, conv: int) -> list[StoredMessage]:
    return await store.history(conv, 0, 1_000_000)


def raw_connection(path: Path) -> sqlite3.Connection:
    """A plain connection to the store's file, for looking under the hood."""
    return sqlite3.connect(path, isolation_level=None, timeout=10)


# -- sequence numbers and group commit -------------------------------------------------


def test_seq_is_gap_free_and_strictly_increasing_under_1000_concurrent_appends(
    run: Run, db: Path
) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            convs = [(await store.create_group("owner", f"g{i}", [])).id for i in range(3)]

            async def send(i: int) -> AppendResult:
                await asyncio.sleep(0.0001 * (i % 7))  # spread arrivals over several passes
                return await store.append(
                    convs[i % 3], f"user{i % 50}", "dev", i + 1, f"body {i}".encode()
                )

            results = await asyncio.gather(*(asyncio.create_task(send(i)) for i in range(1000)))
            assert not any(result.duplicate for result in results)
            for conv in convs:
                ours = sorted(r.message.seq for r in results if r.message.conv == conv)
                assert ours == list(range(1, len(ours) + 1))
                stored = await history_all(store, conv)
                assert [m.seq for m in stored] == ours
                by_cmid = {r.message.cmid: r.message for r in results if r.message.conv == conv}
                for message in stored:
                    assert message == by_cmid[message.cmid]
                    assert message.body == f"body {message.cmid - 1}".encode()
                assert await store.last_seq(conv) == len(ours)

    run(scenario())


def test_group_commit_puts_1000_concurrent_appends_in_far_fewer_commits(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            before = store.stats.commits
            await asyncio.gather(*(store.append(conv, "a", "d", i + 1, b"x") for i in range(1000)))
            commits = store.stats.commits - before
            assert 1 <= commits <= 1000 // 10
            assert store.stats.appended == 1000
            assert store.stats.largest_batch > 1

    run(scenario())


Outcomes = list[AppendResult | StoreError]


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_append_each_nowait_answers_each_run_once_in_commit_order_on_the_loop(
    run: Run, db: Path, native: bool
) -> None:
    """The node's path: no future per write; ``callback(outcomes, None)`` once per call,
    in the order the calls were made, with per message the result ``append`` gives (a
    retry is a duplicate carrying the original, also within one run); runs and single
    appends queued together share a transaction and keep their order."""

    async def scenario() -> None:
        async with SQLiteStore(db, native_appends=native) as store:
            assert (store._appender is not None) is native
            conv = (await store.create_direct("a", "b")).id
            other = (await store.create_direct("a", "c")).id
            loop = asyncio.get_running_loop()
            answers: list[tuple[int, Outcomes | None, BaseException | None]] = []
            done = loop.create_future()

            def callback(i: int, outcomes: Outcomes | None, error: BaseException | None) -> None:
                assert asyncio.get_running_loop() is loop
                answers.append((i, outcomes, error))
                if len(answers) == 10:
                    done.set_result(None)

            before = store.stats.commits
            single = asyncio.ensure_future(store.append(other, "a", "phone", 1, b"single"))
            await asyncio.sleep(0)  # its step queues it; the batching task runs after us
            for i in range(10):
                messages = [
                    NewMessage(conv if k % 2 else other, "a", "phone", 100 * i + k + 2, b"m")
                    for k in range(10)
                ]
                if i == 9:  # a retry of run 0's first message, and one within this run
                    messages[3] = NewMessage(other, "a", "phone", 2, b"again")
                    messages[5] = messages[4]
                store.append_each_nowait(messages, lambda o, e, i=i: callback(i, o, e))
            await asyncio.wait_for(done, 10)
            first = await single
            assert store.stats.commits - before == 1  # everything queued in one pass
            assert [i for i, _, _ in answers] == list(range(10))
            assert all(error is None for _, _, error in answers)
            results = [r for _, outcomes, _ in answers for r in outcomes or []]
            assert all(isinstance(r, AppendResult) for r in results)
            stored = [r for r in results if isinstance(r, AppendResult) and not r.duplicate]
            assert len(stored) == 98
            dups = [r for r in results[90:] if isinstance(r, AppendResult) and r.duplicate]
            assert [d.message for d in dups] == [results[0].message, results[94].message]
            # In call order, each conversation's seqs run on without a gap.
            assert first.message.seq == 1
            assert [m.message.seq for m in stored if m.message.conv == other] == list(range(2, 52))
            assert [m.message.seq for m in stored if m.message.conv == conv] == list(range(1, 49))
            assert await history_all(store, conv) == [
                r.message for r in stored if r.message.conv == conv
            ]
            assert store.stats.appended == 99
            assert store.stats.duplicates == 2

    run(scenario())


def test_append_each_nowait_fails_a_message_alone(run: Run, db: Path) -> None:
    """An unknown conversation is that message's own outcome, and the others commit.
    (A failure of the database is the whole call's error: see the lock test below.)"""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[tuple[Outcomes | None, BaseException | None]]
            answer = loop.create_future()
            messages = [NewMessage(conv, "a", "d", 1, b"x"), NewMessage(999, "a", "d", 2, b"y")]
            messages.append(NewMessage(conv, "a", "d", 3, b"z"))
            store.append_each_nowait(messages, lambda o, e: answer.set_result((o, e)))
            outcomes, error = await asyncio.wait_for(answer, 10)
            assert error is None
            assert outcomes is not None
            assert isinstance(outcomes[1], ConversationNotFoundError)
            assert [o.message.seq for o in outcomes if isinstance(o, AppendResult)] == [1, 2]
            assert [m.cmid for m in await history_all(store, conv)] == [1, 3]

    run(scenario())


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_appends_store_the_same_rows_natively_and_in_python(
    run: Run, tmp_path: Path, native: bool
) -> None:
    """Both write paths give the same outcomes and the same rows: seqs per
    conversation, the u64 cmid folded into SQLite's i64 and back, NULL for cmid 0,
    unicode names, empty and binary bodies, the kind and one timestamp per batch."""
    messages = [
        NewMessage(1, "ålice", "phöne", CMID_MAX, b""),
        NewMessage(2, "b", "d", 0, bytes(range(256)) * 4),
        NewMessage(1, "b", "d", 1 << 63, b"\x00x", "text"),
        NewMessage(2, "ålice", "d", 5, b"z"),
    ]

    async def scenario() -> None:
        async with SQLiteStore(tmp_path / "s.db", native_appends=native) as store:
            for peer in ("b", "c"):
                await store.create_direct("ålice", peer)
            answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            store.append_each_nowait(messages, lambda o, e: answer.set_result((o, e)))
            outcomes, error = await asyncio.wait_for(answer, 10)
            assert error is None
            assert [(o.message.conv, o.message.seq) for o in outcomes] == [
                (1, 1),
                (2, 1),
                (1, 2),
                (2, 2),
            ]
            stored = await history_all(store, 1) + await history_all(store, 2)
            by_key = sorted(outcomes, key=lambda o: (o.message.conv, o.message.seq))
            assert stored == [o.message for o in by_key]
            assert [(m.sender, m.device, m.cmid, m.body, m.kind) for m in stored] == [
                (m.sender, m.device, m.cmid, m.body, m.kind)
                for m in (messages[0], messages[2], messages[1], messages[3])
            ]
            assert len({m.created_at for m in stored}) == 1

        conn = sqlite3.connect(tmp_path / "s.db")
        try:
            rows = conn.execute("SELECT cmid FROM messages ORDER BY conv, seq").fetchall()
        finally:
            conn.close()
        assert rows == [(-1,), (-(1 << 63),), (None,), (5,)]

    run(scenario())


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_appends_while_another_process_holds_the_lock_fail_unavailable_and_write_nothing(
    run: Run, db: Path, native: bool
) -> None:
    """Past the busy timeout, a batch of appends fails as a whole with
    StoreUnavailableError naming the lock, on either path; once the lock is gone the
    same appends succeed."""

    async def scenario() -> None:
        async with SQLiteStore(db, busy_timeout_ms=50, native_appends=native) as store:
            conv = (await store.create_direct("a", "b")).id
            loop = asyncio.get_running_loop()
            messages = [NewMessage(conv, "a", "d", i + 1, b"x") for i in range(3)]
            holder = sqlite3.connect(db, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                answer: asyncio.Future[Any] = loop.create_future()
                store.append_each_nowait(messages, lambda o, e: answer.set_result((o, e)))
                outcomes, error = await asyncio.wait_for(answer, 10)
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert outcomes is None
            assert isinstance(error, StoreUnavailableError)
            assert "busy timeout" in str(error)
            assert await history_all(store, conv) == []
            answer = loop.create_future()
            store.append_each_nowait(messages, lambda o, e: answer.set_result((o, e)))
            outcomes, error = await asyncio.wait_for(answer, 10)
            assert error is None
            assert [o.message.seq for o in outcomes] == [1, 2, 3]

    run(scenario())


def test_native_appender_is_not_used_with_another_sqlite_library(
    run: Run, db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two copies of SQLite in one process would not see each other's locks: if the
    appender does not see a setting made through the sqlite3 module, the store says so
    and writes in Python."""
    import bluewren.store.sqlite as module

    class OtherLibrary:
        @staticmethod
        def soft_heap_limit() -> int:
            return 0

    monkeypatch.setattr(module, "Appender", OtherLibrary)

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            assert store._appender is None
            conv = (await store.create_direct("a", "b")).id
            assert (await store.append(conv, "a", "d", 1, b"x")).message.seq == 1

    with caplog.at_level("WARNING", logger="bluewren.store.sqlite"):
        run(scenario())
    assert "another SQLite library" in caplog.text
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA soft_heap_limit").fetchone() == (0,)  # put back
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, "a", "d", 1, b"x"), "conv"),
        ((True, "a", "d", 1, b"x"), "conv"),
        ((1 << 63, "a", "d", 1, b"x"), "conv"),
        ((1, "", "d", 1, b"x"), "sender"),
        ((1, "a", 5, 1, b"x"), "device"),
        ((1, "a", "d", -1, b"x"), "cmid"),
        ((1, "a", "d", 1 << 64, b"x"), "cmid"),
        ((1, "a", "d", 1, "text"), "body"),
        ((1, "a", "d", 1, bytearray(b"x")), "body"),
        ((1, "a", "d", 1, b"x", "erased"), "kind"),
    ],
)
def test_append_each_nowait_refuses_a_bad_message_at_once_naming_it(
    run: Run, db: Path, args: tuple[Any, ...], field: str
) -> None:
    """One bad message refuses the call, and none of it is queued."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            await store.create_direct("a", "b")
            good = NewMessage(1, "a", "d", 9, b"fine")
            with pytest.raises(StoreArgumentError) as caught:
                store.append_each_nowait([good, NewMessage(*args)], lambda o, e: None)
            assert caught.value.field == field
            with pytest.raises(StoreArgumentError) as caught:
                store.append_each_nowait([], lambda o, e: None)
            assert caught.value.field == "messages"
            assert not store._pending
            assert store.stats.appended == 0

    run(scenario())


def test_append_each_nowait_belongs_to_the_loop_the_store_was_opened_on(db: Path) -> None:
    """From another thread's loop, or from a new loop after the store's own stopped,
    append_each_nowait raises at once and queues nothing; on a closed store,
    StoreClosedError."""
    store = SQLiteStore(db)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(store.open())
        first.run_until_complete(store.create_direct("a", "b"))

        async def append_here() -> None:
            store.append_each_nowait([NewMessage(1, "a", "d", 1, b"x")], lambda o, e: None)

        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                asyncio.run(append_here())
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(errors) == 1
        assert isinstance(errors[0], StoreError)
        assert "belongs to the event loop it was opened on" in str(errors[0])
        with pytest.raises(StoreError, match="belongs to the event loop"):
            asyncio.run(append_here())  # same thread, another loop
        assert not store._pending
        first.run_until_complete(store.close())
        with pytest.raises(StoreClosedError):
            first.run_until_complete(append_here())
    finally:
        first.close()


def test_batch_max_one_commits_each_append_alone(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db, batch_max=1) as store:
            conv = (await store.create_direct("a", "b")).id
            before = store.stats.commits
            await asyncio.gather(*(store.append(conv, "a", "d", i + 1, b"x") for i in range(50)))
            assert store.stats.commits - before == 50
            assert store.stats.largest_batch == 1

    run(scenario())


def test_batch_max_caps_the_messages_committed_together(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db, batch_max=64) as store:
            conv = (await store.create_direct("a", "b")).id
            before = store.stats.commits
            await asyncio.gather(*(store.append(conv, "a", "d", i + 1, b"x") for i in range(640)))
            assert store.stats.largest_batch == 64
            assert store.stats.commits - before >= 10
            assert [m.seq for m in await history_all(store, conv)] == list(range(1, 641))

    run(scenario())


def test_message_is_readable_as_soon_as_its_append_returns(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_group("o", "g", [])).id

            async def send_then_read(i: int) -> None:
                result = await store.append(conv, f"u{i}", "d", 1, b"m%d" % i)
                seq = result.message.seq
                assert await store.history(conv, seq - 1, 1) == [result.message]
                assert await store.last_seq(conv) >= seq

            await asyncio.gather(*(send_then_read(i) for i in range(200)))

    run(scenario())


# -- idempotent sends ------------------------------------------------------------------


def test_retry_with_the_same_cmid_returns_the_original_and_writes_no_second_row(
    run: Run, db: Path
) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("alice", "bob")).id
            first = await store.append(conv, "alice", "phone", 42, b"hello")
            assert first.duplicate is False
            retry = await store.append(conv, "alice", "laptop", 42, b"changed body", "image")
            assert retry.duplicate is True
            assert retry.message == first.message
            assert await store.last_seq(conv) == 1
            assert await history_all(store, conv) == [first.message]
            # the next new message still gets the next number: the retry consumed none
            nxt = await store.append(conv, "alice", "phone", 43, b"again")
            assert nxt.message.seq == 2
            assert store.stats.duplicates == 1

    run(scenario())


def test_concurrent_retries_in_one_batch_store_one_message(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("alice", "bob")).id
            results = await asyncio.gather(
                *(store.append(conv, "alice", "phone", 7, b"once") for _ in range(20))
            )
            assert sum(not r.duplicate for r in results) == 1
            assert {r.message for r in results} == {results[0].message}
            assert [m.seq for m in await history_all(store, conv)] == [1]

    run(scenario())


def test_dedup_key_is_conversation_sender_and_cmid(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            one = (await store.create_direct("alice", "bob")).id
            two = (await store.create_direct("alice", "carol")).id
            a = await store.append(one, "alice", "d", 5, b"x")
            b = await store.append(one, "bob", "d", 5, b"x")  # other sender
            c = await store.append(two, "alice", "d", 5, b"x")  # other conversation
            assert [a.duplicate, b.duplicate, c.duplicate] == [False, False, False]
            assert (a.message.seq, b.message.seq, c.message.seq) == (1, 2, 1)
            # cmid 0 means "no client message id": never deduplicated
            z1 = await store.append(one, "alice", "d", 0, b"y")
            z2 = await store.append(one, "alice", "d", 0, b"y")
            assert [z1.duplicate, z2.duplicate] == [False, False]
            assert (z1.message.seq, z2.message.seq) == (3, 4)

    run(scenario())


def test_cmid_round_trips_the_whole_unsigned_64_bit_range(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            cmids = [1, (1 << 63) - 1, 1 << 63, CMID_MAX]
            for cmid in cmids:
                assert (await store.append(conv, "a", "d", cmid, b"x")).message.cmid == cmid
            assert [m.cmid for m in await history_all(store, conv)] == cmids
            again = await store.append(conv, "a", "d", CMID_MAX, b"x")
            assert again.duplicate
            assert again.message.seq == 4

    run(scenario())


# -- batches: all or nothing, and failures stay with their writer ----------------------


def test_append_many_is_one_all_or_nothing_transaction(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            before = store.stats.commits
            results = await store.append_many(
                [NewMessage(conv, "a", "d", i, b"m%d" % i) for i in (1, 2, 3, 2)]
            )
            assert store.stats.commits - before == 1
            assert [r.message.seq for r in results] == [1, 2, 3, 2]
            assert [r.duplicate for r in results] == [False, False, False, True]
            with pytest.raises(ConversationNotFoundError) as caught:
                await store.append_many(
                    [
                        NewMessage(conv, "a", "d", 10, b"kept?"),
                        NewMessage(9999, "a", "d", 11, b"no such conversation"),
                    ]
                )
            assert caught.value.conv == 9999
            assert await store.last_seq(conv) == 3
            assert [m.cmid for m in await history_all(store, conv)] == [1, 2, 3]
            assert await store.append_many([]) == []

    run(scenario())


def test_append_to_unknown_conversation_fails_alone_in_its_batch(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            before = store.stats.commits
            outcomes = await asyncio.gather(
                store.append(conv, "a", "d", 1, b"ok"),
                store.append(12345, "a", "d", 2, b"lost"),
                store.append(conv, "a", "d", 3, b"ok"),
                return_exceptions=True,
            )
            assert isinstance(outcomes[1], ConversationNotFoundError)
            assert "create_direct() or create_group()" in str(outcomes[1])
            assert [r.message.seq for r in outcomes if isinstance(r, AppendResult)] == [1, 2]
            assert store.stats.commits - before == 1

    run(scenario())


def test_taken_sequence_number_is_refused_as_a_fence_and_fails_alone(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            fenced = (await store.create_direct("a", "b")).id
            other = (await store.create_direct("a", "c")).id
            await store.append(fenced, "a", "d", 1, b"one")
            # Another writer (a node that now owns the conversation) took seq 2 behind
            # this store's back.
            with raw_connection(db) as conn:
                conn.execute(
                    "INSERT INTO messages (conv, seq, sender, device, cmid, body, kind, "
                    "created_at) VALUES (?, 2, 'b', 'd', NULL, x'00', 'text', 0)",
                    (fenced,),
                )
            outcomes = await asyncio.gather(
                store.append(other, "a", "d", 1, b"fine"),
                store.append(fenced, "a", "d", 2, b"stale"),
                store.append(other, "a", "d", 2, b"fine"),
                return_exceptions=True,
            )
            assert isinstance(outcomes[1], SequenceConflictError)
            assert (outcomes[1].conv, outcomes[1].seq) == (fenced, 2)
            assert [r.message.seq for r in outcomes if isinstance(r, AppendResult)] == [1, 2]
            assert await store.last_seq(fenced) == 1  # rolled back, nothing half-written
            assert [m.sender for m in await history_all(store, fenced)] == ["a", "b"]

    run(scenario())


def test_sequence_uniqueness_is_enforced_by_the_schema(run: Run, db: Path) -> None:
    async def scenario() -> int:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            await store.append(conv, "a", "d", 1, b"x")
            return conv

    conv = run(scenario())
    with raw_connection(db) as conn, pytest.raises(sqlite3.IntegrityError, match="seq"):
        conn.execute(
            "INSERT INTO messages (conv, seq, sender, device, cmid, body, kind, created_at) "
            "VALUES (?, 1, 'intruder', 'd', NULL, x'', 'text', 0)",
            (conv,),
        )


def test_two_writers_on_one_file_never_share_a_sequence_number(run: Run, db: Path) -> None:
    """Without the message log (which one process owns: test_store_log), seqs are taken
    in SQLite, so two stores may append to one file."""

    async def scenario() -> None:
        async with (
            SQLiteStore(db, message_log=False) as first,
            SQLiteStore(db, message_log=False) as second,
        ):
            conv = (await first.create_group("o", "g", [])).id
            sends = [
                (first if i % 2 else second).append(conv, f"u{i % 2}", "d", i + 1, b"x")
                for i in range(400)
            ]
            results = await asyncio.gather(*sends)
            assert sorted(r.message.seq for r in results) == list(range(1, 401))
            assert [m.seq for m in await history_all(first, conv)] == list(range(1, 401))

    run(scenario())


# -- durability ------------------------------------------------------------------------


def test_data_survives_close_and_reopen(run: Run, db: Path) -> None:
    async def write() -> tuple[int, int, list[StoredMessage]]:
        async with SQLiteStore(db) as store:
            direct = (await store.create_direct("alice", "bob")).id
            group = (await store.create_group("alice", "team", ["bob", "carol"])).id
            await store.set_role(group, "bob", "admin")
            for i in range(1, 21):
                await store.append(group, "alice", "phone", i, b"msg %d" % i)
            await store.set_cursor("bob", "tablet", group, 15)
            await store.mark_read(group, "carol", 12)
            return direct, group, await history_all(store, group)

    direct, group, written = run(write())

    async def reopen() -> None:
        async with SQLiteStore(db) as store:
            assert await history_all(store, group) == written
            assert await store.create_direct("bob", "alice") == await store.conversation(direct)
            roles = {m.user: m.role for m in await store.members(group)}
            assert roles == {"alice": "owner", "bob": "admin", "carol": "member"}
            assert await store.cursors("bob", "tablet") == {group: 15}
            assert await store.read_seq(group, "carol") == 12
            assert (await store.append(group, "alice", "phone", 21, b"next")).message.seq == 21
            assert (await store.append(group, "alice", "phone", 3, b"again")).duplicate

    run(reopen())


CHILD = r"""
import asyncio, sys
import uvloop
from bluewren.store import SQLiteStore

async def main(path, conv):
    store = SQLiteStore(path)
    await store.open()
    out = sys.stdout

    async def sender(k):
        cmid = k * 1_000_000
        while True:
            cmid += 1
            result = await store.append(conv, f"u{k}", "dev", cmid, b"body-%d" % cmid)
            # Printed only once the append returned: this line is an acknowledgement.
            out.write(f"{result.message.seq} {cmid}\n")
            out.flush()

    await asyncio.gather(*(sender(k) for k in range(20)))

path, conv, loop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
(uvloop.run if loop == "uvloop" else asyncio.run)(main(path, conv))
"""


def test_every_acked_message_survives_sigkill_of_the_writing_process(
    run: Run, db: Path, loop_name: str
) -> None:
    async def create() -> int:
        async with SQLiteStore(db) as store:
            return (await store.create_group("owner", "crash", [])).id

    conv = run(create())
    wanted = 2000
    newline = b"\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(conv), loop_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    received = b""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while received.count(b"\n") < wanted:
                left = deadline - time.monotonic()
                assert left > 0, f"only {received.count(newline)} acks within 60 s"
                if sel.select(left):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        _, err = proc.communicate(timeout=30)
                        pytest.fail(f"the writer exited early ({proc.returncode}): {err!r}")
                    received += chunk
        proc.send_signal(signal.SIGKILL)  # mid-stream: appends are in flight right now
        rest, errors = proc.communicate(timeout=30)
        received += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, errors.decode(errors="replace")
    lines = received.split(b"\n")[:-1]  # a partial last line is not an ack
    acked = {int(seq): int(cmid) for seq, cmid in (line.split() for line in lines)}
    assert len(acked) == len(lines) >= wanted

    async def verify() -> None:
        async with SQLiteStore(db) as store:
            stored = await history_all(store, conv)
            assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
            by_seq = {m.seq: m for m in stored}
            for seq, cmid in acked.items():
                assert by_seq[seq].cmid == cmid
                assert by_seq[seq].body == b"body-%d" % cmid
            # each sender's messages are stored in the order it sent them
            for k in range(20):
                cmids = [m.cmid for m in stored if m.sender == f"u{k}"]
                assert cmids == sorted(cmids)

    run(verify())


def test_close_commits_the_writes_already_queued(run: Run, db: Path) -> None:
    async def scenario() -> None:
        store = SQLiteStore(db)
        await store.open()
        conv = (await store.create_direct("a", "b")).id
        tasks = [asyncio.create_task(store.append(conv, "a", "d", i + 1, b"x")) for i in range(100)]
        await asyncio.sleep(0)  # every task has queued its append
        await store.close()
        results = await asyncio.gather(*tasks)
        assert sorted(r.message.seq for r in results) == list(range(1, 101))
        with pytest.raises(StoreClosedError) as caught:
            await store.append(conv, "a", "d", 101, b"late")
        assert caught.value.retryable
        with pytest.raises(StoreClosedError):
            await store.history(conv, 0, 10)
        async with SQLiteStore(db) as again:
            assert await again.last_seq(conv) == 100

    run(scenario())


# -- schema migrations -----------------------------------------------------------------


def test_migrations_are_idempotent_and_record_the_version(run: Run, db: Path) -> None:
    async def open_and_close() -> None:
        async with SQLiteStore(db):
            pass

    run(open_and_close())
    with raw_connection(db) as conn:
        first = conn.execute("SELECT version, applied_at FROM schema_version").fetchall()
        assert [version for version, _ in first] == [m.version for m in MIGRATIONS]
        assert schema_version(conn) == len(MIGRATIONS)
        assert apply_migrations(conn) == []
    run(open_and_close())
    with raw_connection(db) as conn:
        assert conn.execute("SELECT version, applied_at FROM schema_version").fetchall() == first
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_apply_migrations_applies_only_the_missing_versions(tmp_path: Path) -> None:
    extra = Migration(len(MIGRATIONS) + 1, "test column", ("CREATE TABLE extra (x INTEGER)",))
    with raw_connection(tmp_path / "m.db") as conn:
        assert apply_migrations(conn, ()) == []
        assert schema_version(conn) == 0
        assert apply_migrations(conn) == [m.version for m in MIGRATIONS]
        assert apply_migrations(conn, (*MIGRATIONS, extra)) == [extra.version]
        assert apply_migrations(conn, (*MIGRATIONS, extra)) == []
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"extra", "messages", "conversations", "schema_version"} <= tables
    with pytest.raises(ValueError, match="in order"):
        apply_migrations(sqlite3.connect(":memory:"), (extra,))


def test_file_with_a_newer_schema_version_is_refused_with_a_clear_error(run: Run, db: Path) -> None:
    newer = len(MIGRATIONS) + 1
    with raw_connection(db) as conn:
        apply_migrations(conn, (*MIGRATIONS, Migration(newer, "future", ("SELECT 1",))))

    async def scenario() -> None:
        with pytest.raises(SchemaVersionError) as caught:
            await SQLiteStore(db).open()
        error = caught.value
        assert (error.found, error.known, error.path) == (newer, len(MIGRATIONS), str(db))
        assert f"schema version {newer}" in str(error)
        assert "upgrade BlueWren" in str(error)

    run(scenario())


def test_a_file_in_a_missing_directory_is_reported_as_unavailable(run: Run, tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(StoreUnavailableError, match="directory exists"):
            await SQLiteStore(tmp_path / "missing" / "bluewren.db").open()

    run(scenario())


def test_a_file_that_is_not_a_database_is_reported_as_corrupt(run: Run, db: Path) -> None:
    db.write_bytes(b"this is not a database, just some text " * 200)

    async def scenario() -> None:
        with pytest.raises(StoreCorruptError, match="restore it from a backup"):
            await SQLiteStore(db).open()

    run(scenario())


# -- history paging --------------------------------------------------------------------


def test_history_pages_forward_and_backward_without_overlap(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            await store.append_many(
                [NewMessage(conv, "a", "d", i, b"%d" % i) for i in range(1, 26)]
            )

            async def seqs_after(after: int) -> list[int]:
                return [m.seq for m in await store.history(conv, after, 10)]

            async def seqs_before(before: int) -> list[int]:
                return [m.seq for m in await store.history_before(conv, before, 10)]

            assert await seqs_after(0) == list(range(1, 11))
            assert await seqs_after(10) == list(range(11, 21))
            assert await seqs_after(20) == list(range(21, 26))
            assert await seqs_after(25) == []
            assert await seqs_before(26) == list(range(16, 26))
            assert await seqs_before(16) == list(range(6, 16))
            assert await seqs_before(6) == list(range(1, 6))
            assert await seqs_before(1) == []
            with pytest.raises(ConversationNotFoundError):
                await store.history(conv + 100, 0, 10)
            with pytest.raises(ConversationNotFoundError):
                await store.history_before(conv + 100, 10, 10)
            with pytest.raises(StoreArgumentError) as caught:
                await store.history(conv, 0, 0)
            assert caught.value.field == "limit"

    run(scenario())


# -- cursors and read marks ------------------------------------------------------------


def test_device_cursors_never_move_backwards(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            one = (await store.create_direct("a", "b")).id
            two = (await store.create_direct("a", "c")).id
            for conv in (one, two):
                await store.append_many([NewMessage(conv, "a", "d", i, b"x") for i in range(1, 11)])
            assert await store.cursors("a", "phone") == {}
            assert await store.set_cursor("a", "phone", one, 5) == 5
            assert await store.set_cursor("a", "phone", one, 3) == 5
            assert await store.set_cursor("a", "phone", two, 9) == 9
            assert await store.set_cursor("a", "laptop", one, 1) == 1
            assert await store.cursors("a", "phone") == {one: 5, two: 9}
            assert await store.cursors("a", "laptop") == {one: 1}
            # concurrent updates in one batch: the highest wins whatever the order
            await asyncio.gather(*(store.set_cursor("a", "phone", one, s) for s in (7, 10, 6)))
            assert (await store.cursors("a", "phone"))[one] == 10
            with pytest.raises(StoreArgumentError, match="past the last message"):
                await store.set_cursor("a", "phone", one, 11)
            with pytest.raises(ConversationNotFoundError):
                await store.set_cursor("a", "phone", 999, 1)

    run(scenario())


def test_read_marks_never_move_backwards(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_group("a", "g", ["b"])).id
            await store.append_many([NewMessage(conv, "a", "d", i, b"x") for i in range(1, 6)])
            assert await store.read_seq(conv, "b") == 0
            assert await store.mark_read(conv, "b", 4) == 4
            assert await store.mark_read(conv, "b", 2) == 4
            assert await store.read_seq(conv, "b") == 4
            assert await store.read_seq(conv, "a") == 0
            with pytest.raises(StoreArgumentError, match="past the last message"):
                await store.mark_read(conv, "b", 6)
            with pytest.raises(ConversationNotFoundError):
                await store.read_seq(conv + 1, "b")

    run(scenario())


# -- conversations and members ---------------------------------------------------------


def test_direct_conversation_is_the_same_for_the_same_pair_in_either_order(
    run: Run, db: Path
) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            pairs = [("alice", "bob"), ("bob", "alice")] * 10
            convs = await asyncio.gather(*(store.create_direct(a, b) for a, b in pairs))
            assert len({c.id for c in convs}) == 1
            direct = convs[0]
            assert direct.kind == "direct"
            assert await store.create_direct("alice", "bob") == direct
            assert (await store.create_direct("alice", "carol")).id != direct.id
            assert [(m.user, m.role) for m in await store.members(direct.id)] == [
                ("alice", "member"),
                ("bob", "member"),
            ]
            self_chat = await store.create_direct("dave", "dave")
            assert [m.user for m in await store.members(self_chat.id)] == ["dave"]
            with pytest.raises(ConversationKindError, match="needs a group"):
                await store.add_members(direct.id, ["mallory"])
            with pytest.raises(ConversationKindError):
                await store.rename(direct.id, "ours")
            with pytest.raises(ConversationKindError):
                await store.remove_member(direct.id, "bob")

    run(scenario())


def test_group_membership_and_roles(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            group = await store.create_group("olga", "Team", ["ann", "olga", "ann", "ben"])
            assert (group.kind, group.title) == ("group", "Team")
            members = await store.members(group.id)
            assert [(m.user, m.role, m.joined_seq) for m in members] == [
                ("ann", "member", 0),
                ("ben", "member", 0),
                ("olga", "owner", 0),
            ]
            await store.append_many([NewMessage(group.id, "ann", "d", i, b"x") for i in (1, 2)])
            added = await store.add_members(group.id, ["cid", "ann", "dan"], role="admin")
            assert [(m.user, m.role, m.joined_seq) for m in added] == [
                ("cid", "admin", 2),
                ("dan", "admin", 2),
            ]
            roles = {m.user: m.role for m in await store.members(group.id)}
            assert roles["ann"] == "member"  # already in: unchanged
            promoted = await store.set_role(group.id, "ann", "admin")
            assert (promoted.role, promoted.joined_seq) == ("admin", 0)
            await store.remove_member(group.id, "ben")
            assert "ben" not in {m.user for m in await store.members(group.id)}
            with pytest.raises(NotAMemberError) as caught:
                await store.remove_member(group.id, "ben")
            assert (caught.value.conv, caught.value.user) == (group.id, "ben")
            with pytest.raises(NotAMemberError):
                await store.set_role(group.id, "ben", "member")
            with pytest.raises(StoreArgumentError) as bad_role:
                await store.set_role(group.id, "ann", "king")  # type: ignore[arg-type]
            assert bad_role.value.field == "role"
            renamed = await store.rename(group.id, "Team 2")
            assert (await store.conversation(group.id)) == renamed
            assert renamed.title == "Team 2"

            other = await store.create_group("ann", "Other", [])
            direct = await store.create_direct("ann", "olga")
            assert await store.conversations_of("ann") == sorted([group.id, other.id, direct.id])
            assert await store.count_groups_of("ann") == 2
            assert await store.count_groups_of("ben") == 0
            assert await store.conversations_of("nobody") == []
            with pytest.raises(ConversationNotFoundError):
                await store.members(9999)
            with pytest.raises(ConversationNotFoundError):
                await store.conversation(9999)

    run(scenario())


# -- users' data -----------------------------------------------------------------------


def test_export_holds_everything_stored_about_the_user(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            group = (await store.create_group("ann", "Team", ["ben"])).id
            direct = (await store.create_direct("ann", "ben")).id
            await store.append(group, "ann", "phone", 1, b"\x00binary\xff")
            await store.append(group, "ben", "phone", 1, b"not ann's")
            await store.append(direct, "ann", "laptop", 2, b"hi ben", "note")
            await store.set_cursor("ann", "phone", group, 2)
            await store.mark_read(group, "ann", 1)
            exported = await store.export_user("ann")
            assert json.loads(json.dumps(exported)) == exported  # JSON-ready
            assert exported["user"] == "ann"
            assert [(m["conv"], m["role"]) for m in exported["memberships"]] == [
                (group, "owner"),
                (direct, "member"),
            ]
            assert exported["memberships"][0]["title"] == "Team"
            messages = exported["messages"]
            assert [(m["conv"], m["seq"], m["cmid"], m["kind"]) for m in messages] == [
                (group, 1, 1, "text"),
                (direct, 1, 2, "note"),
            ]
            assert base64.b64decode(messages[0]["body_base64"]) == b"\x00binary\xff"
            assert exported["cursors"] == [{"device": "phone", "conv": group, "seq": 2}]
            assert exported["read_marks"] == [{"conv": group, "seq": 1}]

    run(scenario())


PADDING = b"." * 3000  # long enough to spill into overflow pages


def secret(i: int) -> bytes:
    return b"SECRET-%d-" % i + PADDING


def test_erase_keeps_tombstones_so_sequences_stay_gap_free(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            group = (await store.create_group("ben", "Team", ["ann"])).id
            direct = (await store.create_direct("ann", "ben")).id
            for i in range(1, 7):
                sender = "ann" if i % 2 else "ben"
                await store.append(group, sender, "phone", i, secret(i))
            await store.append(direct, "ann", "phone", 100, b"SECRET-direct" + PADDING)
            await store.set_cursor("ann", "phone", group, 6)
            await store.mark_read(group, "ann", 6)

            erased = await store.erase_user("ann")
            assert (erased.messages, erased.memberships, erased.cursors, erased.read_marks) == (
                4,
                2,
                1,
                1,
            )
            stored = await history_all(store, group)
            assert [m.seq for m in stored] == [1, 2, 3, 4, 5, 6]
            for message in stored:
                if message.sender == "ann":
                    assert (message.body, message.kind, message.device) == (b"", ERASED_KIND, "")
                else:
                    assert message.body == secret(message.seq)
            assert await store.conversations_of("ann") == []
            assert await store.cursors("ann", "phone") == {}
            assert await store.read_seq(group, "ann") == 0
            left = await store.export_user("ann")
            assert left["memberships"] == left["cursors"] == left["read_marks"] == []
            assert {m["kind"] for m in left["messages"]} == {ERASED_KIND}
            # sequences continue after the tombstones; a retry of an erased send stays erased
            assert (await store.append(group, "ben", "p", 7, b"x")).message.seq == 7
            retry = await store.append(group, "ann", "phone", 1, secret(1))
            assert retry.duplicate
            assert retry.message.kind == ERASED_KIND
            # the pair's direct conversation is gone: a new one is made on next use
            assert (await store.create_direct("ben", "ann")).id != direct
            assert await store.erase_user("ann") == type(erased)(0, 1, 0, 0)

        # nothing of the erased bodies is left in the files
        leftovers = b"".join(p.read_bytes() for p in db.parent.rglob("*") if p.is_file())
        assert b"SECRET-2-" in leftovers  # ben's message is kept
        for gone in (b"SECRET-1-", b"SECRET-3-", b"SECRET-5-", b"SECRET-direct"):
            assert gone not in leftovers

    run(scenario())


def test_appending_the_reserved_erased_kind_is_refused(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            with pytest.raises(StoreArgumentError) as caught:
                await store.append(conv, "a", "d", 1, b"x", ERASED_KIND)
            assert caught.value.field == "kind"
            assert await store.last_seq(conv) == 0

    run(scenario())


# -- the event loop and failures -------------------------------------------------------


def test_event_loop_keeps_running_while_a_large_batch_commits(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            ticks: list[float] = []
            done = asyncio.Event()

            async def ticker() -> None:
                while not done.is_set():
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.001)

            task = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            batch = [NewMessage(conv, "a", "d", i, b"x" * 512) for i in range(1, 20_001)]
            results = await store.append_many(batch)
            done.set()
            await task
            assert results[-1].message.seq == 20_000
            started = store.stats.last_batch_started
            finished = store.stats.last_batch_finished
            assert started < finished
            assert any(started < tick < finished for tick in ticks)

    run(scenario())


def test_database_locked_past_the_busy_timeout_is_unavailable_and_retry_is_safe(
    run: Run, db: Path
) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db, busy_timeout_ms=50) as store:
            conv = (await store.create_direct("a", "b")).id
            blocker = raw_connection(db)
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                with pytest.raises(StoreUnavailableError, match="busy timeout") as caught:
                    await store.append(conv, "a", "d", 1, b"x")
                assert caught.value.retryable
                assert isinstance(caught.value, StoreError)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            result = await store.append(conv, "a", "d", 1, b"x")
            assert (result.duplicate, result.message.seq) == (False, 1)
            assert (await store.append(conv, "a", "d", 1, b"x")).duplicate

    run(scenario())


def test_invalid_arguments_are_refused_with_the_field_named(run: Run, db: Path) -> None:
    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            conv = (await store.create_direct("a", "b")).id
            bad_appends: list[tuple[str, dict[str, Any]]] = [
                ("cmid", {"cmid": -1}),
                ("cmid", {"cmid": CMID_MAX + 1}),
                ("body", {"body": "text, not bytes"}),
                ("kind", {"kind": ""}),
                ("sender", {"sender": ""}),
                ("conv", {"conv": 0}),
            ]
            for field, change in bad_appends:
                args: dict[str, Any] = {
                    "conv": conv,
                    "sender": "a",
                    "device": "d",
                    "cmid": 1,
                    "body": b"x",
                    "kind": "text",
                }
                args.update(change)
                with pytest.raises(StoreArgumentError) as caught:
                    await store.append(**args)
                assert caught.value.field == field
            with pytest.raises(StoreArgumentError) as caught:
                await store.set_cursor("a", "d", conv, -1)
            assert caught.value.field == "seq"
            assert await store.last_seq(conv) == 0

    run(scenario())
    with pytest.raises(StoreArgumentError, match="in-memory") as caught:
        SQLiteStore(":memory:")
    assert caught.value.field == "path"
    with pytest.raises(StoreArgumentError) as sync:
        SQLiteStore(db, synchronous="OFF")  # type: ignore[arg-type]
    assert sync.value.field == "synchronous"
    with pytest.raises(StoreArgumentError) as batch:
        SQLiteStore(db, batch_max=0)
    assert batch.value.field == "batch_max"
    for bad in (0, -1, True, 1.5):
        with pytest.raises(StoreArgumentError) as pages:
            SQLiteStore(db, wal_checkpoint_pages=bad)  # type: ignore[arg-type]
        assert pages.value.field == "wal_checkpoint_pages"
    assert SQLiteStore(db, wal_checkpoint_pages=1).wal_checkpoint_pages == 1


def wal_frames(db: Path) -> int:
    """mxFrame of the wal-index header (the -shm file): the frames in the log."""
    with open(f"{db}-shm", "rb") as shm:
        header = shm.read(20)
    return int.from_bytes(header[16:20], sys.byteorder)


def test_wal_is_checkpointed_off_the_commit_path_and_stays_bounded(run: Run, db: Path) -> None:
    # Each single append commits alone (about 4 pages: message, two index leaves, the
    # conversation's row), so 500 of them write some 2,000 frames.
    limit = 40

    async def scenario(pages: int, held: bool = False) -> tuple[list[int], int]:
        seen: list[int] = []
        # With ``held``, step 1 of the checkpoint waits until the log has reached the
        # bound: a checkpoint thread that falls as far behind the commits as it can.
        bound_reached = threading.Event()
        async with SQLiteStore(db, wal_checkpoint_pages=pages) as store:
            if held:
                aside = store._checkpoint_aside

                def slow_aside() -> None:
                    bound_reached.wait(30)
                    aside()

                store._checkpoint_aside = slow_aside  # type: ignore[method-assign]
            conv = (await store.create_direct("a", "b")).id
            for i in range(500):
                await store.append(conv, "a", "d", i + 1, b"x" * 100)
                seen.append(wal_frames(db))
                if seen[-1] >= 8 * pages:  # the bound (_WAL_RESTART_FACTOR)
                    bound_reached.set()
            assert await store.last_seq(conv) == 500
            return seen, store.stats.checkpoints

    # A limit never reached: no checkpoint at all, not even SQLite's automatic one at
    # 1,000 pages (it is off: it would run inside a COMMIT).
    seen, checkpoints = run(scenario(10**9))
    assert checkpoints == 0
    assert max(seen) > 1000
    assert seen == sorted(seen)  # the log only grew
    db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)

    seen, checkpoints = run(scenario(limit))
    assert checkpoints >= 4
    # The edge: the log grows untouched up to the first commit that reaches the limit.
    first = next(i for i, frames in enumerate(seen) if frames >= limit)
    assert seen[: first + 1] == sorted(seen[: first + 1])
    # The log restarted from its beginning, again and again, and never grew past the
    # bound (8 x the limit) by more than one commit (a few frames), however slowly the
    # checkpoint thread ran.
    restarts = sum(1 for a, b in itertools.pairwise(seen) if b < a)
    assert restarts >= 4
    assert max(seen) < 8 * limit + 20
    with raw_connection(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 500
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)

    # Step 1 cannot finish before the log has reached the bound: the writer waits for
    # it there, so the bound holds anyway.
    seen, checkpoints = run(scenario(limit, held=True))
    assert checkpoints >= 2
    assert max(seen) >= 8 * limit
    assert max(seen) < 8 * limit + 20


def test_store_errors_are_bluewren_errors_and_pickle(tmp_path: Path) -> None:
    errors: list[StoreError] = [
        ConversationNotFoundError(3),
        NotAMemberError(3, "ann"),
        ConversationKindError(3, "direct", "rename"),
        SequenceConflictError(3, 9),
        SchemaVersionError(str(tmp_path), 5, 1),
        StoreArgumentError("limit", "limit must be >= 1"),
        StoreClosedError(),
        StoreUnavailableError("disk full"),
    ]
    for error in errors:
        assert isinstance(error, BlueWrenError)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
    assert [e.retryable for e in errors] == [False] * 6 + [True, True]


_BODIES = st.binary(max_size=64)
_CMIDS = st.integers(min_value=0, max_value=CMID_MAX)


@st.composite
def _append_runs(draw: st.DrawFn) -> list[list[tuple[int, str, int, bytes]]]:
    """Runs of (conv, sender, cmid, body): conversations 1-3 exist, 9 does not; cmids
    repeat within and across runs (retries), and 0 means none."""
    cmid = st.one_of(st.sampled_from([0, 1, 2, CMID_MAX]), _CMIDS)
    conv = st.sampled_from([1, 2, 3] * 4 + [9])
    message = st.tuples(conv, st.sampled_from(["a", "b"]), cmid, _BODIES)
    runs = draw(st.lists(st.lists(message, min_size=1, max_size=12), min_size=1, max_size=6))
    return [[(1, "a", 7, b"first"), (2, "b", 0, b"")], *runs]  # one plain run at least


@settings(max_examples=40, deadline=None)
@given(runs=_append_runs())
def test_native_and_python_appends_give_the_same_outcomes_and_rows(
    tmp_path_factory: pytest.TempPathFactory, runs: list[list[tuple[int, str, int, bytes]]]
) -> None:
    """Property: for any runs of appends (retries, repeated cmids within a run, unknown
    conversations, cmid 0 and the largest cmid), each answered before the next, the
    native appender and the Python path answer every append alike and leave the same
    messages, and so does the message log with either of them. (A run the appender
    cannot write plainly falls back to the Python path; the first run always goes
    native; with the log, a run whose conversations and senders the store has seen
    goes through the log, the rest to SQLite.)"""

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.written = 0

        def append(self, *args: Any) -> list[int] | None:
            seqs: list[int] | None = self.inner.append(*args)
            self.written += seqs is not None
            return seqs

        def index(self, *args: Any) -> bool:
            return bool(self.inner.index(*args))

        def close(self) -> None:
            self.inner.close()

    async def play(native: bool, message_log: bool) -> tuple[list[object], list[StoredMessage]]:
        path = tmp_path_factory.mktemp("prop") / "p.db"
        async with SQLiteStore(path, native_appends=native, message_log=message_log) as store:
            counting = store._appender = Counting(store._appender) if native else None
            for peer in ("b", "c", "d"):
                await store.create_direct("a", peer)
            loop = asyncio.get_running_loop()
            outcomes: list[object] = []
            for run in runs:
                answer: asyncio.Future[Any] = loop.create_future()
                batch = [NewMessage(c, s, "d", m, b) for c, s, m, b in run]
                store.append_each_nowait(batch, lambda o, e, f=answer: f.set_result((o, e)))
                results, error = await asyncio.wait_for(answer, 10)
                assert error is None
                for r in results:  # errors by type; results without the clock
                    if isinstance(r, AppendResult):
                        m = r.message
                        outcomes.append((m.conv, m.seq, m.sender, m.cmid, m.body, r.duplicate))
                    else:
                        outcomes.append(type(r))
            stored = [m for conv in (1, 2, 3) for m in await history_all(store, conv)]
            if counting is not None:
                assert counting.written >= 1
        return outcomes, [replace(m, created_at=0.0) for m in stored]

    native = asyncio.run(play(True, False))
    assert asyncio.run(play(False, False)) == native
    assert asyncio.run(play(True, True)) == native
    assert asyncio.run(play(False, True)) == native


def test_appender_writes_plain_batches_and_leaves_the_rest_to_python(run: Run, db: Path) -> None:
    """``bluewren._sqlite.Appender`` on its own: seqs per conversation for a plain batch;
    None, with nothing written, for a retry or an unknown conversation; nothing to do for
    no messages; a closed appender refuses; a bad setting is refused by name."""
    from bluewren._sqlite import Appender

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            await store.create_direct("a", "b")
            await store.create_direct("a", "c")
        appender = Appender(str(db), "FULL", 100)
        try:
            first = [NewMessage(1, "a", "d", 1, b"x"), NewMessage(2, "a", "d", 2, b"y")]
            first.append(NewMessage(1, "b", "d", 0, b"z"))
            assert appender.append(first, 1.0) == [1, 1, 2]
            retry = [NewMessage(2, "a", "d", 9, b"new"), NewMessage(1, "a", "d", 1, b"x")]
            assert appender.append(retry, 2.0) is None
            unknown = [NewMessage(7, "a", "d", 3, b"x")]
            assert appender.append(unknown, 3.0) is None
            assert appender.append([], 4.0) == []
        finally:
            appender.close()
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            appender.append(first, 5.0)
        with pytest.raises(ValueError, match="synchronous"):
            Appender(str(db), "OFF", 100)
        with pytest.raises(sqlite3.OperationalError) as caught:
            Appender(str(db.parent / "missing" / "x.db"), "NORMAL", 100)
        assert caught.value.sqlite_errorcode & 0xFF == 14  # SQLITE_CANTOPEN
        assert caught.value.sqlite_errorname == "SQLITE_CANTOPEN"
        async with SQLiteStore(db) as store:
            rows = [(m.conv, m.seq, m.cmid) for c in (1, 2) for m in await history_all(store, c)]
            assert rows == [(1, 1, 1), (1, 2, 0), (2, 1, 2)]
            assert await store.last_seq(1) == 2
            assert await store.last_seq(2) == 1

    run(scenario())
