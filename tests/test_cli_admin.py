"""The mutating user and group commands of the CLI, run as subprocesses: ``users show``,
``users disable`` / ``enable``, ``groups create`` / ``add`` / ``remove`` / ``rename``,
with their error exits; and what a disabled user meets on a running node (refused at
HELLO with 4001, live connections closed), through the CLI and the admin API.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bluewren.client import Client, ClientError
from bluewren.node import Node, NodeConfig
from bluewren.node.commands import CloseCode, ErrorCode
from bluewren.store.sqlite import SQLiteStore
from conftest import bluewren_cli as bluewren

TIMEOUT = 60.0
SECRET = "u" * 48
ADMIN = "admin-token-" + "z" * 20


async def abluewren(*args: str) -> tuple[int, str, str]:
    """The CLI as a subprocess, without blocking the event loop of a running node."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bluewren",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Group 1 'ops' (alice owner, bob, carol), direct chat 2 alice-bob, a few messages."""
    path = tmp_path / "data"
    path.mkdir()

    async def fill() -> None:
        async with SQLiteStore(path / "bluewren.db") as store:
            group = await store.create_group("alice", "ops", ["bob", "carol"])
            direct = await store.create_direct("alice", "bob")
            assert (group.id, direct.id) == (1, 2)
            await store.append(group.id, "alice", "phone", 1, b"hello")
            await store.append(direct.id, "bob", "laptop", 1, b"hi")
            await store.set_cursor("alice", "phone", group.id, 1)

    asyncio.run(fill())
    return path


def show(data_dir: Path, conv: int) -> dict[str, Any]:
    result = bluewren("groups", "show", str(conv), data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# -- users ---------------------------------------------------------------------------


def test_users_show_prints_the_user_as_json(data_dir: Path) -> None:
    result = bluewren("users", "show", "alice", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["user"] == "alice"
    assert data["disabled"] is False
    assert [(c["conv"], c["kind"], c["role"]) for c in data["conversations"]] == [
        (1, "group", "owner"),
        (2, "direct", "member"),
    ]
    assert data["messages_sent"] == 1
    assert data["devices"] == ["phone"]
    missing = bluewren("users", "show", "nobody", data_dir=data_dir)
    assert missing.returncode == 4
    assert missing.stderr.strip() == "bluewren: no such user 'nobody': nothing stored about them"


def test_users_disable_and_enable_are_idempotent_and_shown(data_dir: Path) -> None:
    first = bluewren("users", "disable", "bob", "--reason", "abuse #12", data_dir=data_dir)
    assert (first.returncode, first.stdout) == (0, "disabled bob\n"), first.stderr
    again = bluewren("users", "disable", "bob", data_dir=data_dir)
    assert (again.returncode, again.stdout) == (0, "bob was already disabled\n")
    shown = json.loads(bluewren("users", "show", "bob", data_dir=data_dir).stdout)
    assert (shown["disabled"], shown["disabled_reason"]) == (True, "abuse #12")
    enabled = bluewren("users", "enable", "bob", data_dir=data_dir)
    assert (enabled.returncode, enabled.stdout) == (0, "enabled bob\n")
    twice = bluewren("users", "enable", "bob", data_dir=data_dir)
    assert (twice.returncode, twice.stdout) == (0, "bob was not disabled\n")
    assert json.loads(bluewren("users", "show", "bob", data_dir=data_dir).stdout)["disabled"] is (
        False
    )


def test_users_disable_of_an_unknown_user_exits_4_unless_forced(data_dir: Path) -> None:
    refused = bluewren("users", "disable", "mallory", data_dir=data_dir)
    assert refused.returncode == 4
    assert "no such user 'mallory'" in refused.stderr
    assert "--force" in refused.stderr
    forced = bluewren("users", "disable", "mallory", "--force", data_dir=data_dir)
    assert forced.returncode == 0, forced.stderr
    listed = bluewren("users", "list", data_dir=data_dir).stdout.splitlines()
    assert "mallory\t0 conversations\t0 messages\tdisabled" in listed
    assert "alice\t2 conversations\t1 messages" in listed
    # Now the store knows the id (as disabled): show and enable find it.
    assert json.loads(bluewren("users", "show", "mallory", data_dir=data_dir).stdout)["disabled"]
    assert bluewren("users", "enable", "mallory", data_dir=data_dir).returncode == 0
    assert bluewren("users", "enable", "mallory", data_dir=data_dir).returncode == 4


def test_user_commands_on_a_missing_store_exit_1(tmp_path: Path) -> None:
    for args in (("users", "show", "a"), ("users", "disable", "a"), ("groups", "add", "1", "a")):
        result = bluewren(*args, data_dir=tmp_path / "none")
        assert result.returncode == 1, args
        assert result.stderr.startswith("bluewren: no store at "), result.stderr


# -- groups --------------------------------------------------------------------------


def test_groups_create_prints_the_new_group(data_dir: Path) -> None:
    result = bluewren(
        "groups",
        "create",
        "on-call",
        "--owner",
        "dave",
        "--member",
        "erin",
        "--member",
        "dave",
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["conv"], data["kind"], data["title"]) == (3, "group", "on-call")
    assert [(m["user"], m["role"]) for m in data["members"]] == [
        ("dave", "owner"),
        ("erin", "member"),
    ]
    assert show(data_dir, 3)["title"] == "on-call"


def test_groups_create_and_add_stop_at_max_group_members(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "small.toml"
    config.write_text(f'data_dir = "{data_dir}"\nmax_group_members = 4\n')
    members = [f"--member=u{i}" for i in range(3)]
    fits = bluewren("groups", "create", "four", "--owner", "o", *members, "--config", str(config))
    assert fits.returncode == 0, fits.stderr  # 4 members: the edge
    over = bluewren(
        "groups", "create", "five", "--owner", "o", *members, "--member=u9", "--config", str(config)
    )
    assert over.returncode == 2
    assert "more than max_group_members (4)" in over.stderr
    # group 1 has 3 members: one more fits, two more do not (and nothing is added)
    two = bluewren("groups", "add", "1", "x", "y", "--config", str(config))
    assert two.returncode == 2
    assert "the group would have 5 members" in two.stderr
    one = bluewren("groups", "add", "1", "x", "--config", str(config))
    assert one.returncode == 0, one.stderr
    assert len(show(data_dir, 1)["members"]) == 4


def test_groups_add_reports_added_and_present_members(data_dir: Path) -> None:
    result = bluewren("groups", "add", "1", "dave", "bob", "--role", "admin", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["group 1: added 1 (dave)", "already members: bob"]
    roles = {m["user"]: m["role"] for m in show(data_dir, 1)["members"]}
    assert roles == {"alice": "owner", "bob": "member", "carol": "member", "dave": "admin"}
    joined = {m["user"]: m["joined_seq"] for m in show(data_dir, 1)["members"]}
    assert joined["dave"] == 1  # joins after the message already there


def test_groups_remove_all_or_nothing(data_dir: Path) -> None:
    partly = bluewren("groups", "remove", "1", "carol", "zed", data_dir=data_dir)
    assert partly.returncode == 4
    assert partly.stderr.strip() == (
        "bluewren: not members of conversation 1: 'zed' (nothing was removed)"
    )
    assert len(show(data_dir, 1)["members"]) == 3
    orphan = bluewren("groups", "remove", "1", "alice", data_dir=data_dir)
    assert orphan.returncode == 2
    assert "without an owner" in orphan.stderr
    done = bluewren("groups", "remove", "1", "carol", "bob", data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "group 1: removed 2 (carol, bob)\n"
    assert [m["user"] for m in show(data_dir, 1)["members"]] == ["alice"]


def test_groups_rename(data_dir: Path) -> None:
    result = bluewren("groups", "rename", "1", "ops and on-call", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "group 1: renamed from 'ops' to 'ops and on-call'\n"
    assert show(data_dir, 1)["title"] == "ops and on-call"


@pytest.mark.parametrize(
    "args",
    [
        ("groups", "add", "99", "dave"),
        ("groups", "remove", "99", "dave"),
        ("groups", "rename", "99", "x"),
        ("groups", "show", "99"),
    ],
)
def test_group_commands_on_an_unknown_group_exit_4(data_dir: Path, args: tuple[str, ...]) -> None:
    result = bluewren(*args, data_dir=data_dir)
    assert result.returncode == 4
    assert result.stderr.strip() == "bluewren: no conversation 99"


@pytest.mark.parametrize("args", [("groups", "add", "2", "dave"), ("groups", "rename", "2", "x")])
def test_group_commands_on_a_direct_chat_exit_2(data_dir: Path, args: tuple[str, ...]) -> None:
    result = bluewren(*args, data_dir=data_dir)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "bluewren: conversation 2 is a direct conversation, not a group"
    )


def test_help_says_which_commands_are_safe_while_the_node_runs() -> None:
    groups = " ".join(bluewren("groups", "--help").stdout.split())
    assert "Run it on a stopped node" in groups
    users = " ".join(bluewren("users", "--help").stdout.split())
    assert "safe while the node runs" in users
    for args in (("groups", "add", "--help"), ("users", "disable", "--help")):
        text = " ".join(bluewren(*args).stdout.split())
        assert "4 no such user or conversation" in text


# -- a disabled user on a running node ------------------------------------------------


def test_a_user_disabled_from_the_cli_is_closed_and_refused_by_the_running_node(
    data_dir: Path,
) -> None:
    async def main() -> None:
        config = NodeConfig(
            port=0,
            data_dir=data_dir,
            token_secret=SECRET,
            disabled_refresh_interval=0.2,
        )
        async with Node(config) as node:
            bob = Client(node.url, node.issuer.mint("bob", "laptop"), reconnect=False)
            alice = Client(node.url, node.issuer.mint("alice", "phone"), reconnect=False)
            await bob.connect()
            await alice.connect()
            status, out, err = await abluewren(
                "users", "disable", "bob", "--data-dir", str(data_dir)
            )
            assert (status, out) == (0, "disabled bob\n"), err
            # Within the refresh interval (0.2 s) the node closes bob's connection.
            assert await asyncio.wait_for(bob.wait_closed(), 10) == CloseCode.UNAUTHORIZED
            again = Client(node.url, node.issuer.mint("bob", "phone"), reconnect=False)
            with pytest.raises(ClientError) as info:
                await again.connect()
            assert info.value.code == ErrorCode.AUTH_FAILED
            assert "'bob' is disabled" in str(info.value)
            assert await asyncio.wait_for(again.wait_closed(), 10) == 4001
            await alice.sync()  # other users are untouched
            status, _, err = await abluewren("users", "enable", "bob", "--data-dir", str(data_dir))
            assert status == 0, err
            for _ in range(100):  # until the node has read the list again
                if "bob" not in node.disabled:
                    break
                await asyncio.sleep(0.05)
            back = Client(node.url, node.issuer.mint("bob", "phone"), reconnect=False)
            await back.connect()
            await back.close()
            await alice.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


async def _http(port: int, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    top, _, payload = raw.partition(b"\r\n\r\n")
    return int(top.split()[1]), json.loads(payload)


def test_admin_api_disables_a_user_at_once_and_enables_them(data_dir: Path) -> None:
    async def main() -> None:
        config = NodeConfig(
            port=0,
            metrics_port=0,
            admin_token=ADMIN,
            data_dir=data_dir,
            token_secret=SECRET,
            disabled_refresh_interval=3600,  # only the API can make it quick
        )
        async with Node(config) as node:
            phone = Client(node.url, node.issuer.mint("bob", "phone"), reconnect=False)
            laptop = Client(node.url, node.issuer.mint("bob", "laptop"), reconnect=False)
            await phone.connect()
            await laptop.connect()
            status, body = await _http(
                node.metrics_port, "/admin/users/bob/disable", b'{"reason": "spam"}'
            )
            assert (status, body) == (
                200,
                {"user": "bob", "disabled": True, "changed": True, "closed": 2},
            )
            for client in (phone, laptop):
                assert await asyncio.wait_for(client.wait_closed(), 10) == 4001
            refused = Client(node.url, node.issuer.mint("bob", "phone"), reconnect=False)
            with pytest.raises(ClientError):
                await refused.connect()
            shown = await abluewren("users", "show", "bob", "--data-dir", str(data_dir))
            assert json.loads(shown[1])["disabled_reason"] == "spam"  # in the store
            status, body = await _http(node.metrics_port, "/admin/users/bob/enable")
            assert (status, body["disabled"], body["changed"]) == (200, False, True)
            back = Client(node.url, node.issuer.mint("bob", "phone"), reconnect=False)
            await back.connect()
            await back.close()
            status, body = await _http(node.metrics_port, "/admin/users/bob/disable", b"{oops")
            assert (status, body["error"]) == (400, "bad_request")

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_a_user_disabled_while_the_on_connect_hook_decides_is_refused(data_dir: Path) -> None:
    deciding = asyncio.Event()
    decide = asyncio.Event()

    async def on_connect(identity: Any, headers: Any) -> bool:
        deciding.set()
        await decide.wait()
        return True

    async def main() -> None:
        config = NodeConfig(port=0, data_dir=data_dir, token_secret=SECRET)
        async with Node(config, on_connect=on_connect) as node:
            bob = Client(node.url, node.issuer.mint("bob", "phone"), reconnect=False)
            connecting = asyncio.ensure_future(bob.connect())
            await asyncio.wait_for(deciding.wait(), 10)
            assert await node.disabled.set("bob", True, "during the hook") == (True, 0)
            decide.set()
            with pytest.raises(ClientError) as info:
                await connecting
            assert info.value.code == ErrorCode.AUTH_FAILED
            assert await asyncio.wait_for(bob.wait_closed(), 10) == 4001
            assert node.online("bob") == []

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_a_version_1_store_gains_the_disabled_users_table_when_opened(tmp_path: Path) -> None:
    """Migration 2: a store written before disabled users existed keeps its data and
    gets the (empty) list; the store methods then read and change it."""
    import sqlite3

    from bluewren.store.migrations import MIGRATIONS, apply_migrations, schema_version

    (tmp_path / "old").mkdir()
    path = tmp_path / "old" / "bluewren.db"
    conn = sqlite3.connect(path, isolation_level=None)
    apply_migrations(conn, MIGRATIONS[:1])
    conn.execute("INSERT INTO conversations (kind, title, created_at) VALUES ('group', 'g', 0)")
    conn.execute("INSERT INTO members VALUES (1, 'ann', 'owner', 0)")
    conn.close()
    # Reading commands open the file read-only: they work on the old schema as it is.
    listed = bluewren("users", "list", data_dir=tmp_path / "old")
    assert (listed.returncode, listed.stdout) == (0, "ann\t1 conversations\t0 messages\n")

    async def main() -> None:
        async with SQLiteStore(path) as store:
            assert (await store.conversation(1)).title == "g"
            assert await store.disabled_users() == {}
            assert await store.set_user_disabled("bob", True, "why") is True
            assert await store.set_user_disabled("bob", True, "again") is False
            assert await store.disabled_users() == {"bob": "why"}
            assert await store.set_user_disabled("bob", False) is True
            assert await store.set_user_disabled("bob", False) is False
            assert await store.disabled_users() == {}

    asyncio.run(main())
    conn = sqlite3.connect(path)
    assert schema_version(conn) == 2
    conn.close()


def test_a_refresh_overtaken_by_an_admin_change_does_not_undo_it() -> None:
    """A store read started before ``set`` returns the old list; it must not win."""

    class Store:
        def __init__(self) -> None:
            self.rows: dict[str, str] = {}
            self.reading = asyncio.Event()
            self.release = asyncio.Event()

        async def disabled_users(self) -> dict[str, str]:
            snapshot = dict(self.rows)
            self.reading.set()
            await self.release.wait()
            return snapshot

        async def set_user_disabled(self, user: str, disabled: bool, reason: str) -> bool:
            if disabled:
                self.rows[user] = reason
            else:
                self.rows.pop(user, None)
            return True

    class FakeNode:
        def __init__(self) -> None:
            self.store = Store()

        def online(self, user: str) -> list[Any]:
            return []

    async def main() -> None:
        from bluewren.node.users import DisabledUsers

        node = FakeNode()
        disabled = DisabledUsers(node)  # type: ignore[arg-type]
        refresh = asyncio.ensure_future(disabled.refresh())
        await node.store.reading.wait()  # the read has its (empty) snapshot
        await disabled.set("mallory", True)
        node.store.release.set()
        await refresh
        assert "mallory" in disabled
        # The next refresh reads the store as it is now.
        node.store.reading.clear()
        node.store.release.set()
        await disabled.refresh()
        assert "mallory" in disabled

    asyncio.run(main())
