"""The embedded store: one SQLite file in WAL mode, written with group commit.

:class:`SQLiteStore` implements :class:`~bluewren.store.base.Store` with the standard
library's ``sqlite3``. Nothing touches the database on the event loop:

* **The message log.** With ``synchronous="NORMAL"`` (the default), the node's appends
  (:meth:`SQLiteStore.append_each_nowait`) are acknowledged once one ``write`` system
  call has put them in the message log (:mod:`bluewren.store.msglog`): an append-only
  file next to the database. The store gives each its seq on the loop, from two caches
  it keeps exact: each conversation's last seq and each (sender, conversation)'s
  largest client message id. A message whose cmid is above that largest one cannot be
  a retry, so nothing needs looking up. SQLite indexes the log's messages afterwards,
  off the acknowledgement's path: the writer thread takes them before each batch and
  back to back. Everything else goes through SQLite as below, and holds its
  conversation off the log until answered, so both ways share one sequence:
  * the first message of a conversation or a sender since open;
  * a cmid not above the largest (a retry, or a second device's older counter);
  * :meth:`~SQLiteStore.append` and :meth:`~SQLiteStore.append_many`.

  Reads wait until SQLite holds every message acknowledged before they began, and so do
  writes queued after them. At most ``log_backlog_max`` messages wait for SQLite; past
  that, calls wait their turn. A segment of the log is removed once SQLite holds its
  messages and a checkpoint has copied them into the database file. At open, the store
  replays the log's messages that SQLite lacks, such as those acknowledged just before
  a crash. One process owns the log (a lock). A second store on the same file, such as
  an operator's command while the node runs, refuses appends and writes nothing else
  that takes a seq.

* **One writer thread.** Every write runs on a single dedicated thread that owns the
  write connection, so writes never contend with each other inside the process.
* **Group commit.** Writes are queued on the event loop. A batching task takes everything
  queued in the same loop pass, or while the previous commit was in flight, up to
  ``batch_max`` messages, and commits it in ONE transaction on the writer thread. Each
  caller's awaitable completes only after that ``COMMIT`` has returned, which is what
  lets a node acknowledge only durable messages. Under load a batch grows to whatever
  arrived during one commit, so the number of commits (and of syncs) stays roughly
  constant while throughput grows. ``batch_max=1`` gives one transaction per write.
  The writer thread hands a committed batch straight back to the loop, so its callers
  are answered in the loop's next pass, before the next batch is even taken.
  :meth:`SQLiteStore.append_each_nowait` queues many appends as one write, answered
  with one callback: the node's hot path, without a future per message.
* **The native appender.** A batch made of appends alone is written by
  ``bluewren._sqlite.Appender`` (Cython on SQLite's C API), on a second connection the
  writer thread owns: the same statements in one transaction, every row bound and
  inserted with the GIL released once; it indexes the log's messages the same way.
  Anything but the plain case (a retry, an unknown conversation, a batch holding other
  writes) is written through ``sqlite3`` instead,
  with the same outcomes. Two copies of SQLite in one process would not see each other's
  file locks, so the store uses the appender only after checking that it shares the
  ``sqlite3`` module's library (``_open_appender``), and ``native_appends=False``
  turns it off.
* **Readers in parallel.** Reads run on their own thread(s) and connections; WAL lets
  them read the last committed state while the writer writes. A write's result is
  visible to every read started after its awaitable completed.
* **Failure isolation.** A write that fails for its own reason (an unknown conversation,
  a taken sequence number) fails alone: the rest of its batch commits. A failure of the
  database itself (disk full, I/O error, locked past the busy timeout) fails the whole
  batch with :class:`~bluewren.errors.StoreUnavailableError` and writes nothing; callers
  may retry, and a retried append is deduplicated by its client message id.

Without the log, sequence numbers are assigned inside the writing transaction
(``last_seq + 1`` of the conversation's row). The schema holds ``UNIQUE (conv, seq)`` and
the uniqueness of ``(conv, sender, cmid)``. The first is the fence against a second
writer: another process on the same file (without the log), or a stale owner in a
cluster. The second makes retries idempotent.

Durability: ``synchronous``
---------------------------
``synchronous="NORMAL"`` (the default) in WAL mode syncs the WAL only at checkpoints, not
at every commit. A committed transaction survives a crash of the process (the data is in
the operating system's page cache and the WAL file), but the last transactions before a
power loss or an operating-system crash may be lost; the database stays consistent
either way. The message log promises the same: a message it holds survives a crash of
the process (the next open replays it), and the last ones before a power loss may be
lost. Its segments are not synced. A segment is removed only after a checkpoint (which
syncs the database file) has copied its messages. After a power loss, a conversation
whose message is missing from the log replays up to it only, so seqs stay gap-free.
``synchronous="FULL"`` syncs the WAL on every commit, so a committed
transaction also survives power loss, at the price of one ``fsync`` per commit. Group
commit is what makes FULL affordable: one sync covers every message of the batch. FULL
acknowledges after the commit: it uses no message log, and neither does
``message_log=False``.

Checkpoints: ``wal_checkpoint_pages``
-------------------------------------
SQLite's automatic checkpoint would run inside the ``COMMIT`` that crosses its threshold,
so every caller of that batch, and every write queued behind it, would wait for it (most
of a checkpoint is waiting for its two syncs). The store turns it off on the writer
connection and checkpoints itself, in two steps, once a commit leaves the write-ahead log
holding at least ``wal_checkpoint_pages`` frames:

1. a ``PASSIVE`` checkpoint on a thread and connection of its own copies the log back into
   the database file while batches keep committing;
2. when it is done, the writer thread runs a second ``PASSIVE`` checkpoint *between* two
   batches (their callers are answered first). It only copies what was committed during
   step 1, and once the whole log is copied, the next commit writes the log from its
   start again.

So the log usually stays within ``wal_checkpoint_pages`` frames plus what commits
during one checkpoint. It never grows much past 8 times the limit
(``_WAL_RESTART_FACTOR``): there, no batch commits until step 1 has finished, and step 2
is a ``RESTART`` checkpoint, which also waits (up to ``busy_timeout_ms``) for readers that
keep checkpoints from finishing.

Schema versions are managed by :mod:`bluewren.store.migrations`. The store belongs to the
event loop it was opened on.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Literal, TypeVar, cast

from bluewren import _native  # noqa: F401  (initialises bluewren._sqlite)
from bluewren._sqlite import Appender
from bluewren.errors import (
    ConversationKindError,
    ConversationNotFoundError,
    NotAMemberError,
    SequenceConflictError,
    StoreArgumentError,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
)
from bluewren.store.base import (
    DEFAULT_KIND,
    ERASED_KIND,
    AppendResult,
    Conversation,
    ConversationKind,
    ErasureResult,
    Member,
    NewMessage,
    Role,
    Store,
    StoredMessage,
    StoreStats,
    check_id,
    check_limit,
    check_role,
    check_seq,
    check_user,
    new_append_result,
    new_stored_message,
)
from bluewren.store.migrations import MIGRATIONS, apply_migrations
from bluewren.store.msglog import LOG_SUFFIX, MessageLog, encode_frame

log = logging.getLogger("bluewren.store.sqlite")

__all__ = ["SQLiteStore", "replay_log"]

_T = TypeVar("_T")
_AppendsDone = Callable[[list[AppendResult | StoreError] | None, BaseException | None], None]
"""The callback of :meth:`SQLiteStore.append_each_nowait`."""

EXPORT_FORMAT: Final = "bluewren-user-export/1"

# Primary SQLite result codes (the low byte of an extended code).
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_NOMEM: Final = 7
_SQLITE_READONLY: Final = 8
_SQLITE_INTERRUPT: Final = 9
_SQLITE_IOERR: Final = 10
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14
_SQLITE_PROTOCOL: Final = 15
_SQLITE_NOTADB: Final = 26
_UNAVAILABLE_CODES: Final = frozenset(
    {
        _SQLITE_BUSY,
        _SQLITE_LOCKED,
        _SQLITE_NOMEM,
        _SQLITE_READONLY,
        _SQLITE_INTERRUPT,
        _SQLITE_IOERR,
        _SQLITE_FULL,
        _SQLITE_CANTOPEN,
        _SQLITE_PROTOCOL,
    }
)

_LIBRARY_PROBE: Final = 0x3A5E_B10C
"""An unlikely soft heap limit (bytes), written through one SQLite binding and read
through the other to tell whether they share the library (``_open_appender``)."""

_MESSAGE_COLUMNS: Final = "conv, seq, sender, device, cmid, body, kind, created_at"
_NEXT_SEQ: Final = (
    "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq"
)
_ADD_SEQS: Final = (
    "UPDATE conversations SET last_seq = last_seq + j.value FROM json_each(?) AS j "
    "WHERE conversations.id = CAST(j.key AS INTEGER) RETURNING id, last_seq"
)
"""Reserves seqs for many conversations in one statement: the parameter is a JSON object
``{"conv": count, ...}``; returns each conversation's new ``last_seq``."""
_GIVE_BACK_SEQ: Final = "UPDATE conversations SET last_seq = last_seq - 1 WHERE id = ?"
_INSERT_MESSAGE: Final = (
    f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (sender, conv, cmid) DO NOTHING"
)
_ORIGINAL_MESSAGE: Final = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE sender = ? AND conv = ? AND cmid = ?"
)
_LAST_SEQ: Final = "SELECT last_seq FROM conversations WHERE id = ?"
_INDEX_MESSAGE: Final = f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
"""Inserts a message the log has already given its seq (see ``_index``)."""
_INDEX_MESSAGE_OR_IGNORE: Final = _INDEX_MESSAGE.replace("INSERT", "INSERT OR IGNORE", 1)
_RAISE_LAST_SEQ: Final = "UPDATE conversations SET last_seq = ? WHERE id = ? AND last_seq < ?"
_MAX_CMIDS: Final = (
    "SELECT (SELECT max(cmid) FROM messages WHERE sender = ?1 AND conv = ?2 AND cmid < 0), "
    "(SELECT max(cmid) FROM messages WHERE sender = ?1 AND conv = ?2 AND cmid >= 0)"
)
"""The largest stored client message ids of ``sender`` in ``conv`` among those folded to
a negative i64 and the rest (see ``_max_cmid``)."""
_INDEX_RETRY_FIRST: Final = 0.01
_INDEX_RETRY_MAX: Final = 1.0
"""Seconds between two tries to index the log's messages after the database failed."""
_WAL_RESTART_FACTOR: Final = 8
"""A log this many times ``wal_checkpoint_pages`` long gets a RESTART checkpoint."""
_WAL_MX_FRAME: Final = struct.Struct("=I")
"""``mxFrame``, the number of valid frames in the log: a native-order u32 at offset 16
of the wal-index header, at the start of the ``-shm`` file (SQLite's file format)."""
_U64: Final = 1 << 64
_I64_MAX: Final = (1 << 63) - 1


def _cmid_to_db(cmid: int) -> int | None:
    """The client message id as SQLite stores it: NULL for none, u64 folded into i64."""
    if cmid == 0:
        return None
    return cmid - _U64 if cmid > _I64_MAX else cmid


def _message_from_row(row: tuple[Any, ...]) -> StoredMessage:
    conv, seq, sender, device, cmid, body, kind, created_at = row
    if cmid is None:
        cmid = 0
    elif cmid < 0:
        cmid += _U64
    return new_stored_message(conv, seq, sender, device, cmid, body, kind, created_at)


def _appended(ops: list[_WriteOp]) -> list[NewMessage]:
    """The messages of a run of append ops, in order."""
    messages: list[NewMessage] = []
    for op in ops:
        if op.messages is not None:
            messages += op.messages
        else:
            messages.append(cast(NewMessage, op.message))
    return messages


def _appended_results(
    messages: list[NewMessage], seqs: list[int], now: float
) -> list[AppendResult]:
    """What appending ``messages`` under ``seqs`` at ``now`` gave (none a duplicate)."""
    return [
        new_append_result(
            new_stored_message(m.conv, seq, m.sender, m.device, m.cmid, m.body, m.kind, now),
            False,
        )
        for m, seq in zip(messages, seqs, strict=True)
    ]


def _hand_out(ops: list[_WriteOp], results: list[AppendResult]) -> None:
    """Gives each op of a run of appends its results (``results`` in the run's order)."""
    at = 0
    for op in ops:
        if op.messages is not None:
            op.result = results[at : at + op.size]
            at += op.size
        else:
            op.result = results[at]
            at += 1


class _Fallback(Exception):
    """A run of appends must be written one at a time (see ``_append_run``)."""


class _SeqTaken(Exception):
    """Raised on the writer thread when (conv, seq) is already taken; never escapes."""

    def __init__(self, conv: int, seq: int) -> None:
        super().__init__(conv, seq)
        self.conv = conv
        self.seq = seq


@dataclass(slots=True, eq=False)
class _WriteOp:
    """One queued write. ``run`` executes on the writer thread inside the batch's
    transaction; it may raise a StoreError only before it has written anything, unless
    ``isolated`` (then it runs inside a savepoint that is rolled back on error)."""

    run: Callable[[sqlite3.Connection], Any] | None
    """None for a single append (``message``): it runs as ``_append_one``."""
    future: asyncio.Future[Any] | None
    size: int
    isolated: bool
    result: Any = None
    error: BaseException | None = None
    callback: Callable[[Any, BaseException | None], None] | None = None
    """Called on the loop with (result, error) once the batch is done, instead of a
    future: saves a future and a scheduled callback per write on the hot path."""
    message: NewMessage | None = None
    """Set for a single append: runs of them are written together (``_append_run``)."""
    messages: list[NewMessage] | None = None
    """Set for :meth:`SQLiteStore.append_each_nowait`: appends that each succeed or fail
    alone, written with the single appends around them; ``result`` becomes the list of
    their outcomes."""
    answered: bool = False
    """Set once ``_resolve`` has handed the outcome over (it happens once)."""
    index: _Logged | None = None
    """Set for messages the message log holds: inserted under the seqs they were given."""
    hold: dict[int, int] | None = None
    """Appends that take their seqs in SQLite, per conversation: while they are queued,
    the conversation's messages do not go through the log (see ``_log_appends``)."""
    keys: set[tuple[str, int]] | None = None
    """The (sender, conversation) pairs of a ``hold`` op's messages."""
    learned: _Learned | None = None
    """What a committed ``hold`` op read back for the log's caches (writer thread)."""


@dataclass(slots=True, eq=False)
class _Logged:
    """Messages written to the message log and acknowledged, for SQLite to index."""

    messages: list[NewMessage]
    seqs: list[int]
    now: float
    segment: int


@dataclass(slots=True, eq=False)
class _Learned:
    """Each conversation's ``last_seq`` and each (sender, conversation)'s largest client
    message id, read on the writer thread right after a ``hold`` op committed."""

    seqs: dict[int, int]
    cmids: dict[tuple[str, int], int]


@dataclass(slots=True, eq=False)
class _Answer:
    """One ``append_each_nowait`` call's outcomes, answered in call order."""

    callback: _AppendsDone
    outcomes: list[AppendResult | StoreError | None]
    waiting: bool
    """True while part of it is queued for SQLite."""
    error: BaseException | None = None
    """Set if the database failed a call none of whose messages went to the log."""


@dataclass(slots=True)
class _Readers:
    """The read connections, one per reader thread, so that close() can close them all."""

    local: threading.local = field(default_factory=threading.local)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: list[sqlite3.Connection] = field(default_factory=list)


class SQLiteStore(Store):
    """The durable store on one SQLite file (WAL mode, group commit).

    ``path`` is the database file (created if missing; ``":memory:"`` is refused because
    readers need their own connections to the same database). ``synchronous`` is
    ``"NORMAL"`` or ``"FULL"`` (see the module documentation for what each promises).
    ``busy_timeout_ms`` is how long a connection waits for a lock held by another process
    before the call fails with StoreUnavailableError. ``batch_max`` caps the messages
    committed in one transaction (1 disables group commit). ``read_threads`` is the
    number of threads (each with its own connection) serving reads.
    ``wal_checkpoint_pages`` is the write-ahead log length (in pages) at which the writer
    checkpoints between two batches (see the module documentation).
    ``native_appends`` lets batches made of appends alone be written by the native
    appender (see the module documentation); False writes every batch in Python.
    ``message_log`` lets ``append_each_nowait`` acknowledge messages once the message
    log holds them (with ``synchronous="NORMAL"`` only; see the module documentation):
    at most ``log_backlog_max`` messages wait there for SQLite at a time, a log segment
    ends past ``log_segment_bytes``, and the caches that let a message skip SQLite keep
    at most ``log_cache_entries`` conversations and as many (sender, conversation) pairs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_ms: int = 5000,
        batch_max: int = 1024,
        read_threads: int = 2,
        wal_checkpoint_pages: int = 1000,
        native_appends: bool = True,
        message_log: bool = True,
        log_backlog_max: int = 10_000,
        log_segment_bytes: int = 64 << 20,
        log_cache_entries: int = 100_000,
    ) -> None:
        path = os.fspath(path)
        if not isinstance(path, str) or not path or path == ":memory:" or path.startswith("file:"):
            raise StoreArgumentError(
                "path",
                f"path must be a database file name (not ':memory:' or a 'file:' URI), got "
                f"{path!r}: an in-memory database cannot be shared by the writer and reader "
                f"connections; use a file in a temporary directory instead",
            )
        if synchronous not in ("NORMAL", "FULL"):
            raise StoreArgumentError(
                "synchronous", f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}"
            )
        for name, value, low in (
            ("busy_timeout_ms", busy_timeout_ms, 0),
            ("batch_max", batch_max, 1),
            ("read_threads", read_threads, 1),
            ("wal_checkpoint_pages", wal_checkpoint_pages, 1),
            ("log_backlog_max", log_backlog_max, 1),
            ("log_segment_bytes", log_segment_bytes, 4096),
            ("log_cache_entries", log_cache_entries, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise StoreArgumentError(name, f"{name} must be an integer >= {low}, got {value!r}")
        self.path: Final = path
        self.synchronous: Final = synchronous
        self.busy_timeout_ms: Final = busy_timeout_ms
        self.batch_max: Final = batch_max
        self.read_threads: Final = read_threads
        self.wal_checkpoint_pages: Final = wal_checkpoint_pages
        self.native_appends: Final = native_appends
        self.message_log: Final = message_log
        self.log_backlog_max: Final = log_backlog_max
        self.log_segment_bytes: Final = log_segment_bytes
        self.log_cache_entries: Final = log_cache_entries
        self._log: MessageLog | None = None
        """The message log, while this store owns it (see ``_open_log``)."""
        self._log_elsewhere = False
        self._seqs: dict[int, int] = {}
        """Conversation -> its last seq, counting the log's messages (loop thread)."""
        self._cmids: dict[tuple[str, int], int] = {}
        """(sender, conversation) -> the largest client message id stored (loop thread)."""
        self._held: dict[int, int] = {}
        """Conversation -> appends queued that take their seqs in SQLite."""
        self._backlog = 0
        """Messages the log holds that SQLite has not indexed yet."""
        self._logged_ops = 0
        self._indexed_ops = 0
        self._indexed_segment = 0
        """The log segment of the last messages indexed (writer thread)."""
        self._index_failed = False
        self._catch_up: list[tuple[int, asyncio.Future[None]]] = []
        """Reads waiting for the index to reach a number of logged ops."""
        self._answers: collections.deque[_Answer] = collections.deque()
        self._parked: collections.deque[tuple[list[NewMessage], _AppendsDone]] = collections.deque()
        """``append_each_nowait`` calls waiting for the backlog to fall under its bound."""
        self._logged: collections.deque[_WriteOp] = collections.deque()
        """Frames of the log for SQLite to index: the writer thread takes them, before
        each batch and back to back (a deque: appending and popping are thread-safe)."""
        self._appender: Appender | None = None
        self._shm: int | None = None
        """The writer's descriptor of the ``-shm`` file, to read the log's length."""
        self._checkpoint_due = False
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpointing: concurrent.futures.Future[None] | None = None
        self._ckconn: sqlite3.Connection | None = None
        self.stats = StoreStats()
        self._state: Literal["new", "opening", "open", "closing", "closed"] = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._writer: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._readers = _Readers()
        self._wconn: sqlite3.Connection | None = None
        self._pending: list[_WriteOp] = []
        self._wakeup: asyncio.Event | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._closed: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, synchronous={self.synchronous!r}, {self._state})"

    # -- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Opens the file, switches it to WAL, applies missing migrations, starts serving.

        Raises SchemaVersionError if the file has a newer schema than this code knows,
        StoreCorruptError if it is not a SQLite database, and StoreUnavailableError if it
        cannot be opened or locked in time. Opening an open store does nothing.
        """
        if self._state == "open":
            return
        if self._state == "closing":
            raise StoreClosedError("the store is closing: wait for close() before reopening it")
        if self._state == "opening":
            raise StoreError("open() is already in progress: await that call instead")
        previous = self._state
        self._state = "opening"
        loop = asyncio.get_running_loop()
        writer = ThreadPoolExecutor(1, thread_name_prefix="bluewren-store-writer")
        self._log_elsewhere = False
        try:
            await loop.run_in_executor(writer, self._open_writer)
        except BaseException:
            writer.shutdown(wait=False)
            self._state = previous
            raise
        self._writer = writer
        self._reader_pool = ThreadPoolExecutor(
            self.read_threads, thread_name_prefix="bluewren-store-reader"
        )
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="bluewren-store-checkpoint")
        self._checkpointing = None
        self._readers = _Readers()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._pending = []
        self._seqs = {}
        self._cmids = {}
        self._held = {}
        self._backlog = self._logged_ops = self._indexed_ops = self._indexed_segment = 0
        self._index_failed = False
        self._catch_up = []
        self._answers = collections.deque()
        self._parked = collections.deque()
        self._logged = collections.deque()
        self._wakeup = asyncio.Event()
        self._state = "open"
        self._batcher = loop.create_task(self._run_batches(), name=f"{self!r} group commit")

    async def close(self) -> None:
        """Commits the writes already queued, then closes every connection and thread.

        Calls made once close() has begun raise StoreClosedError. A second close() waits
        for the first to finish; closing a store that is not open does nothing.
        """
        if self._state == "closing":
            assert self._closed is not None
            await self._closed.wait()
            return
        if self._state != "open":
            return
        self._state = "closing"
        self._closed = asyncio.Event()
        assert self._wakeup is not None
        assert self._batcher is not None
        self._wakeup.set()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.shield(self._batcher)
        finally:
            writer = self._writer
            assert writer is not None
            try:
                await self._close_log(loop, writer)
                await loop.run_in_executor(writer, self._close_connections)
            finally:
                writer.shutdown(wait=False)
                self._writer = None
                self._reader_pool = None
                self._state = "closed"
                self._closed.set()

    async def _close_log(self, loop: asyncio.AbstractEventLoop, writer: ThreadPoolExecutor) -> None:
        """Closes the message log, removing it once SQLite's database file holds all of
        it; otherwise the next open replays it."""
        waiting, self._catch_up = self._catch_up, []
        for _target, future in waiting:  # only if the batching task died
            if not future.done():
                future.set_exception(StoreClosedError())
        parked, self._parked = self._parked, collections.deque()
        for _batch, callback in parked:  # likewise
            callback(None, StoreClosedError())
        mlog, self._log = self._log, None
        if mlog is None:
            return
        complete = self._backlog == 0 and not self._index_failed
        checkpointing, self._checkpointing = self._checkpointing, None
        if checkpointing is not None:  # a step 1 in flight would keep this one from the end
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(checkpointing)
        if complete:
            complete = await loop.run_in_executor(writer, self._truncate_wal)
        mlog.close(remove=complete)

    def _open_writer(self) -> None:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"store {self.path!r} could not be switched to WAL mode (journal_mode is "
                    f"{mode!r}): put the file on a local file system that supports shared "
                    f"memory and file locks"
                )
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            conn.execute("PRAGMA foreign_keys = ON")
            # Checkpoints run between batches (see _checkpoint), never inside a COMMIT.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            apply_migrations(conn, MIGRATIONS, path=self.path)
            self._appender = self._open_appender(conn)
            self._log = self._open_log(conn)
            try:
                self._shm = os.open(self.path + "-shm", os.O_RDONLY)
            except OSError:
                self._shm = None  # then the log length is read by a checkpoint itself
        except BaseException as exc:
            if self._appender is not None:
                self._appender.close()
                self._appender = None
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise
        self._wconn = conn

    def _open_appender(self, conn: sqlite3.Connection) -> Appender | None:
        """The native appender, if allowed and if it uses the same SQLite library as the
        standard library's ``sqlite3`` (two copies in one process would not see each
        other's locks): told by a library-wide setting one sets and the other reads."""
        if not self.native_appends:
            return None
        (previous,) = conn.execute("PRAGMA soft_heap_limit").fetchone()
        conn.execute(f"PRAGMA soft_heap_limit = {_LIBRARY_PROBE}")
        try:
            shared = Appender.soft_heap_limit() == _LIBRARY_PROBE
        finally:
            conn.execute(f"PRAGMA soft_heap_limit = {int(previous)}")
        if not shared:
            log.warning(
                "bluewren._sqlite links another SQLite library than the sqlite3 module "
                "(%s): appends are written in Python",
                sqlite3.sqlite_version,
            )
            return None
        return Appender(self.path, self.synchronous, self.busy_timeout_ms)

    def _open_log(self, conn: sqlite3.Connection) -> MessageLog | None:
        """The message log (writer thread, at open), once SQLite holds every message it
        has. None if it is off (appends then go straight to SQLite), or if another
        process owns it (a node, while an operator's command runs): then this store
        refuses appends."""
        if not self.message_log or self.synchronous != "NORMAL":
            return None
        mlog = MessageLog(self.path + LOG_SUFFIX, self.log_segment_bytes)
        if not mlog.lock():
            log.info(
                "the message log of %r belongs to another process (a running node): this "
                "store does not append messages",
                self.path,
            )
            self._log_elsewhere = True
            return None
        try:
            replayed = replay_log(conn, mlog.read())
            mlog.start()
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy == 0 and frames == copied:  # what was replayed is in the database file
                mlog.release(mlog.current)
        except OSError as exc:
            mlog.close(remove=False)
            raise StoreUnavailableError(
                f"the message log {mlog.directory!r} cannot be read or written ({exc}): "
                f"check its permissions and free space"
            ) from exc
        except BaseException:
            mlog.close(remove=False)
            raise
        if replayed:
            log.warning(
                "%d acknowledged messages were in the message log of %r but not in "
                "SQLite (the process stopped before indexing them): they are now",
                replayed,
                self.path,
            )
        return mlog

    @property
    def log_owned_elsewhere(self) -> bool:
        """True when another process (a running node) owns the database's message log:
        then this store refuses appends, whose seqs would clash with the ones that
        process hands out from memory."""
        return self._log_elsewhere

    def _check_appends_allowed(self) -> None:
        if self._log_elsewhere:
            raise StoreUnavailableError(
                f"store {self.path!r} belongs to a running node (it owns the message log "
                f"{self.path + LOG_SUFFIX!r}): append through that node, or stop it first"
            )

    def _close_connections(self) -> None:
        # Runs on the writer thread, after the last batch: no write can be in flight.
        pool = self._reader_pool
        if pool is not None:
            pool.shutdown(wait=True)
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.shutdown(wait=True)
        if self._ckconn is not None:
            self._ckconn.close()
            self._ckconn = None
        with self._readers.lock:
            readers, self._readers.connections = self._readers.connections, []
        for conn in readers:
            conn.close()
        if self._shm is not None:
            os.close(self._shm)
            self._shm = None
        if self._appender is not None:
            self._appender.close()
            self._appender = None
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        if self._state != "open":
            raise StoreClosedError()
        loop = self._loop
        assert loop is not None
        # Running, on the thread it was opened on, the store's loop is the running loop:
        # known without asyncio.get_running_loop(), which costs a getpid() system call.
        if self._loop_thread == threading.get_ident() and loop.is_running():
            return loop
        if asyncio.get_running_loop() is not loop:
            raise StoreError(
                f"{self!r} belongs to the event loop it was opened on: call it from that "
                f"loop, or open one store per loop"
            )
        return loop

    # -- errors -----------------------------------------------------------------------

    def _translate(self, exc: BaseException) -> BaseException:
        """The exception a caller should see for ``exc`` raised by the database layer."""
        if isinstance(exc, _SeqTaken):
            return SequenceConflictError(exc.conv, exc.seq)
        if not isinstance(exc, sqlite3.Error):
            return exc
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        primary = code & 0xFF if isinstance(code, int) else None
        where = f"store {self.path!r}"
        error: StoreError
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            error = StoreUnavailableError(
                f"{where} stayed locked past the busy timeout of {self.busy_timeout_ms} ms "
                f"({name}): another process holds the lock; retry later, or raise "
                f"busy_timeout_ms"
            )
        elif primary == _SQLITE_FULL:
            error = StoreUnavailableError(
                f"{where} cannot grow: the disk is full ({name}); free space on its volume "
                f"and retry"
            )
        elif primary in (_SQLITE_CANTOPEN, _SQLITE_READONLY):
            error = StoreUnavailableError(
                f"{where} cannot be opened for writing ({name}: {exc}): check that its "
                f"directory exists and is writable by this process"
            )
        elif primary in _UNAVAILABLE_CODES:
            error = StoreUnavailableError(f"{where} failed ({name}: {exc}); retry later")
        elif primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            error = StoreCorruptError(
                f"{where} is damaged or not a SQLite database ({name}: {exc}): restore it "
                f"from a backup or point the store at another file"
            )
        else:
            error = StoreError(f"{where} failed ({name}: {exc})")
        error.__cause__ = exc
        return error

    def _is_unavailable(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(exc, sqlite3.Error) and (
            not isinstance(code, int) or code & 0xFF in _UNAVAILABLE_CODES
        )

    # -- the write path ---------------------------------------------------------------

    def _submit(
        self,
        run: Callable[[sqlite3.Connection], _T] | None,
        *,
        size: int = 1,
        isolated: bool = True,
        message: NewMessage | None = None,
    ) -> asyncio.Future[_T]:
        loop = self._loop_or_raise()
        future: asyncio.Future[_T] = loop.create_future()
        self._enqueue(_WriteOp(run, future, size, isolated, message=message))
        return future

    def _enqueue(self, op: _WriteOp) -> None:
        """Queues ``op`` for the next batch and wakes the batching task."""
        self._pending.append(op)
        wakeup = self._wakeup
        assert wakeup is not None
        wakeup.set()

    async def _run_batches(self) -> None:
        """The group-commit task: one transaction per round of queued writes."""
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        writer = self._writer
        assert wakeup is not None
        assert writer is not None
        pending = self._pending
        logged = self._logged
        while True:
            if not pending and not logged:
                if self._state != "open":
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            batch = self._take_batch(pending)
            try:
                await loop.run_in_executor(writer, self._commit_and_answer, batch, loop)
            except asyncio.CancelledError:
                for op in batch:
                    op.error = StoreUnavailableError(
                        "the store's event loop stopped while a commit was in flight, "
                        "so its outcome is unknown: retry the write (appends are "
                        "deduplicated by their client message id)"
                    )
                    op.result = None
                self._resolve(batch)
                raise
            except Exception as exc:
                for op in batch:
                    op.error = self._translate(exc)
                loop.call_soon(self._resolve, batch)
            if self._checkpoint_due:
                self._checkpoint_due = False
                checkpointing = self._checkpointing
                if checkpointing is None:  # step 1 (module documentation)
                    checkpointer = self._checkpointer
                    assert checkpointer is not None
                    self._checkpointing = checkpointer.submit(self._checkpoint_aside)
                elif (
                    checkpointing.done()
                    or self._wal_frames() >= _WAL_RESTART_FACTOR * self.wal_checkpoint_pages
                ):  # step 2; at the bound, no commit before step 1 has finished too
                    self._checkpointing = None
                    with contextlib.suppress(Exception):  # best effort; logged there
                        await asyncio.wrap_future(checkpointing)
                        indexed = self._indexed_segment
                        copied = await loop.run_in_executor(writer, self._checkpoint)
                        if copied and self._log is not None:
                            # The segments before it are indexed and in the database file.
                            self._log.release(indexed)

    def _resolve(self, batch: list[_WriteOp]) -> None:
        """Hands each op's outcome to its caller, in commit order (once)."""
        for op in batch:
            if op.answered:
                continue
            op.answered = True
            if op.hold is not None:
                self._release(op)
            callback = op.callback
            if callback is not None:
                try:
                    callback(op.result, op.error)
                except Exception:
                    log.exception("a write's completion callback failed")
                continue
            future = op.future
            if future is None or future.done():  # the caller was cancelled; the write stands
                continue
            if op.error is not None:
                future.set_exception(op.error)
            else:
                future.set_result(op.result)

    def _take_batch(self, pending: list[_WriteOp]) -> list[_WriteOp]:
        total = 0
        count = 0
        for op in pending:
            if count and total + op.size > self.batch_max:
                break
            total += op.size
            count += 1
        batch = pending[:count]
        del pending[:count]
        return batch

    def _commit_and_answer(self, batch: list[_WriteOp], loop: asyncio.AbstractEventLoop) -> None:
        """Indexes the log's frames queued so far, commits ``batch`` (writer thread), then
        has the loop answer it at once; then goes on indexing the log's new frames as
        long as no other write waits and no checkpoint is due.

        Scheduled from here, the answers run in the loop's next pass, ahead of the
        batching task's wake-up (which the executor schedules after this returns): the
        callers of a batch do not wait a loop pass more for the next batch to be sent
        to this thread. Likewise, rounds of indexing follow each other without a loop
        pass between them."""
        logged = self._logged
        before = len(logged)  # the writes of the batch count on these
        while before > 0:
            before -= self._index_round(loop, before)
        if batch:
            self._commit_batch(batch)
            if self._log is not None:
                for op in batch:
                    if op.hold is not None:
                        op.learned = self._learn(op)
            loop.call_soon_threadsafe(self._resolve, batch)
        while logged and not self._pending and not self._checkpoint_due:
            self._index_round(loop, len(logged))

    def _index_round(self, loop: asyncio.AbstractEventLoop, most: int) -> int:
        """Indexes up to ``most`` of the log's queued frames (writer thread) in one
        transaction of at most ``batch_max`` messages (but at least one frame), and has
        the loop count them done; returns how many frames."""
        ops: list[_WriteOp] = []
        logged = self._logged
        total = 0
        while len(ops) < most and logged and (not ops or total + logged[0].size <= self.batch_max):
            op = logged.popleft()
            ops.append(op)
            total += op.size
        try:
            self._index(ops)
        except BaseException as exc:
            for op in ops:
                op.error = exc
            raise
        finally:
            loop.call_soon_threadsafe(self._resolve, ops)
        return len(ops)

    def _commit_batch(self, batch: list[_WriteOp]) -> None:
        """Runs ``batch`` in one transaction on the writer thread; fills each op's outcome."""
        conn = self._wconn
        assert conn is not None
        stats = self.stats
        started = time.monotonic()
        try:
            if not self._append_natively(batch):
                self._write_batch(conn, batch)
        except Exception as exc:
            self._rollback(conn)
            stats.rollbacks += 1
            if len(batch) > 1 and not self._is_unavailable(exc):
                # One write broke the transaction: give each its own, so only it fails.
                for op in batch:
                    op.result = op.error = None
                    self._commit_batch([op])
                return
            for op in batch:
                op.result = None
                op.error = self._translate(exc)
            return
        size = 0
        for op in batch:
            size += op.size
            if op.error is None:
                self._count_appends(op.result)
        self._committed(started, size)

    def _committed(self, started: float, size: int) -> None:
        """Counts a commit of ``size`` messages begun at ``started`` (writer thread), and
        asks for a checkpoint once the write-ahead log has grown past its bound."""
        stats = self.stats
        stats.last_batch_started = started
        stats.last_batch_finished = time.monotonic()
        stats.commits += 1
        stats.largest_batch = max(stats.largest_batch, size)
        if self._wal_frames() >= self.wal_checkpoint_pages:
            self._checkpoint_due = True

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_WriteOp]) -> None:
        """``batch`` in one transaction through the standard library's sqlite3."""
        conn.execute("BEGIN IMMEDIATE")
        run: list[_WriteOp] = []
        for op in batch:
            if op.run is None:  # an append, or appends (append_each_nowait)
                run.append(op)
                continue
            if run:
                self._append_run(conn, run)
                run = []
            self._run_op(conn, op)
        if run:
            self._append_run(conn, run)
        conn.execute("COMMIT")

    def _append_natively(self, batch: list[_WriteOp]) -> bool:
        """Writes a batch made of appends alone through the native appender, in one
        transaction of its own connection, and fills each op's result. False, having
        written nothing, when there is no appender, the batch holds other writes, or an
        append needs the Python path (a retry, an unknown conversation). Raises
        sqlite3.Error if the database failed the batch (nothing was written)."""
        appender = self._appender
        if appender is None:
            return False
        for op in batch:
            if op.run is not None:
                return False
        messages = _appended(batch)
        now = time.time()
        seqs = appender.append(messages, now)
        if seqs is None:
            return False
        _hand_out(batch, _appended_results(messages, seqs, now))
        return True

    def _count_appends(self, result: object) -> None:
        results: Iterable[object]
        if isinstance(result, AppendResult):
            results = (result,)
        elif isinstance(result, list):
            results = result
        else:
            return
        for item in results:
            if isinstance(item, AppendResult):
                if item.duplicate:
                    self.stats.duplicates += 1
                else:
                    self.stats.appended += 1

    @classmethod
    def _run_op(cls, conn: sqlite3.Connection, op: _WriteOp) -> None:
        run = op.run
        if run is None:
            if op.messages is not None:  # each succeeds or fails alone
                outcomes: list[AppendResult | StoreError] = []
                for m in op.messages:
                    try:
                        outcomes.append(cls._append_one(conn, m))
                    except StoreError as exc:
                        outcomes.append(exc)
                op.result = outcomes
                return
            message = op.message
            assert message is not None
            try:
                op.result = cls._append_one(conn, message)
            except StoreError as exc:
                op.error = exc
            return
        if not op.isolated:
            try:
                op.result = run(conn)
            except StoreError as exc:
                op.error = exc
            return
        conn.execute("SAVEPOINT op")
        try:
            op.result = run(conn)
        except StoreError as exc:
            conn.execute("ROLLBACK TO op")
            op.error = exc
        conn.execute("RELEASE op")

    def _append_run(self, conn: sqlite3.Connection, ops: list[_WriteOp]) -> None:
        """Writes consecutive appends (single ones and ``append_each_nowait``'s) with one seq
        update for all their conversations and one ``executemany``; falls back to one
        append at a time (same outcomes, in the same order) if any of them is a retry,
        names an unknown conversation or hits a taken seq."""
        if len(ops) == 1 and ops[0].message is not None:
            self._run_op(conn, ops[0])
            return
        messages = _appended(ops)
        counts = _count_by_conv(messages)
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        conn.execute("SAVEPOINT run")
        try:
            arg = "{" + ",".join([f'"{conv}":{n}' for conv, n in counts.items()]) + "}"
            seqs = dict(conn.execute(_ADD_SEQS, (arg,)).fetchall())
            if len(seqs) != len(counts):
                raise _Fallback  # an unknown conversation among them
            for conv, n in counts.items():
                seqs[conv] -= n
            for m in messages:
                conv = m.conv
                seq = seqs[conv] + 1
                seqs[conv] = seq
                append((conv, seq, m.sender, m.device, _cmid_to_db(m.cmid), m.body, m.kind, now))
            if conn.executemany(_INSERT_MESSAGE, rows).rowcount != len(rows):
                raise _Fallback  # a retry among them: it must get the original back
        except (_Fallback, sqlite3.IntegrityError):
            conn.execute("ROLLBACK TO run")
            conn.execute("RELEASE run")
            for op in ops:
                self._run_op(conn, op)
            return
        conn.execute("RELEASE run")
        _hand_out(ops, _appended_results(messages, [row[1] for row in rows], now))

    def _wal_frames(self) -> int:
        """The frames in the write-ahead log (writer thread; 0 if it cannot tell)."""
        shm = self._shm
        if shm is None:
            return self.wal_checkpoint_pages  # unknown: let a checkpoint find out
        try:
            header = os.pread(shm, 4, 16)
        except OSError:
            return 0
        return _WAL_MX_FRAME.unpack(header)[0] if len(header) == 4 else 0

    def _checkpoint_aside(self) -> None:
        """Step 1 of a checkpoint, on the checkpoint thread and its own connection."""
        try:
            conn = self._ckconn
            if conn is None:
                conn = self._ckconn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            log.warning("a checkpoint of %r failed", self.path, exc_info=True)
            return
        self.stats.checkpoints += 1

    def _checkpoint(self) -> bool:
        """Step 2 of a checkpoint (writer thread, between batches); True if it copied
        the whole write-ahead log into the database file."""
        conn = self._wconn
        if conn is None:
            return False
        restart = self._wal_frames() >= _WAL_RESTART_FACTOR * self.wal_checkpoint_pages
        mode = "RESTART" if restart else "PASSIVE"
        try:
            busy, frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            log.warning("a %s checkpoint of %r failed", mode, self.path, exc_info=True)
            return False
        self.stats.checkpoints += 1
        return bool(busy == 0 and frames == copied)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            # SQLite may have rolled back already (e.g. after an I/O error).
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    # -- the message log --------------------------------------------------------------

    def _log_appends(
        self,
        batch: list[NewMessage],
        callback: _AppendsDone,
    ) -> None:
        """``append_each_nowait`` with the message log (loop thread).

        A message whose conversation's last seq and sender's largest client message id
        are known here, with a larger id than that (so it cannot be a retry), takes the
        next seq at once; those of the call are written to the log as one frame and
        acknowledged when the write returns, and SQLite indexes them later. The others
        (the first message of a conversation or a sender since open, a possible retry,
        a conversation with such appends queued) are queued as before:
        their conversations are held (no log) until SQLite has answered and the caches
        have learned from it."""
        mlog = self._log
        assert mlog is not None
        seqs = self._seqs
        cmids = self._cmids
        held = self._held
        outcomes: list[AppendResult | StoreError | None] = [None] * len(batch)
        fast: list[NewMessage] = []
        fast_seqs: list[int] = []
        fast_at: list[int] = []
        slow: list[NewMessage] = []
        slow_at: list[int] = []
        for i, m in enumerate(batch):
            conv = m.conv
            if conv not in held:
                last = seqs.get(conv)
                if last is not None:
                    cmid = m.cmid
                    if cmid:
                        key = (m.sender, conv)
                        top = cmids.get(key)
                        if top is None or cmid <= top:
                            last = None
                        else:
                            cmids[key] = cmid
                    if last is not None:
                        seqs[conv] = last + 1
                        fast.append(m)
                        fast_seqs.append(last + 1)
                        fast_at.append(i)
                        continue
            slow.append(m)
            slow_at.append(i)
            held[conv] = held.get(conv, 0) + 1  # its later messages follow it
        answer = _Answer(callback, outcomes, bool(slow))
        if fast:
            now = time.time()
            try:
                segment = mlog.append(encode_frame(fast, fast_seqs, now))
            except OSError as exc:
                for m in fast:  # nothing of the frame is in the log: forget what it took
                    seqs.pop(m.conv, None)
                    cmids.pop((m.sender, m.conv), None)
                error = StoreUnavailableError(
                    f"the message log {mlog.directory!r} cannot be written ({exc}): free "
                    f"space on its volume; nothing was acknowledged, retry"
                )
                for i in fast_at:
                    outcomes[i] = error
            else:
                for m, seq, i in zip(fast, fast_seqs, fast_at, strict=True):
                    outcomes[i] = new_append_result(
                        new_stored_message(
                            m.conv, seq, m.sender, m.device, m.cmid, m.body, m.kind, now
                        ),
                        False,
                    )
                self._backlog += len(fast)
                self._logged_ops += 1
                self.stats.appended += len(fast)
                op = _WriteOp(None, None, len(fast), False, None, None)
                op.callback = partial(self._indexed, len(fast))
                op.index = _Logged(fast, fast_seqs, now, segment)
                self._logged.append(op)  # the writer thread takes it from there
                wakeup = self._wakeup
                assert wakeup is not None
                wakeup.set()
        if slow:
            op = _WriteOp(None, None, len(slow), False, None, None, messages=slow)
            op.callback = partial(self._slow_done, answer, slow_at, bool(fast))
            self._enqueue(self._hold(op, slow, counted=True))
        self._answers.append(answer)
        if not slow:
            self._answer_ready()  # at once: the caller's acknowledgements leave this pass

    def _hold(
        self, op: _WriteOp, messages: Sequence[NewMessage], *, counted: bool = False
    ) -> _WriteOp:
        """Marks ``op``, which appends ``messages`` with seqs taken in SQLite, as holding
        their conversations from the log until it is answered (no-op without a log).
        ``counted``: the caller has added them to ``_held`` already."""
        if self._log is not None:
            op.hold = _count_by_conv(messages)
            op.keys = {(m.sender, m.conv) for m in messages}
            if not counted:
                held = self._held
                for conv, n in op.hold.items():
                    held[conv] = held.get(conv, 0) + n
        return op

    def _learn(self, op: _WriteOp) -> _Learned | None:
        """The caches' values for a ``hold`` op's conversations and senders, read after
        it committed (writer thread: no write can come in between); None if the read
        failed (the caches then forget them)."""
        conn = self._wconn
        assert conn is not None
        assert op.hold is not None
        assert op.keys is not None
        seqs: dict[int, int] = {}
        try:
            for conv in op.hold:
                row = conn.execute(_LAST_SEQ, (conv,)).fetchone()
                if row is not None:
                    seqs[conv] = row[0]
            cmids = {(sender, conv): _max_cmid(conn, sender, conv) for sender, conv in op.keys}
        except sqlite3.Error:
            log.warning("reading back the seqs of a write to %r failed", self.path, exc_info=True)
            return None
        return _Learned(seqs, cmids)

    def _release(self, op: _WriteOp) -> None:
        """A ``hold`` op was answered: the conversations it was the last hold of may use
        the log again, with what it learned (loop thread)."""
        assert op.hold is not None
        assert op.keys is not None
        held = self._held
        seqs = self._seqs
        cmids = self._cmids
        learned = op.learned
        for conv, n in op.hold.items():
            left = held[conv] - n
            if left:
                held[conv] = left
                continue
            del held[conv]
            if learned is not None and conv in learned.seqs:
                if len(seqs) >= self.log_cache_entries:
                    seqs.clear()  # a bound on memory: the next message of each relearns
                seqs[conv] = learned.seqs[conv]
            else:
                seqs.pop(conv, None)
        for key in op.keys:
            if key[1] in held:
                continue  # the last hold of it learns
            if learned is not None and key in learned.cmids:
                if len(cmids) >= self.log_cache_entries:
                    cmids.clear()
                cmids[key] = learned.cmids[key]
            else:
                cmids.pop(key, None)

    def _slow_done(
        self,
        answer: _Answer,
        positions: list[int],
        mixed: bool,
        result: list[AppendResult | StoreError] | None,
        error: BaseException | None,
    ) -> None:
        """The queued part of an ``append_each_nowait`` call was answered."""
        outcomes = answer.outcomes
        if result is not None:
            for i, outcome in zip(positions, result, strict=True):
                outcomes[i] = outcome
        elif mixed:  # the log's part was stored: fail the rest one by one
            failed = error if isinstance(error, StoreError) else StoreUnavailableError(str(error))
            for i in positions:
                outcomes[i] = failed
        else:
            answer.error = error
        answer.waiting = False
        self._answer_ready()

    def _answer_ready(self) -> None:
        """Answers the ``append_each_nowait`` calls that are done, in call order."""
        answers = self._answers
        while answers and not answers[0].waiting:
            answer = answers.popleft()
            try:
                if answer.error is not None:
                    answer.callback(None, answer.error)
                else:
                    answer.callback(cast(list[AppendResult | StoreError], answer.outcomes), None)
            except Exception:
                log.exception("a write's completion callback failed")

    def _index(self, ops: list[_WriteOp]) -> None:
        """Inserts the log's messages of ``ops`` into SQLite in one transaction (writer
        thread). A failure of the database is retried until it passes: the writes
        queued behind count on these rows. Once the store is closing, it gives up and
        leaves them in the log, which the next open replays."""
        conn = self._wconn
        assert conn is not None
        messages: list[NewMessage] = []
        seqs: list[int] = []
        stamps: list[float] = []
        for op in ops:
            logged = op.index
            assert logged is not None
            messages += logged.messages
            seqs += logged.seqs
            stamps += [logged.now] * len(logged.seqs)
        appender = self._appender
        delay = _INDEX_RETRY_FIRST
        while True:
            started = time.monotonic()
            try:
                if appender is None or not appender.index(messages, seqs, stamps):
                    self._index_in_python(conn, messages, seqs, stamps)
                break
            except sqlite3.Error as exc:
                self._rollback(conn)
                self.stats.rollbacks += 1
                if self._state != "open":
                    log.error(
                        "indexing %d logged messages into %r failed while closing (%s): "
                        "they stay in the message log, and the next open stores them",
                        len(messages),
                        self.path,
                        exc,
                    )
                    for op in ops:
                        op.error = self._translate(exc)
                    return
                log.warning(
                    "indexing %d logged messages into %r failed (%s): retrying in %.2f s",
                    len(messages),
                    self.path,
                    exc,
                    delay,
                )
                time.sleep(delay)
                delay = min(2 * delay, _INDEX_RETRY_MAX)
        self._committed(started, len(messages))
        self._indexed_segment = cast(_Logged, ops[-1].index).segment

    def _index_in_python(
        self,
        conn: sqlite3.Connection,
        messages: list[NewMessage],
        seqs: list[int],
        stamps: list[float],
    ) -> None:
        rows = [
            (m.conv, seq, m.sender, m.device, _cmid_to_db(m.cmid), m.body, m.kind, now)
            for m, seq, now in zip(messages, seqs, stamps, strict=True)
        ]
        tops = {m.conv: seq for m, seq in zip(messages, seqs, strict=True)}
        _insert_indexed(conn, rows, tops, f"indexing the message log of {self.path!r}")

    def _indexed(self, count: int, _result: object, error: BaseException | None) -> None:
        """A frame's messages are in SQLite (or stay in the log, on ``error``)."""
        self._backlog -= count
        self._indexed_ops += 1
        if error is not None:
            self._index_failed = True
        parked = self._parked
        while parked and self._backlog < self.log_backlog_max:
            batch, callback = parked.popleft()
            self._log_appends(batch, callback)
        waiting = self._catch_up
        if waiting:
            done = self._indexed_ops
            self._catch_up = [(target, f) for target, f in waiting if target > done]
            for target, f in waiting:
                if target <= done and not f.done():
                    f.set_result(None)

    # -- the read path ----------------------------------------------------------------

    async def _read(self, run: Callable[[sqlite3.Connection], _T]) -> _T:
        loop = self._loop_or_raise()
        if self._indexed_ops < self._logged_ops:
            # Acknowledged messages are visible to every read started after: wait until
            # SQLite holds those the log took before this read.
            future: asyncio.Future[None] = loop.create_future()
            self._catch_up.append((self._logged_ops, future))
            await future
        pool = self._reader_pool
        assert pool is not None
        return await loop.run_in_executor(pool, self._run_read, run)

    def _run_read(self, run: Callable[[sqlite3.Connection], _T]) -> _T:
        readers = self._readers
        conn: sqlite3.Connection | None = getattr(readers.local, "conn", None)
        try:
            if conn is None:
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout_ms / 1000,
                    isolation_level=None,
                    check_same_thread=False,
                )
                with readers.lock:
                    readers.connections.append(conn)
                readers.local.conn = conn
                conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
                conn.execute("PRAGMA query_only = ON")
            return run(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                self._rollback(conn)
            raise self._translate(exc) from exc

    # -- messages ---------------------------------------------------------------------

    async def append(
        self,
        conv: int,
        sender: str,
        device: str,
        cmid: int,
        body: bytes,
        kind: str = DEFAULT_KIND,
    ) -> AppendResult:
        """Stores a message under its conversation's next seq; see :meth:`Store.append`.

        Appends queued together are committed in one transaction (group commit); this
        returns after that transaction committed.
        """
        message = NewMessage(conv, sender, device, cmid, body, kind).validated()
        loop = self._loop_or_raise()
        self._check_appends_allowed()
        future: asyncio.Future[AppendResult] = loop.create_future()
        op = _WriteOp(None, future, 1, False, message=message)
        self._enqueue(self._hold(op, (message,)))
        return await future

    def append_each_nowait(
        self,
        messages: Sequence[NewMessage],
        callback: _AppendsDone,
    ) -> None:
        """Queues each of ``messages`` as its own append, without a coroutine or a future
        per message: the node's hot path. Once they are durable, ``callback`` is called on
        the loop, once, with ``(outcomes, None)``: per message, in order, its
        :class:`AppendResult` (a retry is a duplicate carrying the original, as with
        :meth:`append`) or the :class:`StoreError` it alone failed with (an unknown
        conversation, a log that cannot be written). If the database failed a call none
        of whose messages went to the message log, ``(None, error)``: nothing of it was
        written. Callbacks run in the order of the calls.

        Durable means: in the message log, when the log took them all (see the module
        documentation), and then the callback runs before this method returns; else
        committed to SQLite, in one transaction: more than ``batch_max`` of them make a
        transaction of their own, over the cap, so callers keep to it. An invalid
        message, none at all, the wrong loop, a closed store or a store whose log another
        process owns raise here, and nothing is queued."""
        batch = [message.validated() for message in messages]
        self._loop_or_raise()
        if not batch:
            raise StoreArgumentError("messages", "no messages to append")
        self._check_appends_allowed()
        if self._log is not None:
            if self._parked or self._backlog >= self.log_backlog_max:
                self._parked.append((batch, callback))  # until SQLite has caught up
            else:
                self._log_appends(batch, callback)
            return
        self._enqueue(_WriteOp(None, None, len(batch), False, None, None, callback, None, batch))

    async def append_many(self, messages: Sequence[NewMessage]) -> list[AppendResult]:
        """Appends ``messages`` all-or-nothing; see :meth:`Store.append_many`."""
        batch = [message.validated() for message in messages]
        if not batch:
            self._loop_or_raise()
            return []

        def run(conn: sqlite3.Connection) -> list[AppendResult]:
            return [self._append_one(conn, message) for message in batch]

        loop = self._loop_or_raise()
        self._check_appends_allowed()
        future: asyncio.Future[list[AppendResult]] = loop.create_future()
        self._enqueue(self._hold(_WriteOp(run, future, len(batch), True), batch))
        return await future

    @staticmethod
    def _append_one(conn: sqlite3.Connection, m: NewMessage) -> AppendResult:
        # Raises a StoreError only before writing (see _WriteOp), so appends need no
        # savepoint of their own.
        row = conn.execute(_NEXT_SEQ, (m.conv,)).fetchall()
        if not row:
            raise ConversationNotFoundError(m.conv)
        seq: int = row[0][0]
        cmid = _cmid_to_db(m.cmid)
        now = time.time()
        try:
            inserted = conn.execute(
                _INSERT_MESSAGE, (m.conv, seq, m.sender, m.device, cmid, m.body, m.kind, now)
            ).rowcount
        except sqlite3.IntegrityError as exc:
            if "messages.seq" in str(exc):
                raise _SeqTaken(m.conv, seq) from exc
            raise
        if inserted:
            return AppendResult(
                StoredMessage(m.conv, seq, m.sender, m.device, m.cmid, m.body, m.kind, now),
                False,
            )
        # A retry: give the number back and answer with the original message.
        conn.execute(_GIVE_BACK_SEQ, (m.conv,))
        original = conn.execute(_ORIGINAL_MESSAGE, (m.sender, m.conv, cmid)).fetchone()
        return AppendResult(_message_from_row(original), True)

    async def history(self, conv: int, after_seq: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` messages after ``after_seq``, oldest first."""
        check_id("conv", conv)
        check_seq("after_seq", after_seq)
        check_limit(limit)

        def run(conn: sqlite3.Connection) -> list[StoredMessage]:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conv = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (conv, after_seq, limit),
            ).fetchall()
            if not rows:
                _last_seq(conn, conv)  # raises if the conversation does not exist
            return [_message_from_row(row) for row in rows]

        return await self._read(run)

    async def history_before(self, conv: int, before_seq: int, limit: int) -> list[StoredMessage]:
        """The ``limit`` newest messages before ``before_seq``, returned oldest first."""
        check_id("conv", conv)
        check_seq("before_seq", before_seq)
        check_limit(limit)

        def run(conn: sqlite3.Connection) -> list[StoredMessage]:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conv = ? AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                (conv, before_seq, limit),
            ).fetchall()
            if not rows:
                _last_seq(conn, conv)
            return [_message_from_row(row) for row in reversed(rows)]

        return await self._read(run)

    async def last_seq(self, conv: int) -> int:
        """The conversation's newest sequence number (0 before its first message)."""
        check_id("conv", conv)
        return await self._read(lambda conn: _last_seq(conn, conv))

    # -- conversations ----------------------------------------------------------------

    async def conversation(self, conv: int) -> Conversation:
        """The conversation ``conv``."""
        check_id("conv", conv)
        return await self._read(lambda conn: _conversation(conn, conv))

    async def create_direct(self, user_a: str, user_b: str) -> Conversation:
        """The pair's direct conversation, created on first use (idempotent, any order)."""
        check_user("user_a", user_a)
        check_user("user_b", user_b)
        low, high = sorted((user_a, user_b))

        def run(conn: sqlite3.Connection) -> Conversation:
            row = conn.execute(
                "SELECT conv FROM direct_pairs WHERE user_lo = ? AND user_hi = ?", (low, high)
            ).fetchone()
            if row is not None:
                return _conversation(conn, row[0])
            created = _insert_conversation(conn, "direct", "")
            conn.execute(
                "INSERT INTO direct_pairs (user_lo, user_hi, conv) VALUES (?, ?, ?)",
                (low, high, created.id),
            )
            conn.executemany(
                "INSERT INTO members (conv, user, role, joined_seq) VALUES (?, ?, 'member', 0)",
                [(created.id, user) for user in dict.fromkeys((low, high))],
            )
            return created

        return await self._submit(run)

    async def create_group(self, owner: str, title: str, members: Iterable[str]) -> Conversation:
        """A new group owned by ``owner`` with ``members`` (duplicates ignored)."""
        check_user("owner", owner)
        _check_title(title)
        others = [check_user("members", user) for user in dict.fromkeys(members)]
        others = [user for user in others if user != owner]

        def run(conn: sqlite3.Connection) -> Conversation:
            created = _insert_conversation(conn, "group", title)
            conn.execute(
                "INSERT INTO members (conv, user, role, joined_seq) VALUES (?, ?, 'owner', 0)",
                (created.id, owner),
            )
            conn.executemany(
                "INSERT INTO members (conv, user, role, joined_seq) VALUES (?, ?, 'member', 0)",
                [(created.id, user) for user in others],
            )
            return created

        return await self._submit(run)

    async def rename(self, conv: int, title: str) -> Conversation:
        """Sets a group's title; a direct conversation raises ConversationKindError."""
        check_id("conv", conv)
        _check_title(title)

        def run(conn: sqlite3.Connection) -> Conversation:
            current = _group(conn, conv, "rename")
            conn.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conv))
            return Conversation(conv, current.kind, title, current.created_at)

        return await self._submit(run)

    async def add_members(
        self, conv: int, users: Iterable[str], role: Role = "member"
    ) -> list[Member]:
        """Adds users to a group with ``role``; returns the memberships created."""
        check_id("conv", conv)
        checked_role = check_role(role)
        wanted = [check_user("users", user) for user in dict.fromkeys(users)]

        def run(conn: sqlite3.Connection) -> list[Member]:
            _group(conn, conv, "add_members")
            joined = _last_seq(conn, conv)
            added: list[Member] = []
            for user in wanted:
                cursor = conn.execute(
                    "INSERT INTO members (conv, user, role, joined_seq) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (conv, user) DO NOTHING",
                    (conv, user, checked_role, joined),
                )
                if cursor.rowcount:
                    added.append(Member(conv, user, checked_role, joined))
            return added

        return await self._submit(run)

    async def remove_member(self, conv: int, user: str) -> None:
        """Removes ``user`` from a group; raises NotAMemberError if they are not in it."""
        check_id("conv", conv)
        check_user("user", user)

        def run(conn: sqlite3.Connection) -> None:
            _group(conn, conv, "remove_member")
            deleted = conn.execute(
                "DELETE FROM members WHERE conv = ? AND user = ?", (conv, user)
            ).rowcount
            if not deleted:
                raise NotAMemberError(conv, user)

        await self._submit(run)

    async def set_role(self, conv: int, user: str, role: Role) -> Member:
        """Sets a group member's role; returns the updated membership."""
        check_id("conv", conv)
        check_user("user", user)
        checked_role = check_role(role)

        def run(conn: sqlite3.Connection) -> Member:
            _group(conn, conv, "set_role")
            row = conn.execute(
                "UPDATE members SET role = ? WHERE conv = ? AND user = ? RETURNING joined_seq",
                (checked_role, conv, user),
            ).fetchall()
            if not row:
                raise NotAMemberError(conv, user)
            return Member(conv, user, checked_role, row[0][0])

        return await self._submit(run)

    async def members(self, conv: int) -> list[Member]:
        """The conversation's members, ordered by user id."""
        check_id("conv", conv)

        def run(conn: sqlite3.Connection) -> list[Member]:
            rows = conn.execute(
                "SELECT user, role, joined_seq FROM members WHERE conv = ? ORDER BY user",
                (conv,),
            ).fetchall()
            if not rows:
                _last_seq(conn, conv)
            return [Member(conv, user, role, joined) for user, role, joined in rows]

        return await self._read(run)

    async def conversations_of(self, user: str) -> list[int]:
        """The ids of ``user``'s conversations, ascending."""
        check_user("user", user)

        def run(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute(
                "SELECT conv FROM members WHERE user = ? ORDER BY conv", (user,)
            ).fetchall()
            return [conv for (conv,) in rows]

        return await self._read(run)

    async def count_groups_of(self, user: str) -> int:
        """How many groups ``user`` is a member of."""
        check_user("user", user)

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(*) FROM members JOIN conversations ON conversations.id = "
                "members.conv WHERE members.user = ? AND conversations.kind = 'group'",
                (user,),
            ).fetchone()
            return int(row[0])

        return await self._read(run)

    # -- cursors and read marks -------------------------------------------------------

    async def set_cursor(self, user: str, device: str, conv: int, seq: int) -> int:
        """Moves a device's cursor forward (never back); returns the stored cursor."""
        check_user("user", user)
        _check_device(device)
        check_id("conv", conv)
        check_seq("seq", seq)

        def run(conn: sqlite3.Connection) -> int:
            _check_not_past_end(conn, conv, seq)
            row = conn.execute(
                "INSERT INTO cursors (user, device, conv, seq) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user, device, conv) DO UPDATE SET seq = MAX(seq, excluded.seq) "
                "RETURNING seq",
                (user, device, conv, seq),
            ).fetchall()
            return int(row[0][0])

        return await self._submit(run, isolated=False)

    async def cursors(self, user: str, device: str) -> dict[int, int]:
        """The device's cursors: conversation id -> last delivered seq."""
        check_user("user", user)
        _check_device(device)

        def run(conn: sqlite3.Connection) -> dict[int, int]:
            rows = conn.execute(
                "SELECT conv, seq FROM cursors WHERE user = ? AND device = ?", (user, device)
            ).fetchall()
            return dict(rows)

        return await self._read(run)

    async def mark_read(self, conv: int, user: str, seq: int) -> int:
        """Moves the user's read mark forward (never back); returns the stored mark."""
        check_id("conv", conv)
        check_user("user", user)
        check_seq("seq", seq)

        def run(conn: sqlite3.Connection) -> int:
            _check_not_past_end(conn, conv, seq)
            row = conn.execute(
                "INSERT INTO read_marks (conv, user, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (conv, user) DO UPDATE SET seq = MAX(seq, excluded.seq) "
                "RETURNING seq",
                (conv, user, seq),
            ).fetchall()
            return int(row[0][0])

        return await self._submit(run, isolated=False)

    async def read_seq(self, conv: int, user: str) -> int:
        """The user's read mark in ``conv`` (0 if none)."""
        check_id("conv", conv)
        check_user("user", user)

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT seq FROM read_marks WHERE conv = ? AND user = ?", (conv, user)
            ).fetchone()
            if row is None:
                _last_seq(conn, conv)
                return 0
            return int(row[0])

        return await self._read(run)

    # -- users' data ------------------------------------------------------------------

    async def export_user(self, user: str) -> dict[str, Any]:
        """Everything stored about ``user``, read in one consistent snapshot.

        The result is JSON-ready: ``memberships``, ``messages`` (the messages they sent,
        bodies base64-encoded under ``body_base64``), ``cursors`` and ``read_marks``.
        """
        check_user("user", user)

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            conn.execute("BEGIN")
            try:
                memberships = conn.execute(
                    "SELECT members.conv, conversations.kind, conversations.title, "
                    "members.role, members.joined_seq FROM members JOIN conversations "
                    "ON conversations.id = members.conv WHERE members.user = ? "
                    "ORDER BY members.conv",
                    (user,),
                ).fetchall()
                messages = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE sender = ? ORDER BY conv, seq",
                    (user,),
                ).fetchall()
                cursors = conn.execute(
                    "SELECT device, conv, seq FROM cursors WHERE user = ? ORDER BY device, conv",
                    (user,),
                ).fetchall()
                marks = conn.execute(
                    "SELECT conv, seq FROM read_marks WHERE user = ? ORDER BY conv", (user,)
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            return {
                "format": EXPORT_FORMAT,
                "user": user,
                "exported_at": time.time(),
                "memberships": [
                    {"conv": c, "kind": k, "title": t, "role": r, "joined_seq": j}
                    for c, k, t, r, j in memberships
                ],
                "messages": [_exported_message(_message_from_row(row)) for row in messages],
                "cursors": [{"device": d, "conv": c, "seq": s} for d, c, s in cursors],
                "read_marks": [{"conv": c, "seq": s} for c, s in marks],
            }

        return await self._read(run)

    async def erase_user(self, user: str) -> ErasureResult:
        """Erases ``user``'s data; see :meth:`Store.erase_user`.

        Erased bodies are overwritten with zeros in the database file (``secure_delete``
        for this transaction), and the WAL is then checkpointed and truncated when no
        reader holds it, so the old bodies do not linger in it either (best effort).
        The message log's segments written before the erasure are removed then too
        (same condition; otherwise at a later checkpoint).
        """
        check_user("user", user)

        def run(conn: sqlite3.Connection) -> ErasureResult:
            # Some builds default to secure_delete on, some off: force it for this
            # transaction and restore the connection's setting afterwards.
            previous = int(conn.execute("PRAGMA secure_delete").fetchone()[0])
            conn.execute("PRAGMA secure_delete = ON")
            try:
                messages = conn.execute(
                    "UPDATE messages SET body = x'', device = '', kind = ? "
                    "WHERE sender = ? AND kind != ?",
                    (ERASED_KIND, user, ERASED_KIND),
                ).rowcount
                memberships = conn.execute("DELETE FROM members WHERE user = ?", (user,)).rowcount
                cursors = conn.execute("DELETE FROM cursors WHERE user = ?", (user,)).rowcount
                marks = conn.execute("DELETE FROM read_marks WHERE user = ?", (user,)).rowcount
                conn.execute(
                    "DELETE FROM direct_pairs WHERE user_lo = ? OR user_hi = ?", (user, user)
                )
            finally:
                conn.execute(f"PRAGMA secure_delete = {previous}")
            return ErasureResult(messages, memberships, cursors, marks)

        mlog = self._log
        ended = 0
        if mlog is not None:
            # The user's messages the log holds are all in segments before ``ended``,
            # which this erasure is queued behind: once SQLite's copy is erased and the
            # database file has all of it, those segments go.
            try:
                mlog.rotate()
            except OSError as exc:
                raise StoreUnavailableError(
                    f"the message log {mlog.directory!r} cannot be synced ({exc}); retry"
                ) from exc
            ended = mlog.current
        result = await self._submit(run)
        writer = self._writer
        loop = self._loop
        if writer is not None and loop is not None and self._state == "open":
            copied = await loop.run_in_executor(writer, self._truncate_wal)
            if copied and mlog is not None and self._log is mlog:
                mlog.release(ended)
        return result

    async def disabled_users(self) -> dict[str, str]:
        """The disabled users and their reasons; see :meth:`Store.disabled_users`."""

        def run(conn: sqlite3.Connection) -> dict[str, str]:
            return dict(conn.execute("SELECT user, reason FROM disabled_users").fetchall())

        return await self._read(run)

    async def set_user_disabled(self, user: str, disabled: bool, reason: str = "") -> bool:
        """Disables or enables ``user``; see :meth:`Store.set_user_disabled`."""
        check_user("user", user)

        def run(conn: sqlite3.Connection) -> bool:
            if not disabled:
                sql = "DELETE FROM disabled_users WHERE user = ?"
                return bool(conn.execute(sql, (user,)).rowcount)
            return bool(
                conn.execute(
                    "INSERT INTO disabled_users (user, since, reason) VALUES (?, ?, ?) "
                    "ON CONFLICT (user) DO NOTHING",
                    (user, time.time(), reason),
                ).rowcount
            )

        return await self._submit(run)

    def _truncate_wal(self) -> bool:
        """Checkpoints the whole write-ahead log and empties it (writer thread); True if
        every frame reached the database file. Best effort: a later checkpoint
        overwrites the frames anyway."""
        conn = self._wconn
        if conn is None:
            return False
        try:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        return bool(busy == 0 and frames == copied)


# -- helpers that run on a store thread inside a transaction ---------------------------


def replay_log(conn: sqlite3.Connection, messages: Iterable[StoredMessage]) -> int:
    """Inserts the message log's ``messages`` that the database on ``conn`` lacks, in one
    transaction; returns how many. The log is indexed in order, so those are the ones
    past their conversation's ``last_seq``; each must be the next seq of its
    conversation. One that is not follows a message lost with an unsynced segment (a
    power loss, which ``synchronous=NORMAL`` does not survive): it and the rest of its
    conversation are left out, so seqs stay gap-free."""
    last: dict[int, int | None] = {}
    rows: list[tuple[Any, ...]] = []
    tops: dict[int, int] = {}
    gaps: dict[int, int] = {}
    for m in messages:
        conv = m.conv
        if conv not in last:
            row = conn.execute(_LAST_SEQ, (conv,)).fetchone()
            last[conv] = None if row is None else row[0]
        known = last[conv]
        if known is None:
            log.error("the message log holds a message of unknown conversation %d", conv)
            continue
        if m.seq <= known:
            continue  # indexed before the log ended
        if m.seq != known + 1 or conv in gaps:
            gaps.setdefault(conv, known)
            continue
        rows.append(
            (conv, m.seq, m.sender, m.device, _cmid_to_db(m.cmid), m.body, m.kind, m.created_at)
        )
        last[conv] = tops[conv] = m.seq
    for conv, known in gaps.items():
        log.error(
            "the message log lost messages of conversation %d after seq %d (a power loss "
            "before its segment reached the disk): the later ones are left out",
            conv,
            known,
        )
    if rows:
        _insert_indexed(conn, rows, tops, "replaying the message log")
    return len(rows)


def _insert_indexed(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]], tops: dict[int, int], what: str
) -> None:
    """Inserts rows whose seqs the message log gave, and raises each conversation's
    ``last_seq`` to its top seq, in one transaction. Raises sqlite3.Error with the
    transaction still open if the database failed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INDEX_MESSAGE, rows)
    except sqlite3.IntegrityError:
        # Only another writer of this file (which the log's lock rules out for stores)
        # can have taken these seqs or ids; keep what can be kept, loudly.
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        kept = conn.executemany(_INDEX_MESSAGE_OR_IGNORE, rows).rowcount
        log.error(
            "%s: %d acknowledged messages clash with rows another writer put in the "
            "database (same conversation and seq, or same sender and client message id) "
            "and were not stored",
            what,
            len(rows) - kept,
        )
    conn.executemany(_RAISE_LAST_SEQ, [(seq, conv, seq) for conv, seq in tops.items()])
    conn.execute("COMMIT")


def _count_by_conv(messages: Iterable[NewMessage]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for m in messages:
        counts[m.conv] = counts.get(m.conv, 0) + 1
    return counts


def _max_cmid(conn: sqlite3.Connection, sender: str, conv: int) -> int:
    """The largest (unsigned) client message id ``sender`` has stored in ``conv``; 0 if
    none."""
    folded, plain = conn.execute(_MAX_CMIDS, (sender, conv)).fetchone()
    if folded is not None:
        return int(folded) + _U64
    return 0 if plain is None else int(plain)


def _last_seq(conn: sqlite3.Connection, conv: int) -> int:
    row = conn.execute(_LAST_SEQ, (conv,)).fetchone()
    if row is None:
        raise ConversationNotFoundError(conv)
    return int(row[0])


def _conversation(conn: sqlite3.Connection, conv: int) -> Conversation:
    row = conn.execute(
        "SELECT kind, title, created_at FROM conversations WHERE id = ?", (conv,)
    ).fetchone()
    if row is None:
        raise ConversationNotFoundError(conv)
    kind, title, created_at = row
    return Conversation(conv, cast(ConversationKind, kind), title, created_at)


def _group(conn: sqlite3.Connection, conv: int, operation: str) -> Conversation:
    found = _conversation(conn, conv)
    if found.kind != "group":
        raise ConversationKindError(conv, found.kind, operation)
    return found


def _insert_conversation(
    conn: sqlite3.Connection, kind: ConversationKind, title: str
) -> Conversation:
    now = time.time()
    row = conn.execute(
        "INSERT INTO conversations (kind, title, created_at) VALUES (?, ?, ?) RETURNING id",
        (kind, title, now),
    ).fetchall()
    return Conversation(int(row[0][0]), kind, title, now)


def _check_not_past_end(conn: sqlite3.Connection, conv: int, seq: int) -> None:
    last = _last_seq(conn, conv)
    if seq > last:
        raise StoreArgumentError(
            "seq",
            f"seq {seq} is past the last message ({last}) of conversation {conv}: a cursor "
            f"or read mark can only point at a stored message",
        )


def _check_title(title: str) -> None:
    if not isinstance(title, str):
        raise StoreArgumentError("title", f"title must be a str, got {type(title).__name__}")


def _check_device(device: str) -> None:
    if not isinstance(device, str):
        raise StoreArgumentError("device", f"device must be a str, got {device!r:.60}")


def _exported_message(message: StoredMessage) -> dict[str, Any]:
    return {
        "conv": message.conv,
        "seq": message.seq,
        "device": message.device,
        "cmid": message.cmid,
        "kind": message.kind,
        "created_at": message.created_at,
        "body_base64": base64.b64encode(message.body).decode("ascii"),
    }
