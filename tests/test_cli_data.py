"""The data commands of the CLI, run as subprocesses: export, erase, users, groups.

A store is filled in-process (a group, a direct chat, messages) in a data directory,
then ``python -m bluewren ...`` reads or changes it; each test checks the output, the
exit status and, for erase, what the store holds afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from bluewren.store.sqlite import SQLiteStore
from conftest import bluewren_cli as bluewren


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A store with group 'ops' (alice owner, bob, carol), a direct alice-bob chat,
    600 messages from alice, 2 from bob."""
    path = tmp_path / "data"
    path.mkdir()

    async def fill() -> dict[str, int]:
        async with SQLiteStore(path / "bluewren.db") as store:
            group = await store.create_group("alice", "ops", ["bob", "carol"])
            direct = await store.create_direct("alice", "bob")
            for i in range(600):
                await store.append(group.id, "alice", "phone", i + 1, f"a{i}".encode())
            await store.append(direct.id, "bob", "laptop", 1, b"hi alice")
            await store.append(group.id, "bob", "laptop", 2, b"hi all")
            await store.set_cursor("alice", "phone", group.id, 10)
            await store.mark_read(group.id, "alice", 5)
            return {"group": group.id, "direct": direct.id}

    ids = asyncio.run(fill())
    (path / "ids.json").write_text(json.dumps(ids))
    return path


def ids(data_dir: Path) -> dict[str, int]:
    result: dict[str, int] = json.loads((data_dir / "ids.json").read_text())
    return result


def test_export_writes_the_users_data_as_json_with_a_progress_bar(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "alice.json"
    result = bluewren("export", "alice", "--out", str(out), data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr
    assert "600/600" in result.stderr
    assert "exported alice (600 messages)" in result.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["user"] == "alice"
    assert data["format"].startswith("bluewren-user-export/")
    assert len(data["messages"]) == 600
    first = data["messages"][0]
    assert base64.b64decode(first["body_base64"]) == b"a0"
    assert first["device"] == "phone"
    assert {m["conv"] for m in data["memberships"]} == set(ids(data_dir).values())
    assert data["cursors"] == [{"device": "phone", "conv": ids(data_dir)["group"], "seq": 10}]
    assert data["read_marks"] == [{"conv": ids(data_dir)["group"], "seq": 5}]


def test_export_to_stdout_is_the_same_json(data_dir: Path) -> None:
    result = bluewren("export", "bob", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    # ordered by conversation then seq: the group (created first), then the direct chat
    assert [base64.b64decode(m["body_base64"]) for m in data["messages"]] == [
        b"hi all",
        b"hi alice",
    ]
    assert len(data["memberships"]) == 2


def test_export_of_an_unknown_user_exits_4_and_writes_nothing(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "nobody.json"
    result = bluewren("export", "nobody", "--out", str(out), data_dir=data_dir)
    assert result.returncode == 4
    assert "no data stored for user 'nobody'" in result.stderr
    assert not out.exists()


def test_commands_on_a_missing_store_exit_1_with_one_clear_line(tmp_path: Path) -> None:
    for args in (("export", "alice"), ("users", "list"), ("groups", "list")):
        result = bluewren(*args, data_dir=tmp_path / "empty")
        assert result.returncode == 1, args
        assert result.stderr.startswith("bluewren: no store at "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "empty" / "bluewren.db").exists()


def test_erase_needs_yes_then_empties_the_users_data(data_dir: Path) -> None:
    refused = bluewren("erase", "alice", data_dir=data_dir)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    result = bluewren("erase", "alice", "--yes", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "erased alice: messages 600, memberships 2, cursors 1, read_marks 1" in result.stdout

    async def check() -> None:
        async with SQLiteStore(data_dir / "bluewren.db") as store:
            left = await store.export_user("alice")
            assert left["memberships"] == []
            assert left["cursors"] == []
            assert all(m["body_base64"] == "" for m in left["messages"])
            bob = await store.export_user("bob")
            assert len(bob["messages"]) == 2  # other users keep their data

    asyncio.run(check())
    again = bluewren("erase", "nobody", "--yes", data_dir=data_dir)
    assert again.returncode == 4


def test_users_list_names_every_user_with_counts(data_dir: Path) -> None:
    result = bluewren("users", "list", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "alice\t2 conversations\t600 messages",
        "bob\t2 conversations\t2 messages",
        "carol\t1 conversations\t0 messages",
    ]


def test_groups_list_and_show(data_dir: Path) -> None:
    group = ids(data_dir)["group"]
    listed = bluewren("groups", "list", data_dir=data_dir)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [f"{group}\t3 members\tseq 601\tops"]
    shown = bluewren("groups", "show", str(group), data_dir=data_dir)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert (data["conv"], data["kind"], data["title"], data["last_seq"]) == (
        group,
        "group",
        "ops",
        601,
    )
    assert {(m["user"], m["role"]) for m in data["members"]} == {
        ("alice", "owner"),
        ("bob", "member"),
        ("carol", "member"),
    }
    missing = bluewren("groups", "show", "999", data_dir=data_dir)
    assert missing.returncode == 4
    assert "no conversation 999" in missing.stderr
    bad = bluewren("groups", "show", "abc", data_dir=data_dir)
    assert bad.returncode == 2


def test_help_of_the_data_commands_states_the_exit_statuses() -> None:
    for command in ("export", "erase", "users", "groups"):
        result = bluewren(command, "--help")
        assert result.returncode == 0
        assert "4 no such user or conversation" in " ".join(result.stdout.split())
