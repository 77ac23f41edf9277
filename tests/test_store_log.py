"""The store's message log (bluewren.store.msglog and its use by SQLiteStore).

A message whose conversation and sender the store has seen is acknowledged once one
``write`` has put it in the log; SQLite indexes it afterwards. These tests hold the
writer thread still (a queued write that waits on an event) to look at the moment in
between: acknowledged, in the log, not yet in SQLite. The crash tests end a process
with ``os._exit`` in that moment and open its files again.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bluewren.errors import StoreError, StoreUnavailableError
from bluewren.store import AppendResult, NewMessage, SQLiteStore, StoredMessage
from bluewren.store.backup import backup_database
from bluewren.store.msglog import LOG_SUFFIX, MessageLog, _decode_payload, encode_frame
from bluewren.store.sqlite import replay_log
from conftest import Run

Outcomes = list[AppendResult | StoreError]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bluewren.db"


def segments(db: Path) -> list[Path]:
    return sorted((db.parent / (db.name + LOG_SUFFIX)).glob("*.seg"))


async def appends(store: SQLiteStore, *messages: NewMessage) -> Outcomes:
    """``append_each_nowait`` awaited: its outcomes (raises on a whole-call error)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[Outcomes | None, BaseException | None]] = loop.create_future()
    store.append_each_nowait(list(messages), lambda o, e: answer.set_result((o, e)))
    outcomes, error = await answer
    if error is not None:
        raise error
    assert outcomes is not None
    return outcomes


def seqs(outcomes: Outcomes) -> list[int]:
    return [o.message.seq if isinstance(o, AppendResult) else -1 for o in outcomes]


class Writer:
    """Holds the store's writer thread in a queued write until ``release``."""

    def __init__(self, store: SQLiteStore) -> None:
        self.go = threading.Event()
        self.holding = threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            self.holding.set()
            self.go.wait(30)

        self.done = store._submit(hold)

    async def __aenter__(self) -> Writer:
        await asyncio.to_thread(self.holding.wait, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        await self.done

    def release(self) -> None:
        self.go.set()


def rows(db: Path, conv: int) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT seq FROM messages WHERE conv = ? ORDER BY seq"
        return [r[0] for r in conn.execute(sql, (conv,))]
    finally:
        conn.close()


def msg(conv: int, cmid: int, sender: str = "a", body: bytes = b"x") -> NewMessage:
    return NewMessage(conv, sender, "d", cmid, body)


# -- the acknowledgement's path ----------------------------------------------------------


def test_a_known_senders_message_is_acknowledged_before_sqlite_and_read_after_it(
    run: Run, db: Path
) -> None:
    """The first message of a conversation and sender goes through SQLite; the next ones
    are answered while the writer is held, from the log. A read started then waits for
    SQLite to hold them, and sees them all in order."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            chat = (await store.create_direct("a", "b")).id
            assert seqs(await appends(store, msg(chat, 1))) == [1]
            async with Writer(store):
                answered = await asyncio.wait_for(appends(store, msg(chat, 2), msg(chat, 3)), 5)
                assert seqs(answered) == [2, 3]
                assert rows(db, chat) == [1]  # acknowledged, not yet in SQLite
                assert len(segments(db)) == 1
                reading = asyncio.ensure_future(store.history(chat, 0, 10))
                await asyncio.sleep(0.05)
                assert not reading.done()  # it waits for the index
            assert [m.seq for m in await reading] == [1, 2, 3]
            assert rows(db, chat) == [1, 2, 3]
            assert await store.last_seq(chat) == 3
        assert segments(db) == []  # closed with everything in SQLite: nothing left

    run(scenario())


def test_a_call_the_log_takes_whole_is_answered_before_it_returns(run: Run, db: Path) -> None:
    """Its acknowledgements can leave in the same loop pass; a call with a message for
    SQLite is answered later, and a call made after it waits its turn."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            chat = (await store.create_direct("a", "b")).id
            answered: list[Outcomes | None] = []
            store.append_each_nowait([msg(chat, 1)], lambda o, e: answered.append(o))
            assert answered == []  # a new sender: SQLite first
            await asyncio.sleep(0.05)
            assert len(answered) == 1
            store.append_each_nowait([msg(chat, 2), msg(chat, 3)], lambda o, e: answered.append(o))
            assert len(answered) == 2
            assert seqs(cast(Outcomes, answered[1])) == [2, 3]
            store.append_each_nowait([msg(chat, 3)], lambda o, e: answered.append(o))  # a retry
            store.append_each_nowait([msg(chat, 4)], lambda o, e: answered.append(o))
            assert len(answered) == 2
            await asyncio.sleep(0.05)
            assert [seqs(cast(Outcomes, o)) for o in answered[2:]] == [[3], [4]]

    run(scenario())


def test_sqlite_indexes_the_log_in_transactions_of_at_most_batch_max(run: Run, db: Path) -> None:
    """Frames of 3 with ``batch_max=4``: each is indexed in a transaction of its own, none
    is split, and all are indexed in order."""

    async def scenario() -> None:
        async with SQLiteStore(db, batch_max=4) as store:
            chat = (await store.create_direct("a", "b")).id
            await appends(store, msg(chat, 1))
            largest = store.stats.largest_batch
            async with Writer(store):
                for first in (2, 5, 8):
                    await appends(store, *(msg(chat, i) for i in range(first, first + 3)))
            assert await store.last_seq(chat) == 10
            assert store.stats.largest_batch == max(largest, 3)
            assert rows(db, chat) == list(range(1, 11))

    run(scenario())


def test_what_goes_through_sqlite_and_what_through_the_log(run: Run, db: Path) -> None:
    """A retry, a cmid not above the sender's largest, a new sender and an unknown
    conversation all go through SQLite with the outcome they always had; cmid 0 and a
    larger cmid go through the log. The calls are answered in the order they were made."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            chat = (await store.create_direct("a", "b")).id
            await appends(store, msg(chat, 10), msg(chat, 1, sender="b"))
            stats = store.stats
            before = stats.appended
            async with Writer(store) as writer:
                order: list[str] = []
                loop = asyncio.get_running_loop()
                first = loop.create_future()
                store.append_each_nowait(
                    [msg(chat, 10, body=b"retry"), msg(chat, 11)],  # the retry holds chat
                    lambda o, e: (order.append("first"), first.set_result(o)),
                )
                second = loop.create_future()
                store.append_each_nowait(
                    [msg(chat, 12)], lambda o, e: (order.append("second"), second.set_result(o))
                )
                await asyncio.sleep(0.05)
                assert not first.done()
                assert not second.done()  # answered after the first, in call order
                writer.release()
            one, two = await first, await second
            assert order == ["first", "second"]
            assert isinstance(one[0], AppendResult)
            assert one[0].duplicate
            assert one[0].message.seq == 1
            assert one[0].message.body == b"x"
            assert seqs(one) == [1, 3]
            assert seqs(two) == [4]
            # now known again: cmid 0 and a larger cmid take the log
            async with Writer(store):
                fast = await asyncio.wait_for(
                    appends(store, msg(chat, 0), msg(chat, 99), msg(chat, 2, sender="b")), 5
                )
            assert seqs(fast) == [5, 6, 7]
            # a smaller cmid than the largest (2 < 99) waits for SQLite, and is new
            async with Writer(store) as writer:
                slow = asyncio.ensure_future(appends(store, msg(chat, 50)))
                await asyncio.sleep(0.05)
                assert not slow.done()
                writer.release()
            assert seqs(await slow) == [8]
            unknown = await appends(store, msg(chat + 1, 1))
            assert type(unknown[0]).__name__ == "ConversationNotFoundError"
            assert stats.appended - before == 6
            assert [m.seq for m in await store.history(chat, 0, 100)] == list(range(1, 9))

    run(scenario())


def test_cmids_compare_as_unsigned_64_bit(run: Run, db: Path) -> None:
    """The largest cmid is learned in unsigned order (SQLite stores the upper half as
    negative integers): after 2**64 - 1, 2**63 is not larger and is not taken from the
    log blindly; a retry of 2**64 - 1 is a duplicate."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            chat = (await store.create_direct("a", "b")).id
            await appends(store, msg(chat, 5), msg(chat, (1 << 64) - 1))
            await appends(store, msg(chat, 6))  # not above the largest: SQLite, new
            assert store._cmids[("a", chat)] == (1 << 64) - 1
            retry = await appends(store, msg(chat, (1 << 64) - 1), msg(chat, 1 << 63))
            assert isinstance(retry[0], AppendResult)
            assert retry[0].duplicate
            assert seqs(retry) == [2, 4]
            assert [m.cmid for m in await store.history(chat, 0, 10)] == [
                5,
                (1 << 64) - 1,
                6,
                1 << 63,
            ]

    run(scenario())


# -- limits --------------------------------------------------------------------------------


def test_log_backlog_max_parks_calls_at_its_edge(run: Run, db: Path) -> None:
    """With ``log_backlog_max=3``: a call is taken by the log while fewer than 3 of its
    messages wait for SQLite (2, then 2 more: 4 waiting); the next call waits until
    SQLite has caught up, and so does every call after it, in order."""

    async def scenario() -> None:
        async with SQLiteStore(db, log_backlog_max=3) as store:
            chat = (await store.create_direct("a", "b")).id
            await appends(store, msg(chat, 1))
            async with Writer(store) as writer:
                assert seqs(await appends(store, msg(chat, 2), msg(chat, 3))) == [2, 3]
                assert seqs(await appends(store, msg(chat, 4), msg(chat, 5))) == [4, 5]
                assert store._backlog == 4
                parked = asyncio.ensure_future(appends(store, msg(chat, 6)))
                after = asyncio.ensure_future(appends(store, msg(chat, 7)))
                await asyncio.sleep(0.05)
                assert not parked.done()
                assert not after.done()
                writer.release()
            assert seqs(await parked) == [6]
            assert seqs(await after) == [7]
            assert [m.seq for m in await store.history(chat, 0, 10)] == list(range(1, 8))

    run(scenario())


def test_log_cache_entries_bounds_the_caches_and_loses_nothing(run: Run, db: Path) -> None:
    """With room for one conversation, three conversations in turn keep relearning their
    last seq from SQLite: the caches never pass one entry and every seq is right."""

    async def scenario() -> None:
        async with SQLiteStore(db, log_cache_entries=1) as store:
            chats = [(await store.create_direct("a", peer)).id for peer in "bcd"]
            for round_ in range(1, 5):
                for chat in chats:
                    assert seqs(await appends(store, msg(chat, round_))) == [round_]
                    assert len(store._seqs) <= 1
                    assert len(store._cmids) <= 1
            for chat in chats:
                assert [m.seq for m in await store.history(chat, 0, 10)] == [1, 2, 3, 4]

    run(scenario())


@pytest.mark.parametrize(
    ("name", "value"),
    [("log_backlog_max", 0), ("log_segment_bytes", 4095), ("log_cache_entries", 0)],
)
def test_log_limits_are_checked(db: Path, name: str, value: int) -> None:
    with pytest.raises(StoreError, match=name):
        SQLiteStore(db, **{name: value})


def test_segments_end_at_log_segment_bytes_and_go_once_checkpointed(run: Run, db: Path) -> None:
    """4 KiB segments: many frames make many segments; checkpoints (here after every
    few commits) remove the ended ones SQLite holds; closing removes the rest."""

    async def scenario() -> None:
        async with SQLiteStore(db, log_segment_bytes=4096, wal_checkpoint_pages=4) as store:
            chat = (await store.create_direct("a", "b")).id
            await appends(store, msg(chat, 1))
            seen = 0
            for i in range(2, 400):
                await appends(store, msg(chat, i, body=b"b" * 200))
                assert await store.last_seq(chat) == i  # a read waits for the index
                seen = max(seen, store._log.current if store._log else 0)
            assert seen > 15  # about 20 segments were written
            left = segments(db)
            assert left[0].name != "000000000001.seg"  # the first ones went
            assert len(left) < seen
            assert await store.last_seq(chat) == 399
        assert segments(db) == []

    run(scenario())


# -- failures --------------------------------------------------------------------------------


def test_a_failed_log_write_acknowledges_nothing_and_the_next_append_relearns(
    run: Run, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log cannot be written (a full disk): the call's log part fails with
    StoreUnavailableError, and nothing of it is stored; the next call learns the seqs
    from SQLite again, so they stay gap-free."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            chat = (await store.create_direct("a", "b")).id
            await appends(store, msg(chat, 1))
            mlog = store._log
            assert mlog is not None
            real = mlog.append

            def full(frame: bytes) -> int:
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(mlog, "append", full)
            failed = await appends(store, msg(chat, 2), msg(chat, 3))
            assert all(isinstance(o, StoreUnavailableError) for o in failed)
            assert "cannot be written" in str(failed[0])
            monkeypatch.setattr(mlog, "append", real)
            assert seqs(await appends(store, msg(chat, 2), msg(chat, 3))) == [2, 3]
            assert seqs(await appends(store, msg(chat, 4))) == [4]
            assert [m.cmid for m in await store.history(chat, 0, 10)] == [1, 2, 3, 4]

    run(scenario())


class FailingIndex:
    """The store's native appender, whose ``index`` fails while ``failures`` last."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def append(self, *args: Any) -> Any:
        return self.inner.append(*args)

    def index(self, *args: Any) -> bool:
        if self.failures:
            self.failures -= 1
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = 10  # type: ignore[attr-defined]
            error.sqlite_errorname = "SQLITE_IOERR"  # type: ignore[attr-defined]
            raise error
        return bool(self.inner.index(*args))

    def close(self) -> None:
        self.inner.close()


async def known_sender_then_failing_index(store: SQLiteStore, failures: int) -> int:
    """A conversation whose sender the store knows (seq 1 stored), after which the next
    ``failures`` index transactions fail; returns the conversation."""
    chat = (await store.create_direct("a", "b")).id
    await appends(store, msg(chat, 1))
    store._appender = FailingIndex(store._appender, failures)  # type: ignore[assignment]
    return chat


def test_indexing_that_fails_is_retried_and_reads_wait_for_it(
    run: Run, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite fails twice to index what the log acknowledged: the writer tries again
    (logged), a read waits for it, and nothing is lost or reordered."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            chat = await known_sender_then_failing_index(store, 2)
            with caplog.at_level(logging.WARNING, "bluewren.store.sqlite"):
                assert seqs(await appends(store, msg(chat, 2), msg(chat, 3))) == [2, 3]
                stored = await asyncio.wait_for(store.history(chat, 0, 10), 10)
            assert [m.seq for m in stored] == [1, 2, 3]
            assert caplog.text.count("retrying in") == 2
            assert store.stats.rollbacks >= 2

    run(scenario())


def test_indexing_that_still_fails_at_close_leaves_the_log_for_the_next_open(
    run: Run, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database keeps failing until the store closes: the acknowledged messages stay
    in the log (logged), and the next open stores them."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            chat = await known_sender_then_failing_index(store, 1_000_000)
            with caplog.at_level(logging.WARNING, "bluewren.store.sqlite"):
                assert seqs(await appends(store, msg(chat, 2), msg(chat, 3))) == [2, 3]
                await asyncio.sleep(0.1)
        assert "they stay in the message log" in caplog.text
        assert rows(db, chat) == [1]
        assert sum(p.stat().st_size for p in segments(db)) > 0
        async with SQLiteStore(db) as store:
            assert [m.seq for m in await store.history(chat, 0, 10)] == [1, 2, 3]

    run(scenario())


def test_a_second_store_on_the_same_file_reads_but_does_not_append(
    run: Run, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log belongs to one process (an flock). A second store on the file (an
    operator's command while the node runs) reads, and writes what does not take a seq,
    but refuses appends: their seqs would clash with those the owner hands out from
    memory. Once the owner has closed, a new store owns the log and appends."""

    async def scenario() -> None:
        async with SQLiteStore(db) as first:
            chat = (await first.create_direct("a", "b")).id
            await appends(first, msg(chat, 1))
            with caplog.at_level(logging.INFO, "bluewren.store.sqlite"):
                async with SQLiteStore(db) as second:
                    assert second.log_owned_elsewhere
                    assert not first.log_owned_elsewhere
                    assert "belongs to another process" in caplog.text
                    assert await second.set_user_disabled("c", True)
                    with pytest.raises(StoreUnavailableError, match="running node"):
                        second.append_each_nowait([msg(chat, 2)], lambda o, e: None)
                    with pytest.raises(StoreUnavailableError, match="running node"):
                        await second.append(chat, "b", "d", 1, b"no")
                    with pytest.raises(StoreUnavailableError, match="running node"):
                        await second.append_many([msg(chat, 2)])
            assert seqs(await appends(first, msg(chat, 3))) == [2]
        async with SQLiteStore(db) as third:
            assert not third.log_owned_elsewhere
            assert seqs(await appends(third, msg(chat, 4, sender="b"))) == [3]

    run(scenario())


def test_a_log_that_cannot_be_opened_fails_the_open_with_a_clear_error(run: Run, db: Path) -> None:
    """The log's directory is taken by a file: opening fails, names the log, and leaves
    nothing open; once the path is free, the store opens."""
    blocker = db.parent / (db.name + LOG_SUFFIX)
    blocker.write_bytes(b"not a directory")

    async def scenario() -> None:
        store = SQLiteStore(db)
        with pytest.raises(StoreUnavailableError, match="message log"):
            await store.open()
        blocker.unlink()
        async with store:
            chat = (await store.create_direct("a", "b")).id
            assert seqs(await appends(store, msg(chat, 1), msg(chat, 2))) == [1, 2]

    run(scenario())


def test_operators_changes_refuse_a_store_a_running_node_owns(
    run: Run, db: Path, tmp_path: Path
) -> None:
    """``erase``, ``import`` and the ``groups`` changes need a stopped node; reading and
    ``users disable`` work while it runs; once it has stopped, ``erase`` runs."""
    from bluewren import ops

    async def scenario() -> None:
        async with SQLiteStore(db) as node_store:
            chat = (await node_store.create_group("ann", "team", ["ben"])).id
            await appends(node_store, msg(chat, 1, sender="ann", body=b"hello"))
            assert await asyncio.to_thread(ops.export, db, "ann", tmp_path / "ann.json") == 1
            assert await asyncio.to_thread(ops.users_set_disabled, db, "ben", True)
            for change in (
                lambda: ops.erase(db, "ann"),
                lambda: ops.groups_rename(db, chat, "renamed"),
                lambda: ops.import_user(db, tmp_path / "ann.json"),
            ):
                with pytest.raises(ops.OpsError, match="running node"):
                    await asyncio.to_thread(change)
        await asyncio.to_thread(ops.import_user, db, tmp_path / "ann.json")
        assert (await asyncio.to_thread(ops.erase, db, "ann"))["messages"] == 1

    run(scenario())


def test_synchronous_full_has_no_log(run: Run, db: Path) -> None:
    """FULL syncs every commit; the log is not synced, so FULL acknowledges after the
    SQLite commit, as ``message_log=False`` does."""

    async def scenario() -> None:
        async with SQLiteStore(db, synchronous="FULL") as store:
            assert store._log is None
        async with SQLiteStore(db, message_log=False) as store:
            assert store._log is None
        assert segments(db) == []

    run(scenario())


# -- after a crash ----------------------------------------------------------------------


CRASH = r"""
import asyncio, os, sys, threading
from bluewren.store import NewMessage, SQLiteStore

async def main(path, count):
    store = SQLiteStore(path)
    await store.open()
    chat = (await store.create_direct("a", "b")).id
    loop = asyncio.get_running_loop()
    first = loop.create_future()
    one = [NewMessage(chat, "a", "d", 1, b"m1")]
    store.append_each_nowait(one, lambda o, e: first.set_result(o))
    await first
    store._submit(lambda conn: threading.Event().wait())  # the writer never comes back
    acked = loop.create_future()
    batch = [NewMessage(chat, "a", "d", i, b"m%d" % i) for i in range(2, count + 2)]
    store.append_each_nowait(batch, lambda o, e: acked.set_result(o))
    outcomes = await acked
    print(",".join(str(o.message.seq) for o in outcomes), flush=True)
    os._exit(0)  # acknowledged; SQLite never indexed them

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def crash_after_acks(db: Path, count: int) -> list[int]:
    """Runs a store in a subprocess that acknowledges ``count`` messages from the log and
    dies before SQLite indexes them; returns the acknowledged seqs."""
    out = subprocess.run(
        [sys.executable, "-c", CRASH, str(db), str(count)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [int(s) for s in out.stdout.strip().split(",")]


def test_acknowledged_messages_missing_from_sqlite_are_replayed_at_open(
    run: Run, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acked = crash_after_acks(db, 50)
    assert acked == list(range(2, 52))
    assert rows(db, 1) == [1]
    assert len(segments(db)) == 1

    async def scenario() -> None:
        with caplog.at_level(logging.WARNING, "bluewren.store.sqlite"):
            async with SQLiteStore(db) as store:
                assert "50 acknowledged messages" in caplog.text
                stored = await store.history(1, 0, 100)
                assert [m.seq for m in stored] == list(range(1, 52))
                assert [m.body for m in stored] == [b"m%d" % i for i in range(1, 52)]
                assert segments(db) == [segments(db)[0]]  # a fresh, empty one
                assert segments(db)[0].stat().st_size == 0
                # a retry of a replayed message is a duplicate
                again = await appends(store, msg(1, 7, body=b"again"))
                assert isinstance(again[0], AppendResult)
                assert again[0].duplicate
                assert again[0].message.seq == 7

    run(scenario())


def test_a_torn_last_frame_is_cut_off_and_the_rest_replayed(run: Run, db: Path) -> None:
    """The process died in the middle of a write: that frame was never acknowledged.
    The frames before it are replayed; the torn bytes are cut off."""
    crash_after_acks(db, 5)
    (segment,) = segments(db)
    whole = segment.stat().st_size
    frame = encode_frame([msg(1, 100, body=b"torn")], [7], 1.0)
    with segment.open("ab") as f:
        f.write(frame[:-3])

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            assert [m.seq for m in await store.history(1, 0, 100)] == list(range(1, 7))

    run(scenario())
    assert whole > 0


def test_replay_stops_a_conversation_at_a_lost_message(
    run: Run, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a power loss a segment may lack its end while a later one was kept: a
    conversation's replay stops at its first missing seq, so seqs stay gap-free; other
    conversations go on; a damaged frame ends its segment, and the next is read."""

    async def scenario_setup() -> None:
        async with SQLiteStore(db, message_log=False) as store:
            for peer in "bc":
                await store.create_direct("a", peer)

    run(scenario_setup())
    directory = db.parent / (db.name + LOG_SUFFIX)
    directory.mkdir(exist_ok=True)
    one = encode_frame([msg(1, 1), msg(2, 1)], [1, 1], 1.0)
    damaged = bytearray(encode_frame([msg(1, 2)], [2], 1.0))
    damaged[-1] ^= 0xFF
    (directory / "000000000001.seg").write_bytes(one + bytes(damaged))
    # seq 2 of conversation 1 is lost; 3 must not be replayed; conversation 2 goes on
    two = encode_frame([msg(1, 3), msg(2, 2), msg(2, 3)], [3, 2, 3], 1.0)
    (directory / "000000000002.seg").write_bytes(two)

    async def scenario() -> None:
        with caplog.at_level(logging.ERROR):
            async with SQLiteStore(db) as store:
                assert [m.seq for m in await store.history(1, 0, 10)] == [1]
                assert [m.seq for m in await store.history(2, 0, 10)] == [1, 2, 3]
                assert seqs(await appends(store, msg(1, 9))) == [2]
        assert "is damaged at byte" in caplog.text
        assert "lost messages of conversation 1 after seq 1" in caplog.text

    run(scenario())


# -- erasure and backup ---------------------------------------------------------------------


def test_erasure_leaves_no_body_in_the_log(run: Run, db: Path) -> None:
    """Bodies acknowledged through the log are erased from it too: the segments holding
    them are gone once SQLite's copies are erased and checkpointed."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            chat = (await store.create_direct("ann", "ben")).id
            for i in range(1, 6):
                await appends(store, msg(chat, i, sender="ann", body=b"SECRET-%d-" % i))
                await appends(store, msg(chat, i, sender="ben", body=b"KEPT-%d-" % i))
            files = b"".join(p.read_bytes() for p in db.parent.rglob("*.seg"))
            assert b"SECRET-5-" in files  # the log held them
            await store.erase_user("ann")
            leftovers = b"".join(p.read_bytes() for p in db.parent.rglob("*") if p.is_file())
            assert b"KEPT-5-" in leftovers
            for i in range(1, 6):
                assert b"SECRET-%d-" % i not in leftovers

    run(scenario())


def test_a_backup_holds_the_messages_only_the_log_has(run: Run, db: Path, tmp_path: Path) -> None:
    """A backup taken while SQLite lags holds every acknowledged message, and needs no
    log of its own."""

    async def scenario() -> None:
        async with SQLiteStore(db) as store:
            chat = (await store.create_direct("a", "b")).id
            await appends(store, msg(chat, 1))
            async with Writer(store):
                assert seqs(await appends(store, msg(chat, 2), msg(chat, 3))) == [2, 3]
                await asyncio.to_thread(backup_database, db, tmp_path / "copy.db")

    run(scenario())
    assert rows(tmp_path / "copy.db", 1) == [1, 2, 3]
    assert not (tmp_path / ("copy.db" + LOG_SUFFIX)).exists()


# -- the format ----------------------------------------------------------------------------

_TEXT = st.text(max_size=20)
_MESSAGES = st.lists(
    st.tuples(
        st.integers(1, (1 << 63) - 1),
        st.integers(1, (1 << 63) - 1),
        st.text(min_size=1, max_size=20),
        _TEXT,
        st.integers(0, (1 << 64) - 1),
        st.binary(max_size=300),
        st.text(min_size=1, max_size=10),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(messages=_MESSAGES, now=st.floats(allow_nan=False))
def test_frames_decode_to_what_was_encoded(
    messages: list[tuple[int, int, str, str, int, bytes, str]], now: float
) -> None:
    """Property: the native encoder's frame holds a correct header (magic, length,
    crc32) and decodes to the messages, under their seqs and the stamp."""
    batch = [
        NewMessage(conv, sender, device, cmid, body, kind)
        for conv, _, sender, device, cmid, body, kind in messages
    ]
    given_seqs = [seq for _, seq, *_ in messages]
    frame = encode_frame(batch, given_seqs, now)
    assert frame[:4] == b"BWL1"
    length = int.from_bytes(frame[4:8], "little")
    assert length == len(frame) - 12
    assert int.from_bytes(frame[8:12], "little") == zlib.crc32(frame[12:])
    assert _decode_payload(frame[12:]) == [
        StoredMessage(m.conv, seq, m.sender, m.device, m.cmid, m.body, m.kind, now)
        for m, seq in zip(batch, given_seqs, strict=True)
    ]


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 12), min_size=3, max_size=3),
    indexed=st.lists(st.integers(0, 12), min_size=3, max_size=3),
    order=st.randoms(use_true_random=False),
)
def test_replay_inserts_exactly_what_sqlite_lacks_and_again_nothing(
    tmp_path_factory: pytest.TempPathFactory,
    counts: list[int],
    indexed: list[int],
    order: Any,
) -> None:
    """Property: a log holding seqs 1..n of three conversations, interleaved in any order
    that keeps each conversation's own order, over a database already holding a prefix
    1..k of each: replay inserts exactly k+1..n, in order, and replaying again inserts
    nothing."""
    path = tmp_path_factory.mktemp("replay") / "r.db"

    async def setup() -> None:
        async with SQLiteStore(path, message_log=False) as store:
            for peer, k in zip("bcd", indexed, strict=True):
                chat = (await store.create_direct("a", peer)).id
                for i in range(1, k + 1):
                    await store.append(chat, "a", "d", i, b"sql")

    asyncio.run(setup())
    queues = [
        [(conv, seq) for seq in range(1, n + 1)] for conv, n in zip((1, 2, 3), counts, strict=True)
    ]
    logged: list[StoredMessage] = []
    while any(queues):
        queue = order.choice([q for q in queues if q])
        conv, seq = queue.pop(0)
        logged.append(StoredMessage(conv, seq, "a", "d", seq, b"log", "text", 1.0))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert replay_log(conn, logged) == sum(
            max(0, n - k) for n, k in zip(counts, indexed, strict=True)
        )
        assert replay_log(conn, logged) == 0
        for conv, n, k in zip((1, 2, 3), counts, indexed, strict=True):
            got = conn.execute(
                "SELECT seq, body FROM messages WHERE conv = ? ORDER BY seq", (conv,)
            ).fetchall()
            assert got == [(i, b"sql") for i in range(1, k + 1)] + [
                (i, b"log") for i in range(k + 1, n + 1)
            ]
            (last,) = conn.execute(
                "SELECT last_seq FROM conversations WHERE id = ?", (conv,)
            ).fetchone()
            assert last == max(n, k)
    finally:
        conn.close()


def test_the_encoder_refuses_what_it_cannot_frame() -> None:
    with pytest.raises(ValueError, match="same length"):
        encode_frame([msg(1, 1)], [], 0.0)
    with pytest.raises(TypeError, match="bytes"):
        encode_frame([NewMessage(1, "a", "d", 1, bytearray(b"x"))], [1], 0.0)  # type: ignore[arg-type]


def test_reading_a_log_owned_elsewhere_never_cuts_it(tmp_path: Path) -> None:
    """``read(repair=False)`` (a backup's) stops at a torn end and leaves the file as is;
    the owner's read cuts it."""
    directory = tmp_path / "x-log"
    directory.mkdir()
    segment = directory / "000000000001.seg"
    good = encode_frame([msg(1, 1)], [1], 1.0)
    segment.write_bytes(good + good[:5])
    assert [m.seq for m in MessageLog(str(directory), 4096).read(repair=False)] == [1]
    assert segment.stat().st_size == len(good) + 5
    owner = MessageLog(str(directory), 4096)
    assert owner.lock()
    assert [m.seq for m in owner.read()] == [1]
    assert segment.stat().st_size == len(good)
    owner.close(remove=False)
