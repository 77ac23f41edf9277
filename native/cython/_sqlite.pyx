# cython: language_level=3, boundscheck=False, wraparound=False
"""The store's native appender: a batch of appends written through SQLite's C API in
one transaction, with the GIL released once for all of it (``bluewren.store.sqlite``).

It runs on the store's writer thread, on a connection of its own to the same file, for
batches made of appends alone, and does what the store's Python path does for them:
``BEGIN IMMEDIATE``, each conversation's seqs reserved with one ``UPDATE ... RETURNING``,
every row inserted, ``COMMIT``. Anything but the plain case (a retry, an unknown
conversation, a taken seq, any constraint) rolls the transaction back and returns None:
the store then writes the batch in Python, which gives each append its own outcome.
A failure of the database raises ``sqlite3.OperationalError`` carrying the
``sqlite_errorcode`` and ``sqlite_errorname`` the standard library would give.

``Appender.index`` inserts messages the store's message log has already given their
seqs (``bluewren.store.msglog``), and raises each conversation's ``last_seq`` to match,
in one transaction with the GIL released likewise; a clash with a stored row writes
nothing and returns False, for the store's Python path to sort out.

Two copies of SQLite in one process would not see each other's file locks, so this
module links the same shared library as the standard library's ``sqlite3``, and
``Appender.soft_heap_limit`` lets the store check that they are one copy before it
writes through both.
"""

import sqlite3 as pysqlite
import zlib

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "sqlite3.h" nogil:
    ctypedef struct sqlite3
    ctypedef struct sqlite3_stmt
    int sqlite3_open_v2(const char *filename, sqlite3 **db, int flags, const char *vfs)
    int sqlite3_close_v2(sqlite3 *db)
    int sqlite3_exec(sqlite3 *db, const char *sql, void *callback, void *arg, char **errmsg)
    int sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **stmt,
                           const char **tail)
    int sqlite3_finalize(sqlite3_stmt *stmt)
    int sqlite3_bind_int64(sqlite3_stmt *stmt, int i, int64_t value)
    int sqlite3_bind_double(sqlite3_stmt *stmt, int i, double value)
    int sqlite3_bind_text(sqlite3_stmt *stmt, int i, const char *text, int n,
                          void (*destructor)(void *) noexcept nogil)
    int sqlite3_bind_blob(sqlite3_stmt *stmt, int i, const void *data, int n,
                          void (*destructor)(void *) noexcept nogil)
    int sqlite3_bind_null(sqlite3_stmt *stmt, int i)
    int sqlite3_step(sqlite3_stmt *stmt)
    int sqlite3_reset(sqlite3_stmt *stmt)
    int64_t sqlite3_column_int64(sqlite3_stmt *stmt, int col)
    int sqlite3_changes(sqlite3 *db)
    int sqlite3_get_autocommit(sqlite3 *db)
    int sqlite3_extended_errcode(sqlite3 *db)
    int sqlite3_extended_result_codes(sqlite3 *db, int onoff)
    const char *sqlite3_errmsg(sqlite3 *db)
    const char *sqlite3_errstr(int code)
    int64_t sqlite3_soft_heap_limit64(int64_t limit)
    int SQLITE_OK
    int SQLITE_ROW
    int SQLITE_DONE
    int SQLITE_CONSTRAINT
    int SQLITE_OPEN_READWRITE

cdef extern from *:
    """
    #define BW_SQLITE_STATIC ((void (*)(void *))0)
    """
    void (*BW_SQLITE_STATIC)(void *) noexcept nogil

_INSERT = (
    b"INSERT INTO messages (conv, seq, sender, device, cmid, body, kind, created_at) "
    b"VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sender, conv, cmid) DO NOTHING"
)
_RESERVE = b"UPDATE conversations SET last_seq = last_seq + ? WHERE id = ? RETURNING last_seq"
_INDEX = (
    b"INSERT INTO messages (conv, seq, sender, device, cmid, body, kind, created_at) "
    b"VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_RAISE = b"UPDATE conversations SET last_seq = ?1 WHERE id = ?2 AND last_seq < ?1"

# The names the standard library gives SQLite's primary result codes.
_NAMES = {
    1: "SQLITE_ERROR", 2: "SQLITE_INTERNAL", 3: "SQLITE_PERM", 4: "SQLITE_ABORT",
    5: "SQLITE_BUSY", 6: "SQLITE_LOCKED", 7: "SQLITE_NOMEM", 8: "SQLITE_READONLY",
    9: "SQLITE_INTERRUPT", 10: "SQLITE_IOERR", 11: "SQLITE_CORRUPT", 12: "SQLITE_NOTFOUND",
    13: "SQLITE_FULL", 14: "SQLITE_CANTOPEN", 15: "SQLITE_PROTOCOL", 16: "SQLITE_EMPTY",
    17: "SQLITE_SCHEMA", 18: "SQLITE_TOOBIG", 19: "SQLITE_CONSTRAINT", 20: "SQLITE_MISMATCH",
    21: "SQLITE_MISUSE", 22: "SQLITE_NOLFS", 23: "SQLITE_AUTH", 24: "SQLITE_FORMAT",
    25: "SQLITE_RANGE", 26: "SQLITE_NOTADB",
}

cdef struct Row:
    int64_t conv
    int64_t seq
    int64_t cmid
    bint has_cmid
    Py_ssize_t slot
    const char *sender
    Py_ssize_t sender_n
    const char *device
    Py_ssize_t device_n
    const char *body
    Py_ssize_t body_n
    const char *kind
    Py_ssize_t kind_n
    double stamp

# What a batch came to, inside the GIL-free part.
cdef enum:
    WRITTEN = 0
    FALLBACK = 1
    FAILED = 2


cdef enum:
    _FRAME_HEADER = 12  # magic, payload length, crc32
    _RECORD_HEADER = 48  # conv, seq, cmid, created_at, and four lengths


cdef inline char *_put_u64(char *at, uint64_t value) noexcept:
    cdef int k
    for k in range(8):
        at[k] = <char>(value >> (8 * k))
    return at + 8


cdef inline char *_put_u32(char *at, uint32_t value) noexcept:
    cdef int k
    for k in range(4):
        at[k] = <char>(value >> (8 * k))
    return at + 4


cdef inline char *_put(char *at, const char *data, Py_ssize_t n) noexcept:
    memcpy(at, data, n)
    return at + n


def encode_frame(list messages, list seqs, double now):
    """The message log's frame holding ``messages`` under ``seqs``, stamped ``now``:
    what ``bluewren.store.msglog.encode_frame`` returns, built without a Python object
    per field (see that module for the layout)."""
    cdef Py_ssize_t n = len(messages)
    if len(seqs) != n:
        raise ValueError("messages and seqs must have the same length")
    cdef Row *rows = <Row *>PyMem_Malloc((n if n else 1) * sizeof(Row))
    cdef Py_ssize_t i
    cdef Py_ssize_t size = 0
    cdef Row *row
    cdef char *at
    cdef char *start
    cdef bytes frame
    cdef double stamp = now
    cdef uint64_t bits
    if rows == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            row = &rows[i]
            m = messages[i]
            row.conv = m.conv
            row.seq = seqs[i]
            _fill(row, m)
            if (row.sender_n | row.device_n | row.kind_n | row.body_n) >> 32:
                raise ValueError("a field of a message is 4 GiB or more")
            size += _RECORD_HEADER + row.sender_n + row.device_n + row.kind_n + row.body_n
        if size >> 32:
            raise ValueError("a frame of the message log must stay under 4 GiB")
        frame = PyBytes_FromStringAndSize(NULL, _FRAME_HEADER + size)
        start = PyBytes_AS_STRING(frame)
        at = start + _FRAME_HEADER
        memcpy(&bits, &stamp, 8)
        for i in range(n):
            row = &rows[i]
            at = _put_u64(at, <uint64_t>row.conv)
            at = _put_u64(at, <uint64_t>row.seq)
            at = _put_u64(at, <uint64_t>row.cmid)
            at = _put_u64(at, bits)
            at = _put_u32(at, <uint32_t>row.sender_n)
            at = _put_u32(at, <uint32_t>row.device_n)
            at = _put_u32(at, <uint32_t>row.kind_n)
            at = _put_u32(at, <uint32_t>row.body_n)
            at = _put(at, row.sender, row.sender_n)
            at = _put(at, row.device, row.device_n)
            at = _put(at, row.kind, row.kind_n)
            at = _put(at, row.body, row.body_n)
    finally:
        PyMem_Free(rows)
    # The frame is not shared yet: its header is written last, over the payload's crc.
    crc = zlib.crc32(memoryview(frame)[_FRAME_HEADER:])
    at = _put(start, b"BWL1", 4)
    at = _put_u32(at, <uint32_t>size)
    _put_u32(at, <uint32_t>crc)
    return frame


cdef int _fill(Row *row, object m) except -1:
    """Points ``row`` at the fields of the message ``m`` (which must outlive it)."""
    cdef uint64_t cmid = m.cmid
    row.has_cmid = cmid != 0
    row.cmid = <int64_t>cmid  # u64 folded into i64, as the store stores it
    row.sender = PyUnicode_AsUTF8AndSize(m.sender, &row.sender_n)
    row.device = PyUnicode_AsUTF8AndSize(m.device, &row.device_n)
    row.kind = PyUnicode_AsUTF8AndSize(m.kind, &row.kind_n)
    body = m.body
    if type(body) is not bytes:
        raise TypeError(f"a message body must be bytes, got {type(body).__name__}")
    row.body = PyBytes_AS_STRING(body)
    row.body_n = PyBytes_GET_SIZE(body)
    return 0


cdef int _allocate(Py_ssize_t n, Row **rows, int64_t **slots) except -1:
    """``n`` rows, and two arrays of ``n`` per-conversation values (see ``_gather``)."""
    rows[0] = <Row *>PyMem_Malloc(n * sizeof(Row))
    slots[0] = <int64_t *>PyMem_Malloc(2 * n * sizeof(int64_t))
    if rows[0] == NULL or slots[0] == NULL:
        PyMem_Free(rows[0])
        PyMem_Free(slots[0])
        rows[0] = NULL
        slots[0] = NULL
        raise MemoryError()
    return 0


cdef Py_ssize_t _gather(list messages, list seqs, Row *rows, int64_t *slots,
                        int64_t *per_slot) except -1:
    """Points ``rows`` at ``messages`` and gives each conversation a slot, in order of
    first appearance: ``slots[j]`` is its id, ``per_slot[j]`` how many of the messages
    it has or, with ``seqs`` (each message's seq, set on its row), the largest of its
    seqs. Returns the number of slots."""
    cdef Py_ssize_t nc = 0
    cdef Py_ssize_t i
    cdef Py_ssize_t j
    cdef Row *row
    slot_of = {}
    for i in range(len(messages)):
        m = messages[i]
        row = &rows[i]
        conv = m.conv
        row.conv = conv
        if seqs is not None:
            row.seq = seqs[i]
        slot = slot_of.get(conv)
        if slot is None:
            j = slot_of[conv] = nc
            slots[j] = row.conv
            per_slot[j] = 0
            nc += 1
        else:
            j = slot
        row.slot = j
        if seqs is None:
            per_slot[j] += 1
        elif row.seq > per_slot[j]:
            per_slot[j] = row.seq
        _fill(row, m)
    return nc


cdef class Appender:
    """Appends batches to the store's database at ``path`` (see the module docstring).

    Opens its own connection with the writer's settings: ``synchronous`` ("NORMAL" or
    "FULL"), ``busy_timeout_ms``, foreign keys on, no automatic checkpoint. One thread
    at a time (the store's writer) may use it."""

    cdef sqlite3 *_db
    cdef sqlite3_stmt *_begin
    cdef sqlite3_stmt *_commit
    cdef sqlite3_stmt *_rollback
    cdef sqlite3_stmt *_reserve
    cdef sqlite3_stmt *_insert
    cdef sqlite3_stmt *_index
    cdef sqlite3_stmt *_raise_seq

    def __cinit__(self, str path, str synchronous, int busy_timeout_ms):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        cdef bytes name = path.encode()
        cdef int rc = sqlite3_open_v2(name, &self._db, SQLITE_OPEN_READWRITE, NULL)
        if rc != SQLITE_OK:
            self._raise()
        sqlite3_extended_result_codes(self._db, 1)
        settings = (
            f"PRAGMA busy_timeout = {busy_timeout_ms}; PRAGMA synchronous = {synchronous}; "
            f"PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0"
        ).encode()
        if sqlite3_exec(self._db, settings, NULL, NULL, NULL) != SQLITE_OK:
            self._raise()
        self._begin = self._prepare(b"BEGIN IMMEDIATE")
        self._commit = self._prepare(b"COMMIT")
        self._rollback = self._prepare(b"ROLLBACK")
        self._reserve = self._prepare(_RESERVE)
        self._insert = self._prepare(_INSERT)
        self._index = self._prepare(_INDEX)
        self._raise_seq = self._prepare(_RAISE)

    def __dealloc__(self):
        self._close()

    cdef sqlite3_stmt *_prepare(self, bytes sql) except NULL:
        cdef sqlite3_stmt *stmt = NULL
        if sqlite3_prepare_v2(self._db, sql, -1, &stmt, NULL) != SQLITE_OK:
            self._raise()
        return stmt

    cdef int _raise(self) except -1:
        raise self._error()

    cdef object _error(self):
        """The connection's last error, as the standard library's sqlite3 raises it."""
        if self._db == NULL:
            return MemoryError("SQLite could not allocate a connection")
        code = sqlite3_extended_errcode(self._db)
        error = pysqlite.OperationalError(sqlite3_errmsg(self._db).decode("utf-8", "replace"))
        error.sqlite_errorcode = code
        error.sqlite_errorname = _NAMES.get(code & 0xFF, f"SQLITE_{code}")
        return error

    cdef void _close(self) noexcept:
        cdef sqlite3_stmt *stmts[7]
        stmts[0] = self._begin
        stmts[1] = self._commit
        stmts[2] = self._rollback
        stmts[3] = self._reserve
        stmts[4] = self._insert
        stmts[5] = self._index
        stmts[6] = self._raise_seq
        for i in range(7):
            if stmts[i] != NULL:
                sqlite3_finalize(stmts[i])
        self._begin = self._commit = self._rollback = self._reserve = self._insert = NULL
        self._index = self._raise_seq = NULL
        if self._db != NULL:
            sqlite3_close_v2(self._db)
            self._db = NULL

    def close(self):
        """Closes the connection (idempotent)."""
        self._close()

    @staticmethod
    def soft_heap_limit():
        """SQLite's soft heap limit, a setting of the library copy this module uses."""
        return sqlite3_soft_heap_limit64(-1)

    def append(self, list messages, double now):
        """Writes ``messages`` (validated ``NewMessage``s) in one transaction stamped
        ``now``. Returns each message's seq, or None if the batch needs the Python path
        (nothing was written)."""
        if self._db == NULL:
            raise pysqlite.ProgrammingError("the appender is closed")
        if not messages:
            return []
        cdef Py_ssize_t n = len(messages)
        cdef Row *rows = NULL
        cdef int64_t *slots = NULL
        cdef Py_ssize_t nc
        cdef int outcome = WRITTEN
        _allocate(n, &rows, &slots)
        try:
            # ``next_seq`` holds each conversation's count until the seqs are reserved.
            nc = _gather(messages, None, rows, slots, slots + n)
            # The messages list holds every object the pointers above point into.
            with nogil:
                outcome = self._write(rows, n, slots, slots + n, nc, now)
            if outcome == FAILED:
                error = self._error()
                self._end()
                raise error
            if outcome == FALLBACK:
                return None
            return [rows[i].seq for i in range(n)]
        finally:
            PyMem_Free(rows)
            PyMem_Free(slots)

    def index(self, list messages, list seqs, list stamps):
        """Inserts ``messages`` (validated ``NewMessage``s) under the given ``seqs``,
        each stamped with its ``stamps`` entry, and raises each conversation's last_seq
        to its largest seq, in one transaction. False if a row clashed with one stored
        (nothing was written: the store then writes them in Python)."""
        if self._db == NULL:
            raise pysqlite.ProgrammingError("the appender is closed")
        cdef Py_ssize_t n = len(messages)
        if len(seqs) != n or len(stamps) != n:
            raise ValueError("messages, seqs and stamps must have the same length")
        if n == 0:
            return True
        cdef Row *rows = NULL
        cdef int64_t *slots = NULL
        cdef Py_ssize_t nc
        cdef Py_ssize_t i
        cdef int outcome = WRITTEN
        _allocate(n, &rows, &slots)
        try:
            nc = _gather(messages, seqs, rows, slots, slots + n)
            for i in range(n):
                rows[i].stamp = stamps[i]
            with nogil:
                outcome = self._write_indexed(rows, n, slots, slots + n, nc)
            if outcome == FAILED:
                error = self._error()
                self._end()
                raise error
            return outcome == WRITTEN
        finally:
            PyMem_Free(rows)
            PyMem_Free(slots)

    cdef int _write_indexed(self, Row *rows, Py_ssize_t n, int64_t *slots,
                            int64_t *top_seq, Py_ssize_t nc) noexcept nogil:
        cdef int rc
        cdef Py_ssize_t i
        cdef Py_ssize_t j
        if self._run(self._begin) != SQLITE_DONE:
            return FAILED
        for i in range(n):
            rc = self._insert_row(self._index, &rows[i], rows[i].seq, rows[i].stamp)
            if rc != SQLITE_DONE:
                return self._abandon(FALLBACK if rc & 0xFF == SQLITE_CONSTRAINT else FAILED)
        for j in range(nc):
            sqlite3_bind_int64(self._raise_seq, 1, top_seq[j])
            sqlite3_bind_int64(self._raise_seq, 2, slots[j])
            if self._run(self._raise_seq) != SQLITE_DONE:
                return self._abandon(FAILED)
        if self._run(self._commit) != SQLITE_DONE:
            return self._abandon(FAILED)
        return WRITTEN

    cdef int _insert_row(self, sqlite3_stmt *stmt, Row *row, int64_t seq,
                         double stamp) noexcept nogil:
        """Binds ``row`` under ``seq`` and ``stamp`` to ``stmt`` and runs it."""
        sqlite3_bind_int64(stmt, 1, row.conv)
        sqlite3_bind_int64(stmt, 2, seq)
        sqlite3_bind_text(stmt, 3, row.sender, <int>row.sender_n, BW_SQLITE_STATIC)
        sqlite3_bind_text(stmt, 4, row.device, <int>row.device_n, BW_SQLITE_STATIC)
        if row.has_cmid:
            sqlite3_bind_int64(stmt, 5, row.cmid)
        else:
            sqlite3_bind_null(stmt, 5)
        sqlite3_bind_blob(stmt, 6, row.body, <int>row.body_n, BW_SQLITE_STATIC)
        sqlite3_bind_text(stmt, 7, row.kind, <int>row.kind_n, BW_SQLITE_STATIC)
        sqlite3_bind_double(stmt, 8, stamp)
        return self._run(stmt)

    cdef int _run(self, sqlite3_stmt *stmt) noexcept nogil:
        """Steps ``stmt`` once and resets it (its error stays on the connection)."""
        cdef int rc = sqlite3_step(stmt)
        sqlite3_reset(stmt)
        return rc

    cdef int _write(self, Row *rows, Py_ssize_t n, int64_t *slots, int64_t *next_seq,
                    Py_ssize_t nc, double now) noexcept nogil:
        """The transaction: fills each row's seq. FAILED leaves the error (and the
        transaction) on the connection for ``append`` to read."""
        cdef int rc
        cdef Py_ssize_t i
        cdef Py_ssize_t j
        cdef int64_t seq
        cdef Row *row
        if self._run(self._begin) != SQLITE_DONE:
            return FAILED
        for j in range(nc):
            sqlite3_bind_int64(self._reserve, 1, next_seq[j])
            sqlite3_bind_int64(self._reserve, 2, slots[j])
            rc = sqlite3_step(self._reserve)
            if rc == SQLITE_ROW:
                next_seq[j] = sqlite3_column_int64(self._reserve, 0) - next_seq[j]
            sqlite3_reset(self._reserve)
            if rc != SQLITE_ROW:
                return self._abandon(FALLBACK if rc == SQLITE_DONE else FAILED)
        for i in range(n):
            row = &rows[i]
            next_seq[row.slot] += 1
            seq = row.seq = next_seq[row.slot]
            rc = self._insert_row(self._insert, row, seq, now)
            if rc != SQLITE_DONE:
                return self._abandon(FALLBACK if rc & 0xFF == SQLITE_CONSTRAINT else FAILED)
            if sqlite3_changes(self._db) != 1:  # a retry: it must get the original back
                return self._abandon(FALLBACK)
        if self._run(self._commit) != SQLITE_DONE:
            return self._abandon(FAILED)
        return WRITTEN

    cdef int _abandon(self, int outcome) noexcept nogil:
        """Rolls back a FALLBACK now and returns ``outcome``. A FAILED transaction stays
        open until ``append`` has read the error (a ROLLBACK would replace it)."""
        if outcome == FALLBACK:
            self._end()
        return outcome

    cdef void _end(self) noexcept nogil:
        """Rolls back the open transaction, if SQLite has not already."""
        if not sqlite3_get_autocommit(self._db):
            self._run(self._rollback)
