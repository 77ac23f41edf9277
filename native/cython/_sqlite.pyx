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

Two copies of SQLite in one process would not see each other's file locks, so this
module links the same shared library as the standard library's ``sqlite3``, and
``Appender.soft_heap_limit`` lets the store check that they are one copy before it
writes through both.
"""

import sqlite3 as pysqlite

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint64_t

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

# What a batch came to, inside the GIL-free part.
cdef enum:
    WRITTEN = 0
    FALLBACK = 1
    FAILED = 2


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
        cdef sqlite3_stmt *stmts[5]
        stmts[0] = self._begin
        stmts[1] = self._commit
        stmts[2] = self._rollback
        stmts[3] = self._reserve
        stmts[4] = self._insert
        for i in range(5):
            if stmts[i] != NULL:
                sqlite3_finalize(stmts[i])
        self._begin = self._commit = self._rollback = self._reserve = self._insert = NULL
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
        cdef Py_ssize_t nc = 0
        cdef Row *rows = <Row *>PyMem_Malloc(n * sizeof(Row))
        # Per conversation, in order of first appearance: its id (``slots``), and how
        # many of the messages it has (``next_seq``, until the seqs are reserved).
        cdef int64_t *slots = <int64_t *>PyMem_Malloc(2 * n * sizeof(int64_t))
        cdef int64_t *next_seq = slots + n
        cdef Row *row
        cdef uint64_t cmid
        cdef Py_ssize_t i
        cdef Py_ssize_t j
        cdef int outcome = WRITTEN
        if rows == NULL or slots == NULL:
            PyMem_Free(rows)
            PyMem_Free(slots)
            raise MemoryError()
        try:
            slot_of = {}
            for i in range(n):
                m = messages[i]
                row = &rows[i]
                conv = m.conv
                row.conv = conv
                slot = slot_of.get(conv)
                if slot is None:
                    j = slot_of[conv] = nc
                    slots[j] = row.conv
                    next_seq[j] = 0
                    nc += 1
                else:
                    j = slot
                row.slot = j
                next_seq[j] += 1
                cmid = m.cmid
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
            # The messages list holds every object the pointers above point into.
            with nogil:
                outcome = self._write(rows, n, slots, next_seq, nc, now)
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

    cdef int _write(self, Row *rows, Py_ssize_t n, int64_t *slots, int64_t *next_seq,
                    Py_ssize_t nc, double now) noexcept nogil:
        """The transaction: fills each row's seq. FAILED leaves the error (and the
        transaction) on the connection for ``append`` to read."""
        cdef int rc
        cdef Py_ssize_t i
        cdef Py_ssize_t j
        cdef int64_t seq
        cdef Row *row
        rc = sqlite3_step(self._begin)
        sqlite3_reset(self._begin)
        if rc != SQLITE_DONE:
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
            sqlite3_bind_int64(self._insert, 1, row.conv)
            sqlite3_bind_int64(self._insert, 2, seq)
            sqlite3_bind_text(self._insert, 3, row.sender, <int>row.sender_n, BW_SQLITE_STATIC)
            sqlite3_bind_text(self._insert, 4, row.device, <int>row.device_n, BW_SQLITE_STATIC)
            if row.has_cmid:
                sqlite3_bind_int64(self._insert, 5, row.cmid)
            else:
                sqlite3_bind_null(self._insert, 5)
            sqlite3_bind_blob(self._insert, 6, row.body, <int>row.body_n, BW_SQLITE_STATIC)
            sqlite3_bind_text(self._insert, 7, row.kind, <int>row.kind_n, BW_SQLITE_STATIC)
            sqlite3_bind_double(self._insert, 8, now)
            rc = sqlite3_step(self._insert)
            sqlite3_reset(self._insert)
            if rc != SQLITE_DONE:
                return self._abandon(FALLBACK if rc & 0xFF == SQLITE_CONSTRAINT else FAILED)
            if sqlite3_changes(self._db) != 1:  # a retry: it must get the original back
                return self._abandon(FALLBACK)
        rc = sqlite3_step(self._commit)
        sqlite3_reset(self._commit)
        if rc != SQLITE_DONE:
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
            sqlite3_step(self._rollback)
            sqlite3_reset(self._rollback)
