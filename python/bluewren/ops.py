"""Operators' data commands of the CLI: ``export``, ``import``, ``erase``, ``users`` and
``groups``.

They work on the store file of a data directory (``<data_dir>/bluewren.db``), which may
belong to a running node (SQLite in WAL mode lets readers and one writer share it, so
nothing is corrupted). Reading is safe while the node runs, and so are ``users disable``
and ``enable`` (the node reads the list every ``disabled_refresh_interval``). ``erase``,
``import`` and the ``groups`` changes are for a stopped node: a running node keeps the
memberships it has cached and the sequence numbers it has published in memory, and would
not see them (an imported message past what it published would hold later deliveries
of that conversation back until a restart), and the bodies it has acknowledged but not
yet indexed are in its message log, out of an erasure's reach. So they refuse to run
while a node owns the store (it holds the store's message log locked).

Exit statuses (also in ``bluewren <command> --help``): :data:`EXIT_OK`,
:data:`EXIT_ERROR` (I/O, a missing store), :data:`EXIT_USAGE` (bad arguments, config or
import file), :data:`EXIT_NOT_FOUND` (no such user or conversation),
:data:`EXIT_CONFLICT` (an import that does not fit the store).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from bluewren.errors import BlueWrenError, ConversationNotFoundError
from bluewren.store import Conversation, Member
from bluewren.store.sqlite import SQLiteStore

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "ImportResult",
    "OpsError",
    "ProgressBar",
    "erase",
    "export",
    "groups_add",
    "groups_create",
    "groups_list",
    "groups_remove",
    "groups_rename",
    "groups_show",
    "import_user",
    "read_export",
    "users_list",
    "users_set_disabled",
    "users_show",
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


def _open_store(
    database: Path,
    use: Callable[[SQLiteStore], Awaitable[T]],
    *,
    create: bool = False,
    stopped: bool = False,
) -> T:
    """``use(store)`` on the store file opened (and migrated) by SQLiteStore; ``create``
    makes the file if there is none; ``stopped`` refuses a store a running node owns."""
    if not create and not database.is_file():
        raise OpsError(f"no store at {database}: check --data-dir or --config")

    async def run() -> T:
        store = SQLiteStore(database)
        await store.open()
        try:
            if stopped and store.log_owned_elsewhere:
                raise OpsError(
                    f"a running node owns {database} (it holds its message log): stop "
                    f"the node first"
                )
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _read(database: Path, *queries: tuple[str, tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    """The rows of each ``(sql, args)`` query, read from the store file opened read-only
    (one connection, one snapshot)."""
    if not database.is_file():
        raise OpsError(f"no store at {database}: check --data-dir or --config")
    try:
        conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise OpsError(f"cannot open {database}: {exc}") from None
    try:
        with conn:  # one read transaction: the queries see the same state
            conn.execute("BEGIN")
            return [conn.execute(sql, args).fetchall() for sql, args in queries]
    except sqlite3.Error as exc:
        raise OpsError(f"cannot read {database}: {exc}") from None
    finally:
        conn.close()


def _query(database: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one read-only query on the store file (see :func:`_read`)."""
    return _read(database, (sql, args))[0]


def _user_rows(database: Path, user: str) -> tuple[list[tuple[Any, ...]], int, list[str], int]:
    """What the store holds about ``user``, without the messages themselves:
    (memberships as (conv, kind, title, role, joined_seq), messages sent, devices with a
    cursor, read marks)."""
    memberships, sent, devices, marks = _read(
        database,
        (
            "SELECT members.conv, conversations.kind, conversations.title, members.role, "
            "members.joined_seq FROM members JOIN conversations "
            "ON conversations.id = members.conv WHERE members.user = ? ORDER BY members.conv",
            (user,),
        ),
        ("SELECT COUNT(*) FROM messages WHERE sender = ?", (user,)),
        ("SELECT DISTINCT device FROM cursors WHERE user = ? ORDER BY device", (user,)),
        ("SELECT COUNT(*) FROM read_marks WHERE user = ?", (user,)),
    )
    return memberships, int(sent[0][0]), [d for (d,) in devices], int(marks[0][0])


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

    return _open_store(database, run, stopped=True)


def _has_disabled_users(database: Path) -> bool:
    """Whether the store file has the disabled_users table (migration 2) yet: read-only
    commands do not migrate."""
    return bool(
        _query(
            database,
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'disabled_users'",
        )
    )


def users_list(database: Path) -> list[tuple[str, int, int, bool]]:
    """(user, conversations, messages sent, disabled) of every user the store knows
    (disabled ids included), by name."""
    has_disabled = _has_disabled_users(database)
    disabled = (
        "(SELECT COUNT(*) FROM disabled_users WHERE disabled_users.user = u.user)"
        if has_disabled
        else "0"
    )
    also = " UNION SELECT user FROM disabled_users" if has_disabled else ""
    return [
        (str(u), int(c), int(m), bool(d))
        for u, c, m, d in _query(
            database,
            "SELECT u.user, "
            "(SELECT COUNT(*) FROM members WHERE members.user = u.user), "
            "(SELECT COUNT(*) FROM messages WHERE messages.sender = u.user), "
            f"{disabled} "
            "FROM (SELECT user FROM members UNION SELECT sender FROM messages "
            f"UNION SELECT user FROM cursors{also}) AS u ORDER BY u.user",
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
        c = await _conversation_or_fail(store, conv)
        return _group_description(c, await store.members(conv), await store.last_seq(conv))

    return _open_store(database, run)


# -- import ------------------------------------------------------------------------------

EXIT_CONFLICT: Final = 5
"""``import``: the file does not fit the store (a conversation id of another kind)."""


@dataclass
class ImportResult:
    """What ``import`` did, by kind of row."""

    user: str
    added: int = 0
    present: int = 0
    renumbered: int = 0
    skipped: int = 0
    conversations_created: int = 0
    memberships_added: int = 0
    cursors: int = 0
    read_marks: int = 0
    skipped_convs: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the operator."""
        return (
            f"imported {self.user}: messages {self.added} added, {self.present} already "
            f"present, {self.renumbered} renumbered, {self.skipped} skipped; conversations "
            f"{self.conversations_created} created; memberships {self.memberships_added} "
            f"added; cursors {self.cursors}, read_marks {self.read_marks} set"
        )


def _bad(where: object, reason: str) -> OpsError:
    return OpsError(f"{where}: {reason}", EXIT_USAGE)


def _int_field(item: dict[str, Any], key: str, where: object, low: int, high: int) -> int:
    if key not in item:
        raise _bad(where, f"missing key {key!r}")
    value = item[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(where, f"{key} must be an integer in {low}..{high}, got {value!r:.60}")
    return value


def _str_field(item: dict[str, Any], key: str, where: object, *, empty: bool = True) -> str:
    if key not in item:
        raise _bad(where, f"missing key {key!r}")
    value = item[key]
    if not isinstance(value, str) or (not empty and not value):
        what = "a string" if empty else "a non-empty string"
        raise _bad(where, f"{key} must be {what}, got {value!r:.60}")
    return value


class _Located:
    """Names an element of the export's lists with its line in the file, when the file
    has the export's own layout (one message per line)."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self._text = text

    @cached_property
    def lines(self) -> list[str]:
        """The file's lines: split only when an error names an element."""
        return self._text.splitlines()

    @cached_property
    def first_message(self) -> int | None:
        """The index of ``messages[0]``'s line, if the file has the export's layout."""
        for number, line in enumerate(self.lines):
            if line.strip().startswith('"messages": ['):
                return number + 1
        return None

    def __call__(self, key: str, index: int, item: object) -> _Where:
        return _Where(self, key, index, item)

    def describe(self, key: str, index: int, item: object) -> str:
        where = f"{self.name}: {key}[{index}]"
        if key != "messages" or self.first_message is None:
            return where
        number = self.first_message + index
        if number < len(self.lines):
            try:
                same = json.loads(self.lines[number].strip().rstrip(",")) == item
            except ValueError:
                same = False
            if same:
                return f"{where} (line {number + 1})"
        return where


@dataclass(frozen=True, slots=True)
class _Where:
    """An element of the export, named (and its line looked up) only when an error
    message prints it: a good file is not parsed twice."""

    located: _Located
    key: str
    index: int
    item: object

    def __str__(self) -> str:
        return self.located.describe(self.key, self.index, self.item)


_ID_MAX: Final = (1 << 63) - 1


def read_export(path: Path) -> dict[str, Any]:
    """The checked contents of an export file; OpsError naming what is wrong (the
    format version, a missing key, the element and its line) with EXIT_USAGE, or
    EXIT_ERROR when the file cannot be read."""
    from bluewren.store.base import CMID_MAX, ROLES
    from bluewren.store.sqlite import EXPORT_FORMAT

    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OpsError(f"cannot read {name}: no such file") from None
    except UnicodeDecodeError as exc:
        raise _bad(name, f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise OpsError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(name, f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise _bad(name, f"not a BlueWren user export: a JSON {type(data).__name__}")
    fmt = data.get("format")
    family, _, version = EXPORT_FORMAT.partition("/")
    if fmt is None:
        raise _bad(name, f"missing key 'format' (expected {EXPORT_FORMAT!r})")
    if not isinstance(fmt, str) or not fmt.startswith(family + "/"):
        raise _bad(name, f"not a BlueWren user export (format {fmt!r:.60})")
    if fmt != EXPORT_FORMAT:
        raise _bad(
            name,
            f"format version {fmt.partition('/')[2]!r} is not supported (this bluewren "
            f"reads {EXPORT_FORMAT!r}, version {version})",
        )
    _str_field(data, "user", name, empty=False)
    for key in ("memberships", "messages", "cursors", "read_marks"):
        if key not in data:
            raise _bad(name, f"missing key {key!r}")
        if not isinstance(data[key], list):
            raise _bad(name, f"{key} must be a list, got {type(data[key]).__name__}")
    at = _Located(name, text)
    seen_convs: set[int] = set()
    for i, m in enumerate(data["memberships"]):
        where = at("memberships", i, m)
        if not isinstance(m, dict):
            raise _bad(where, "must be an object")
        conv = _int_field(m, "conv", where, 1, _ID_MAX)
        if conv in seen_convs:
            raise _bad(where, f"conversation {conv} is listed twice")
        seen_convs.add(conv)
        kind = _str_field(m, "kind", where)
        if kind not in ("direct", "group"):
            raise _bad(where, f"kind must be 'direct' or 'group', got {kind!r:.60}")
        _str_field(m, "title", where)
        role = _str_field(m, "role", where)
        if role not in ROLES:
            raise _bad(where, f"role must be one of owner, admin, member, got {role!r:.60}")
        _int_field(m, "joined_seq", where, 0, _ID_MAX)
    seqs: set[tuple[int, int]] = set()
    cmids: set[tuple[int, int]] = set()
    for i, msg in enumerate(data["messages"]):
        where = at("messages", i, msg)
        if not isinstance(msg, dict):
            raise _bad(where, "must be an object")
        conv = _int_field(msg, "conv", where, 1, _ID_MAX)
        seq = _int_field(msg, "seq", where, 1, _ID_MAX)
        _str_field(msg, "device", where)
        cmid = _int_field(msg, "cmid", where, 0, CMID_MAX)
        _str_field(msg, "kind", where, empty=False)
        created = msg.get("created_at")
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise _bad(
                where,
                "missing key 'created_at'"
                if created is None
                else f"created_at must be a number, got {created!r:.60}",
            )
        body = _str_field(msg, "body_base64", where)
        try:
            decoded = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(where, "body_base64 is not valid base64") from None
        if (conv, seq) in seqs:
            raise _bad(where, f"a second message at conversation {conv}, seq {seq}")
        seqs.add((conv, seq))
        if cmid and (conv, cmid) in cmids:
            raise _bad(where, f"a second message with cmid {cmid} in conversation {conv}")
        cmids.add((conv, cmid))
        msg["body"] = decoded  # last: an error above names the element as it is in the file
    for i, c in enumerate(data["cursors"]):
        where = at("cursors", i, c)
        if not isinstance(c, dict):
            raise _bad(where, "must be an object")
        _str_field(c, "device", where)
        _int_field(c, "conv", where, 1, _ID_MAX)
        _int_field(c, "seq", where, 0, _ID_MAX)
    for i, r in enumerate(data["read_marks"]):
        where = at("read_marks", i, r)
        if not isinstance(r, dict):
            raise _bad(where, "must be an object")
        _int_field(r, "conv", where, 1, _ID_MAX)
        _int_field(r, "seq", where, 0, _ID_MAX)
    return data


def import_user(database: Path, path: Path, stream: IO[str] | None = None) -> ImportResult:
    """Restores the data of the export file ``path`` into the store ``database`` (created
    if missing), in one transaction, idempotently; see docs/operations.md ("Import").

    * A conversation the store lacks is created with the export's id, kind and title.
      A conversation id the store holds with another kind is a conflict
      (:data:`EXIT_CONFLICT`, nothing written).
    * A message already stored (same conversation, sender and cmid; without a cmid, the
      same created_at and body) is skipped. The others of a conversation are taken in
      sequence order and keep their sequence numbers while those are free; from the
      first whose number another message holds, they are appended after the
      conversation's end (renumbered), in their order. So the exports of every member
      of a conversation, imported one after the other into a new store, rebuild it
      with its original numbers, and an import never reorders what it wrote.
    * Messages of a conversation the user is no longer a member of, and that the store
      does not have, are skipped (their kind is unknown): import a member's export first.
    * Memberships are added when missing (an existing one is left as it is); cursors
      and read marks only move forward, never past the conversation's last message.
    """
    data = read_export(path)
    user: str = data["user"]
    result = ImportResult(user)
    messages: list[dict[str, Any]] = data["messages"]
    bar = ProgressBar(f"import {user}", len(messages), stream)
    database.parent.mkdir(parents=True, exist_ok=True)
    try:  # creates (or migrates) the store file
        _open_store(database, lambda store: asyncio.sleep(0), create=True, stopped=True)
    except (OSError, BlueWrenError) as exc:
        raise OpsError(f"cannot open {database}: {exc}") from None
    try:
        conn = sqlite3.connect(database, isolation_level=None, timeout=10)
    except sqlite3.Error as exc:
        raise OpsError(f"cannot open {database}: {exc}") from None
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            _import(conn, data, result, bar)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise OpsError(f"cannot write {database}: {exc}") from None
    finally:
        conn.close()
    bar.finish()
    return result


def _import(
    conn: sqlite3.Connection, data: dict[str, Any], result: ImportResult, bar: ProgressBar
) -> None:
    from bluewren.store.sqlite import _cmid_to_db

    user: str = data["user"]
    memberships = {m["conv"]: m for m in data["memberships"]}
    by_conv: dict[int, list[dict[str, Any]]] = {}
    for msg in data["messages"]:
        by_conv.setdefault(msg["conv"], []).append(msg)
    refs: dict[int, int] = {}  # per conversation: the highest seq the export mentions
    for conv, m in memberships.items():
        refs[conv] = max(refs.get(conv, 0), m["joined_seq"])
    for conv, msgs in by_conv.items():
        refs[conv] = max(refs.get(conv, 0), *(m["seq"] for m in msgs))
    for item in (*data["cursors"], *data["read_marks"]):
        refs[item["conv"]] = max(refs.get(item["conv"], 0), item["seq"])
    last: dict[int, int] = {}  # conversations in the store, their last seq (once done)
    created: set[int] = set()
    for conv in sorted(refs):
        row = conn.execute(
            "SELECT kind, last_seq FROM conversations WHERE id = ?", (conv,)
        ).fetchone()
        m = memberships.get(conv)
        if row is None:
            if m is None:
                result.skipped_convs.append(conv)
                continue
            first = min((msg["created_at"] for msg in by_conv.get(conv, ())), default=time.time())
            conn.execute(
                "INSERT INTO conversations (id, kind, title, created_at, last_seq) "
                "VALUES (?, ?, ?, ?, 0)",
                (conv, m["kind"], m["title"], first),
            )
            result.conversations_created += 1
            created.add(conv)
            row = (m["kind"], 0)
        elif m is not None and row[0] != m["kind"]:
            raise OpsError(
                f"conversation {conv} is a {row[0]} conversation in the store but a "
                f"{m['kind']} one in the export: this export belongs to another store "
                "(nothing was imported)",
                EXIT_CONFLICT,
            )
        last[conv] = int(row[1])
    done = 0
    for conv, msgs in sorted(by_conv.items()):
        if conv not in last:
            result.skipped += len(msgs)
            done += len(msgs)
            continue
        end = last[conv]  # the highest seq in use
        appending = False  # once a slot is taken, the rest go after the end, in order
        for msg in sorted(msgs, key=lambda item: int(item["seq"])):
            done += 1
            if done % 256 == 0:
                bar.update(done)
            cmid = _cmid_to_db(msg["cmid"])
            if cmid is not None:
                present = conn.execute(
                    "SELECT 1 FROM messages WHERE sender = ? AND conv = ? AND cmid = ?",
                    (user, conv, cmid),
                ).fetchone()
            else:
                present = conn.execute(
                    "SELECT 1 FROM messages WHERE sender = ? AND conv = ? AND cmid IS NULL "
                    "AND created_at = ? AND body = ?",
                    (user, conv, msg["created_at"], msg["body"]),
                ).fetchone()
            if present is not None:
                result.present += 1
                continue
            seq = msg["seq"]
            if not appending:
                taken = conn.execute(
                    "SELECT 1 FROM messages WHERE conv = ? AND seq = ?", (conv, seq)
                ).fetchone()
                appending = taken is not None
            if appending:
                seq = end + 1
                result.renumbered += 1
            conn.execute(
                "INSERT INTO messages (conv, seq, sender, device, cmid, body, kind, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conv, seq, user, msg["device"], cmid, msg["body"], msg["kind"], msg["created_at"]),
            )
            result.added += 1
            end = max(end, seq)
        last[conv] = end
    for conv, end in last.items():
        if conv in created:
            # A conversation the import created ends at the highest seq the export
            # mentions, so that every cursor and read mark points inside it.
            end = max(end, refs[conv])
        last[conv] = int(
            conn.execute(
                "UPDATE conversations SET last_seq = MAX(last_seq, ?) WHERE id = ? "
                "RETURNING last_seq",
                (end, conv),
            ).fetchone()[0]
        )
    for conv, m in memberships.items():
        if conv not in last:
            continue
        added = conn.execute(
            "INSERT INTO members (conv, user, role, joined_seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (conv, user) DO NOTHING",
            (conv, user, m["role"], min(m["joined_seq"], last[conv])),
        ).rowcount
        result.memberships_added += added
        if m["kind"] == "direct":
            pair = [r[0] for r in conn.execute("SELECT user FROM members WHERE conv = ?", (conv,))]
            if len(pair) == 2:
                lo, hi = sorted(pair)
                conn.execute(
                    "INSERT INTO direct_pairs (user_lo, user_hi, conv) VALUES (?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (lo, hi, conv),
                )
    for c in data["cursors"]:
        if c["conv"] in last:
            result.cursors += conn.execute(
                "INSERT INTO cursors (user, device, conv, seq) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user, device, conv) DO UPDATE SET seq = excluded.seq "
                "WHERE excluded.seq > cursors.seq",
                (user, c["device"], c["conv"], min(c["seq"], last[c["conv"]])),
            ).rowcount
    for r in data["read_marks"]:
        if r["conv"] in last:
            result.read_marks += conn.execute(
                "INSERT INTO read_marks (conv, user, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (conv, user) DO UPDATE SET seq = excluded.seq "
                "WHERE excluded.seq > read_marks.seq",
                (r["conv"], user, min(r["seq"], last[r["conv"]])),
            ).rowcount
    result.skipped_convs.sort()


# -- users and groups: show and change ----------------------------------------------------


def users_show(database: Path, user: str) -> dict[str, Any]:
    """One user: disabled or not, conversations (with role), messages sent, devices."""

    disabled: dict[str, str] = (
        dict(_query(database, "SELECT user, reason FROM disabled_users WHERE user = ?", (user,)))
        if _has_disabled_users(database)
        else {}
    )
    memberships, sent, devices, marks = _user_rows(database, user)
    if not (memberships or sent or devices or marks) and user not in disabled:
        raise OpsError(f"no such user {user!r}: nothing stored about them", EXIT_NOT_FOUND)
    return {
        "user": user,
        "disabled": user in disabled,
        "disabled_reason": disabled.get(user),
        "conversations": [
            {"conv": c, "kind": k, "title": t, "role": r, "joined_seq": j}
            for c, k, t, r, j in memberships
        ],
        "messages_sent": sent,
        "devices": devices,
        "read_marks": marks,
    }


def users_set_disabled(
    database: Path, user: str, disabled: bool, reason: str = "", *, force: bool = False
) -> bool:
    """Disables or enables ``user`` in the store; True if that changed anything.

    EXIT_NOT_FOUND for a user the store knows nothing about (unless ``force``, to
    disable an id before its first connection)."""

    async def run(store: SQLiteStore) -> bool:
        listed = user in await store.disabled_users()
        if not force and not listed and not any(_user_rows(database, user)):
            hint = " (add --force to disable an id not seen yet)" if disabled else ""
            raise OpsError(
                f"no such user {user!r}: nothing stored about them{hint}", EXIT_NOT_FOUND
            )
        return await store.set_user_disabled(user, disabled, reason)

    return _open_store(database, run)


async def _conversation_or_fail(store: SQLiteStore, conv: int) -> Conversation:
    try:
        return await store.conversation(conv)
    except ConversationNotFoundError:
        raise OpsError(f"no conversation {conv}", EXIT_NOT_FOUND) from None


async def _group_or_fail(store: SQLiteStore, conv: int) -> Conversation:
    found = await _conversation_or_fail(store, conv)
    if found.kind != "group":
        raise OpsError(
            f"conversation {conv} is a {found.kind} conversation, not a group", EXIT_USAGE
        )
    return found


def _check_size(count: int, max_members: int) -> None:
    if count > max_members:
        raise OpsError(
            f"the group would have {count} members, more than max_group_members "
            f"({max_members}): raise it in the configuration or add fewer",
            EXIT_USAGE,
        )


def groups_create(
    database: Path, title: str, owner: str, members: list[str], max_members: int
) -> dict[str, Any]:
    """Creates a group (``owner`` as owner, ``members`` as members); its description."""
    if not owner:
        raise OpsError("--owner must name a user", EXIT_USAGE)
    everyone = list(dict.fromkeys([owner, *members]))
    if any(not user for user in everyone):
        raise OpsError("a member's user id is empty", EXIT_USAGE)
    _check_size(len(everyone), max_members)

    async def run(store: SQLiteStore) -> dict[str, Any]:
        group = await store.create_group(owner, title, everyone[1:])
        return _group_description(group, await store.members(group.id), 0)

    return _open_store(database, run, stopped=True)


def _group_description(group: Conversation, members: list[Member], last_seq: int) -> dict[str, Any]:
    """A conversation as ``groups show`` and the changing group commands print it."""
    return {
        "conv": group.id,
        "kind": group.kind,
        "title": group.title,
        "created_at": group.created_at,
        "last_seq": last_seq,
        "members": [{"user": m.user, "role": m.role, "joined_seq": m.joined_seq} for m in members],
    }


def groups_add(
    database: Path, conv: int, users: list[str], role: str, max_members: int
) -> tuple[list[str], list[str]]:
    """Adds ``users`` to group ``conv`` with ``role``; (added, already members)."""
    if any(not user for user in users):
        raise OpsError("a user id is empty", EXIT_USAGE)

    async def run(store: SQLiteStore) -> tuple[list[str], list[str]]:
        await _group_or_fail(store, conv)
        current = {m.user for m in await store.members(conv)}
        wanted = list(dict.fromkeys(users))
        new = [u for u in wanted if u not in current]
        _check_size(len(current) + len(new), max_members)
        added = await store.add_members(conv, new, role)  # type: ignore[arg-type]
        return [m.user for m in added], [u for u in wanted if u in current]

    return _open_store(database, run, stopped=True)


def groups_remove(database: Path, conv: int, users: list[str]) -> list[str]:
    """Removes ``users`` from group ``conv`` (all or none); the users removed.

    EXIT_NOT_FOUND naming a user who is not a member; EXIT_USAGE if the group would be
    left without an owner."""

    async def run(store: SQLiteStore) -> list[str]:
        await _group_or_fail(store, conv)
        members = {m.user: m for m in await store.members(conv)}
        wanted = list(dict.fromkeys(users))
        missing = [u for u in wanted if u not in members]
        if missing:
            raise OpsError(
                f"not members of conversation {conv}: {', '.join(map(repr, missing))} "
                "(nothing was removed)",
                EXIT_NOT_FOUND,
            )
        owners = {u for u, m in members.items() if m.role == "owner"}
        left = {u for u in members if u not in wanted}
        if owners and left and not owners - set(wanted):
            raise OpsError(
                f"removing {', '.join(map(repr, sorted(owners)))} would leave conversation "
                f"{conv} without an owner: make another member owner first (nothing was "
                "removed)",
                EXIT_USAGE,
            )
        for user in wanted:
            await store.remove_member(conv, user)
        return wanted

    return _open_store(database, run, stopped=True)


def groups_rename(database: Path, conv: int, title: str) -> str:
    """Renames group ``conv``; returns the old title."""

    async def run(store: SQLiteStore) -> str:
        found = await _group_or_fail(store, conv)
        await store.rename(conv, title)
        return str(found.title)

    return _open_store(database, run, stopped=True)
