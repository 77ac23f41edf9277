"""Operators' data commands of the CLI: ``export``, ``erase``, ``users`` and ``groups``.

They work on the store file of a data directory (``<data_dir>/bluewren.db``), which may
belong to a running node (SQLite in WAL mode lets readers and one writer share it).
``erase`` is best run on a stopped node: a running node keeps the memberships it has in
memory until the conversation next changes.

Exit statuses (also in ``bluewren <command> --help``): :data:`EXIT_OK`,
:data:`EXIT_ERROR` (I/O, a missing store), :data:`EXIT_USAGE` (bad arguments or config),
:data:`EXIT_NOT_FOUND` (no such user or conversation).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from bluewren.errors import ConversationNotFoundError
from bluewren.store.sqlite import SQLiteStore

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "OpsError",
    "ProgressBar",
    "erase",
    "export",
    "groups_list",
    "groups_show",
    "users_list",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
"""The store is missing or unreadable, or the output cannot be written."""
EXIT_USAGE: Final = 2
"""Bad arguments or configuration (also: ``erase`` without ``--yes``)."""
EXIT_NOT_FOUND: Final = 4
"""No data stored for that user, or no such conversation."""

T = TypeVar("T")


class OpsError(Exception):
    """A data command failed; ``status`` is the exit status to use."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


class ProgressBar:
    """A one-line text progress bar on a stream (stderr): ``label [#####.....] 50% 5/10``.

    On a terminal it redraws in place; elsewhere it writes a line at every tenth of the
    way, so logs stay short."""

    WIDTH: Final = 30

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        self.label = label
        self.total = max(0, total)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self._last_tenth = -1

    def update(self, done: int) -> None:
        """Shows ``done`` of ``total``."""
        self.done = min(done, self.total)
        fraction = 1.0 if self.total == 0 else self.done / self.total
        tenth = int(fraction * 10)
        if not self.tty and tenth == self._last_tenth:
            return
        self._last_tenth = tenth
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        text = f"{self.label} [{bar}] {fraction:4.0%} {self.done}/{self.total}"
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """Shows the bar full and ends its line."""
        self.update(self.total)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _open_store(database: Path, use: Callable[[SQLiteStore], Awaitable[T]]) -> T:
    if not database.is_file():
        raise OpsError(f"no store at {database}: check --data-dir or --config")

    async def run() -> T:
        store = SQLiteStore(database)
        await store.open()
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _query(database: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the store file (opened read-only)."""
    if not database.is_file():
        raise OpsError(f"no store at {database}: check --data-dir or --config")
    try:
        conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise OpsError(f"cannot open {database}: {exc}") from None
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.Error as exc:
        raise OpsError(f"cannot read {database}: {exc}") from None
    finally:
        conn.close()


def _has_data(data: dict[str, Any]) -> bool:
    return any(data.get(k) for k in ("memberships", "messages", "cursors", "read_marks"))


def export(database: Path, user: str, out: Path | None, stream: IO[str] | None = None) -> int:
    """Writes ``user``'s data as JSON to ``out`` (atomically) or stdout; returns the
    number of messages. The JSON is ``Store.export_user``'s, written message by message
    under a progress bar on stderr."""
    data = _open_store(database, lambda store: store.export_user(user))
    if not _has_data(data):
        raise OpsError(f"no data stored for user {user!r}", EXIT_NOT_FOUND)
    messages: list[dict[str, Any]] = data.pop("messages")
    bar = ProgressBar(f"export {user}", len(messages), stream)
    head = json.dumps(data, indent=1)[:-2]  # the object without its closing "\n}"

    def write(f: IO[str]) -> None:
        f.write(head + ',\n "messages": [')
        for i, message in enumerate(messages):
            f.write(("\n  " if i == 0 else ",\n  ") + json.dumps(message))
            if i % 256 == 0:
                bar.update(i)
        f.write("\n ]\n}\n" if messages else "]\n}\n")

    if out is None:
        write(sys.stdout)
        sys.stdout.flush()
    else:
        target = out.resolve()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as f:
                write(f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    bar.finish()
    return len(messages)


def erase(database: Path, user: str) -> dict[str, int]:
    """Erases ``user``'s data (``Store.erase_user``); the rows changed, by kind."""

    async def run(store: SQLiteStore) -> dict[str, int]:
        data = await store.export_user(user)
        if not _has_data(data):
            raise OpsError(f"no data stored for user {user!r}", EXIT_NOT_FOUND)
        result = await store.erase_user(user)
        return {
            "messages": result.messages,
            "memberships": result.memberships,
            "cursors": result.cursors,
            "read_marks": result.read_marks,
        }

    return _open_store(database, run)


def users_list(database: Path) -> list[tuple[str, int, int]]:
    """(user, conversations, messages sent) of every user the store knows, by name."""
    return [
        (str(u), int(c), int(m))
        for u, c, m in _query(
            database,
            "SELECT u.user, "
            "(SELECT COUNT(*) FROM members WHERE members.user = u.user), "
            "(SELECT COUNT(*) FROM messages WHERE messages.sender = u.user) "
            "FROM (SELECT user FROM members UNION SELECT sender FROM messages "
            "UNION SELECT user FROM cursors) AS u ORDER BY u.user",
        )
    ]


def groups_list(database: Path) -> list[tuple[int, str, int, int]]:
    """(conv, title, members, last seq) of every group, by id."""
    return [
        (int(i), str(t), int(n), int(s))
        for i, t, n, s in _query(
            database,
            "SELECT c.id, c.title, (SELECT COUNT(*) FROM members WHERE members.conv = c.id), "
            "c.last_seq FROM conversations AS c WHERE c.kind = 'group' ORDER BY c.id",
        )
    ]


def groups_show(database: Path, conv: int) -> dict[str, Any]:
    """One conversation: id, kind, title, created_at, last_seq and its members."""

    async def run(store: SQLiteStore) -> dict[str, Any]:
        try:
            c = await store.conversation(conv)
        except ConversationNotFoundError:
            raise OpsError(f"no conversation {conv}", EXIT_NOT_FOUND) from None
        members = await store.members(conv)
        return {
            "conv": c.id,
            "kind": c.kind,
            "title": c.title,
            "created_at": c.created_at,
            "last_seq": await store.last_seq(conv),
            "members": [
                {"user": m.user, "role": m.role, "joined_seq": m.joined_seq} for m in members
            ],
        }

    return _open_store(database, run)
