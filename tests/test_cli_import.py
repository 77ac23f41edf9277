"""``bluewren import FILE``, run as a subprocess: the inverse of ``bluewren export``.

Store A is filled in-process; its users are exported with the real CLI and imported
into other stores. Checked: the round trip (export from A, import into an empty B,
export from B: equal but for ``exported_at``), idempotence, the sequence-number rules
when the conversation already holds other messages, the conflict with a foreign store,
and one clear error line (with the exit status of the help text) per bad file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bluewren.store.sqlite import SQLiteStore
from conftest import bluewren_cli as bluewren

SENT_BY_ALICE = 401  # of the 600 group messages, plus one in the direct chat


@pytest.fixture
def store_a(tmp_path: Path) -> Path:
    """Group 'ops' (alice owner, bob, carol) with 600 messages, every third from bob;
    a direct alice-bob chat; alice's cursor, read mark and one erased message."""
    path = tmp_path / "a"
    path.mkdir()

    async def fill() -> None:
        async with SQLiteStore(path / "bluewren.db") as store:
            group = await store.create_group("alice", "ops", ["bob", "carol"])
            direct = await store.create_direct("alice", "bob")
            for i in range(600):
                sender = "bob" if i % 3 == 0 else "alice"
                await store.append(group.id, sender, "phone", i + 1, f"m{i}".encode())
            await store.append(direct.id, "bob", "laptop", 1, b"hi alice")
            await store.append(direct.id, "alice", "laptop", 2, bytes(range(256)))
            await store.set_cursor("alice", "phone", group.id, 10)
            await store.set_cursor("alice", "laptop", direct.id, 2)
            await store.mark_read(group.id, "alice", 5)

    asyncio.run(fill())
    return path


def export(data_dir: Path, user: str, out: Path) -> dict[str, Any]:
    result = bluewren("export", user, "--out", str(out), data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "bluewren.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_round_trip_into_an_empty_store_gives_the_same_export(
    store_a: Path, tmp_path: Path
) -> None:
    before = export(store_a, "alice", tmp_path / "alice-a.json")
    assert len(before["messages"]) == SENT_BY_ALICE
    b = tmp_path / "b"  # does not exist yet: import creates the store
    result = bluewren("import", str(tmp_path / "alice-a.json"), data_dir=b)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"imported alice: messages {SENT_BY_ALICE} added, 0 already")
    assert "conversations 2 created" in result.stdout
    assert f"100% {SENT_BY_ALICE}/{SENT_BY_ALICE}" in result.stderr  # the progress bar
    after = export(b, "alice", tmp_path / "alice-b.json")
    # The one field that legitimately differs: when each export was written.
    assert before.pop("exported_at") != after.pop("exported_at")
    assert after == before
    body = next(m for m in after["messages"] if m["device"] == "laptop")["body_base64"]
    assert base64.b64decode(body) == bytes(range(256))


def test_importing_twice_changes_nothing(store_a: Path, tmp_path: Path) -> None:
    file = tmp_path / "alice.json"
    export(store_a, "alice", file)
    b = tmp_path / "b"
    assert bluewren("import", str(file), data_dir=b).returncode == 0
    snapshot = rows(b, "SELECT conv, seq, sender, cmid, body, created_at FROM messages")
    again = bluewren("import", str(file), data_dir=b)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(
        f"imported alice: messages 0 added, {SENT_BY_ALICE} already present, 0 renumbered"
    )
    assert "memberships 0 added; cursors 0, read_marks 0 set" in again.stdout
    assert rows(b, "SELECT conv, seq, sender, cmid, body, created_at FROM messages") == snapshot
    # Into the store it came from: everything is already there.
    same = bluewren("import", str(file), data_dir=store_a)
    assert same.returncode == 0, same.stderr
    assert f"0 added, {SENT_BY_ALICE} already present" in same.stdout


def test_every_members_export_rebuilds_the_conversations_with_their_numbers(
    store_a: Path, tmp_path: Path
) -> None:
    b = tmp_path / "b"
    for user in ("alice", "bob", "carol"):
        file = tmp_path / f"{user}.json"
        export(store_a, user, file)
        result = bluewren("import", str(file), data_dir=b)
        assert result.returncode == 0, result.stderr
        assert "0 renumbered" in result.stdout
    query = "SELECT conv, seq, sender, device, cmid, body, kind FROM messages ORDER BY conv, seq"
    assert rows(b, query) == rows(store_a, query)
    members = "SELECT conv, user, role, joined_seq FROM members ORDER BY conv, user"
    assert rows(b, members) == rows(store_a, members)
    # The direct pair is known again: creating the chat finds the same conversation.
    assert rows(b, "SELECT * FROM direct_pairs") == rows(store_a, "SELECT * FROM direct_pairs")
    assert rows(b, "SELECT id, kind, title, last_seq FROM conversations ORDER BY id") == rows(
        store_a, "SELECT id, kind, title, last_seq FROM conversations ORDER BY id"
    )


def test_taken_sequence_numbers_are_appended_after_the_end_in_order(
    store_a: Path, tmp_path: Path
) -> None:
    """Store C holds the group under the same id, with other messages at seqs 1..3:
    alice's messages from seq 2 on cannot keep their numbers; they go after the end, in
    their order, and nothing already in C moves."""
    file = tmp_path / "alice.json"
    data = export(store_a, "alice", file)
    group = data["memberships"][0]["conv"]
    c = tmp_path / "c"
    c.mkdir()

    async def fill() -> None:
        async with SQLiteStore(c / "bluewren.db") as store:
            made = await store.create_group("dave", "ops", ["alice"])
            assert made.id == group
            for i in range(3):
                await store.append(group, "dave", "pc", 100 + i, f"d{i}".encode())

    asyncio.run(fill())
    result = bluewren("import", str(file), data_dir=c)
    assert result.returncode == 0, result.stderr
    alice_group = [m for m in data["messages"] if m["conv"] == group]
    assert f"{len(alice_group)} renumbered" in result.stdout  # her first is seq 2: taken
    stored = rows(c, f"SELECT seq, sender, body FROM messages WHERE conv = {group} ORDER BY seq")
    assert [(s, u) for s, u, _ in stored[:3]] == [(1, "dave"), (2, "dave"), (3, "dave")]
    assert [body for _, _, body in stored[3:]] == [
        base64.b64decode(m["body_base64"]) for m in alice_group
    ]
    assert [s for s, _, _ in stored] == list(range(1, len(stored) + 1))
    (last,) = rows(c, f"SELECT last_seq FROM conversations WHERE id = {group}")[0]
    assert last == len(stored)
    # alice was already a member: her membership is left as it was (member, not owner)
    assert rows(c, f"SELECT role FROM members WHERE conv = {group} AND user = 'alice'") == [
        ("member",)
    ]
    again = bluewren("import", str(file), data_dir=c)
    assert "0 added" in again.stdout
    assert len(rows(c, f"SELECT 1 FROM messages WHERE conv = {group}")) == len(stored)


def test_a_conversation_of_another_kind_is_a_conflict_and_nothing_is_written(
    store_a: Path, tmp_path: Path
) -> None:
    file = tmp_path / "alice.json"
    export(store_a, "alice", file)
    d = tmp_path / "d"
    d.mkdir()

    async def fill() -> None:
        async with SQLiteStore(d / "bluewren.db") as store:
            await store.create_direct("x", "y")  # id 1: the group's id in store A

    asyncio.run(fill())
    result = bluewren("import", str(file), data_dir=d)
    assert result.returncode == 5
    assert result.stderr.strip().splitlines()[-1] == (
        "bluewren: conversation 1 is a direct conversation in the store but a group one in "
        "the export: this export belongs to another store (nothing was imported)"
    )
    assert rows(d, "SELECT COUNT(*) FROM messages") == [(0,)]
    assert rows(d, "SELECT COUNT(*) FROM conversations") == [(1,)]


GOOD_MESSAGE = {
    "conv": 1,
    "seq": 1,
    "device": "d",
    "cmid": 1,
    "kind": "text",
    "created_at": 1.0,
    "body_base64": "aGk=",
}


def test_messages_in_a_conversation_left_and_unknown_to_the_store_are_skipped(
    tmp_path: Path,
) -> None:
    file = tmp_path / "left.json"
    file.write_text(
        json.dumps(
            {
                "format": "bluewren-user-export/1",
                "user": "eve",
                "exported_at": 1.0,
                "memberships": [],
                "messages": [{**GOOD_MESSAGE, "conv": 7}],
                "cursors": [],
                "read_marks": [],
            }
        )
    )
    result = bluewren("import", str(file), data_dir=tmp_path / "e")
    assert result.returncode == 0, result.stderr
    assert "0 added, 0 already present, 0 renumbered, 1 skipped" in result.stdout
    assert "skipped 1 messages in conversations the store does not have" in result.stderr
    assert "(7)" in result.stderr


def _export_text(**changes: Any) -> str:
    data: dict[str, Any] = {
        "format": "bluewren-user-export/1",
        "user": "alice",
        "exported_at": 1.0,
        "memberships": [
            {"conv": 1, "kind": "group", "title": "t", "role": "owner", "joined_seq": 0}
        ],
        "messages": [GOOD_MESSAGE],
        "cursors": [],
        "read_marks": [],
    }
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    head = json.dumps({k: v for k, v in data.items() if k != "messages"}, indent=1)
    if "messages" not in data:
        return head
    lines = ",\n  ".join(json.dumps(m) for m in data["messages"])
    return head[:-2] + ',\n "messages": [\n  ' + lines + "\n ]\n}\n"


def _line(text: str, index: int) -> int:
    """The line number of messages[index] in an export laid out like the real one."""
    start = next(i for i, line in enumerate(text.splitlines()) if '"messages": [' in line)
    return start + 2 + index


BAD_FILES: dict[str, tuple[str, str]] = {
    # case: (file text, what the error line says after "bluewren: FILE: ")
    "not json": ("{oops", "not JSON: Expecting property name enclosed in double quotes (line 1"),
    "a list": ("[]", "not a BlueWren user export: a JSON list"),
    "foreign format": (
        json.dumps({"format": "someone-else/3"}),
        "not a BlueWren user export (format 'someone-else/3')",
    ),
    "newer version": (
        _export_text(format="bluewren-user-export/2"),
        "format version '2' is not supported (this bluewren reads "
        "'bluewren-user-export/1', version 1)",
    ),
    "no format": (_export_text(format=None), "missing key 'format'"),
    "no user": (_export_text(user=None), "missing key 'user'"),
    "no messages": (_export_text(messages=None), "missing key 'messages'"),
    "message without seq": (
        _export_text(
            messages=[GOOD_MESSAGE, {k: v for k, v in GOOD_MESSAGE.items() if k != "seq"}]
        ),
        "messages[1] (line {1}): missing key 'seq'",
    ),
    "bad base64": (
        _export_text(messages=[{**GOOD_MESSAGE, "body_base64": "***"}]),
        "messages[0] (line {0}): body_base64 is not valid base64",
    ),
    "negative seq": (
        _export_text(messages=[{**GOOD_MESSAGE, "seq": -1}]),
        "messages[0] (line {0}): seq must be an integer in 1..",
    ),
    "two messages at one seq": (
        _export_text(messages=[GOOD_MESSAGE, {**GOOD_MESSAGE, "cmid": 2}]),
        "messages[1] (line {1}): a second message at conversation 1, seq 1",
    ),
    "bad role": (
        _export_text(
            memberships=[
                {"conv": 1, "kind": "group", "title": "t", "role": "king", "joined_seq": 0}
            ]
        ),
        "memberships[0]: role must be one of owner, admin, member, got 'king'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_exits_2_naming_what_is_wrong_and_writes_nothing(
    case: str, tmp_path: Path
) -> None:
    text, expected = BAD_FILES[case]
    if "(line {" in expected:
        expected = expected.format(_line(text, 0), _line(text, 1))
        assert "(line 1" in expected  # the message lines follow the memberships: 1x
    file = tmp_path / "bad.json"
    file.write_text(text)
    target = tmp_path / "target"
    result = bluewren("import", str(file), data_dir=target)
    assert result.returncode == 2, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"bluewren: {file}: {expected}"), line
    assert not (target / "bluewren.db").exists()


def test_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = bluewren("import", str(tmp_path / "nope.json"), data_dir=tmp_path / "t")
    assert result.returncode == 1
    assert result.stderr.strip() == f"bluewren: cannot read {tmp_path / 'nope.json'}: no such file"


def test_help_of_import_states_the_exit_statuses() -> None:
    result = bluewren("import", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "4 no such user or conversation" in text
    assert "2 bad arguments, configuration or import file" in text
    assert "5 the import does not fit the store" in text
    assert "stopped node" in text
