"""The SQLite store's schema, as numbered migrations.

Migration N brings a database from schema version N-1 to N. The ``schema_version``
table records each applied version with the time it was applied; :func:`apply_migrations`
applies the missing ones in order, each in its own transaction together with its
record, so a crash mid-way leaves the file at a consistent version and a re-run
continues from there. Applying to an up-to-date file changes nothing. A file whose
version is newer than the newest migration known here is refused with
:class:`~bluewren.errors.SchemaVersionError` rather than used by code that does not
understand it.

Rules for adding a migration: append it to :data:`MIGRATIONS` (never edit a released
one), keep each statement a single SQL statement, and never rely on
``executescript`` (it commits on its own).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bluewren.errors import SchemaVersionError

__all__ = ["MIGRATIONS", "Migration", "apply_migrations", "schema_version"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``statements`` take the schema from ``version - 1`` to ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "conversations, members, messages, cursors, read marks",
        (
            # AUTOINCREMENT: an id is never handed out twice, even after rows are removed.
            """
            CREATE TABLE conversations (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                kind        TEXT    NOT NULL CHECK (kind IN ('direct', 'group')),
                title       TEXT    NOT NULL DEFAULT '',
                created_at  REAL    NOT NULL,
                last_seq    INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
            )
            """,
            # One row per pair of users (user_lo <= user_hi) makes create_direct idempotent.
            """
            CREATE TABLE direct_pairs (
                user_lo  TEXT    NOT NULL,
                user_hi  TEXT    NOT NULL,
                conv     INTEGER NOT NULL UNIQUE REFERENCES conversations (id),
                PRIMARY KEY (user_lo, user_hi),
                CHECK (user_lo <= user_hi)
            ) WITHOUT ROWID
            """,
            """
            CREATE TABLE members (
                conv        INTEGER NOT NULL REFERENCES conversations (id),
                user        TEXT    NOT NULL,
                role        TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
                joined_seq  INTEGER NOT NULL,
                PRIMARY KEY (conv, user)
            ) WITHOUT ROWID
            """,
            "CREATE INDEX members_by_user ON members (user, conv)",
            # UNIQUE (conv, seq) is the fence against a stale owner. The uniqueness of
            # (conv, sender, cmid) is declared sender-first so that the same index also
            # serves export and erasure by sender. cmid NULL = no client message id (NULLs
            # never collide); it holds the unsigned 64-bit id as a signed 64-bit integer.
            # Bodies can be large, so this is a rowid table: WITHOUT ROWID suits small rows.
            """
            CREATE TABLE messages (
                conv        INTEGER NOT NULL REFERENCES conversations (id),
                seq         INTEGER NOT NULL CHECK (seq > 0),
                sender      TEXT    NOT NULL,
                device      TEXT    NOT NULL,
                cmid        INTEGER,
                body        BLOB    NOT NULL,
                kind        TEXT    NOT NULL,
                created_at  REAL    NOT NULL,
                UNIQUE (conv, seq),
                UNIQUE (sender, conv, cmid)
            )
            """,
            """
            CREATE TABLE cursors (
                user    TEXT    NOT NULL,
                device  TEXT    NOT NULL,
                conv    INTEGER NOT NULL REFERENCES conversations (id),
                seq     INTEGER NOT NULL CHECK (seq >= 0),
                PRIMARY KEY (user, device, conv)
            ) WITHOUT ROWID
            """,
            """
            CREATE TABLE read_marks (
                conv  INTEGER NOT NULL REFERENCES conversations (id),
                user  TEXT    NOT NULL,
                seq   INTEGER NOT NULL CHECK (seq >= 0),
                PRIMARY KEY (conv, user)
            ) WITHOUT ROWID
            """,
            "CREATE INDEX read_marks_by_user ON read_marks (user)",
        ),
    ),
    Migration(
        2,
        "disabled users",
        (
            """
            CREATE TABLE disabled_users (
                user    TEXT    PRIMARY KEY,
                since   REAL    NOT NULL,
                reason  TEXT    NOT NULL DEFAULT ''
            ) WITHOUT ROWID
            """,
        ),
    ),
)
"""Every migration, in order; ``MIGRATIONS[i].version == i + 1``."""

_CREATE_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version     INTEGER PRIMARY KEY,
        applied_at  REAL    NOT NULL
    )
"""


def schema_version(conn: sqlite3.Connection) -> int:
    """The newest schema version recorded in the database (0 for a new file)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def apply_migrations(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    path: str = "",
) -> list[int]:
    """Applies the migrations the database lacks; returns the versions applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no transaction
    open. Each migration runs in a ``BEGIN IMMEDIATE`` transaction, so two processes
    opening the same new file at once apply it once. Raises SchemaVersionError if the
    file is at a version newer than the last of ``migrations`` (``path`` names the file
    in that error).
    """
    for index, migration in enumerate(migrations):
        if migration.version != index + 1:
            raise ValueError(
                f"migration #{index} has version {migration.version}; versions must be "
                f"1, 2, 3, ... in order"
            )
    known = len(migrations)
    applied: list[int] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_CREATE_VERSION_TABLE)
        current = schema_version(conn)
        if current > known:
            raise SchemaVersionError(path, current, known)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    for migration in migrations[current:]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have applied it meanwhile.
            if schema_version(conn) >= migration.version:
                conn.execute("COMMIT")
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (migration.version, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
