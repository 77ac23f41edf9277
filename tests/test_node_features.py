"""Conversation features and limits of the node, through real sockets on loopback.

Presence, typing, read and delivery receipts, history paging, group roles, the
configured limits at their edges, and the embedding hooks. Each test starts a node
in-process on port 0 with its own data directory; every test runs on stdlib asyncio and
on uvloop. Rate-limit edges are made deterministic without timing: either the commands
share one WebSocket message (one clock reading for all of them) or the refill rate is so
low that no token can come back during the test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest
from websockets.asyncio.client import connect as ws_connect

from bluewren import decode_frames, encode_frames
from bluewren.auth import Identity
from bluewren.client import Client, ClientError, ConnectionLost, Event
from bluewren.node import CloseCode, ErrorCode, Kind, Node, NodeConfig, NodeConfigError
from bluewren.node.hooks import MessageContext, Reject, Rewrite
from bluewren.node.limits import TokenBucket
from bluewren.store import SQLiteStore, StoredMessage
from bluewren.store.guarded import GuardedStore
from conftest import NodeRunner, NodeScenario, node_runner

SECRET = "s" * 48
TEST_TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parent.parent

Scenario = NodeScenario
Run = NodeRunner


@pytest.fixture
def run(loop_name: str, tmp_path: Path) -> NodeRunner:
    """Runs a scenario against a fresh node on the parametrised event loop.

    Keyword arguments are NodeConfig fields, except ``hooks`` (Node's hook arguments)."""
    return node_runner(loop_name, tmp_path, timeout=TEST_TIMEOUT, token_secret=SECRET)


async def connect(node: Node, user: str, device: str = "d1", protocol: str = "binary") -> Client:
    client = Client(node.url, node.issuer.mint(user, device), protocol=protocol)  # type: ignore[arg-type]
    await client.connect()
    return client


async def next_of(client: Client, kind: str) -> Event:
    """The next pushed event of ``kind`` (others are skipped)."""
    while True:
        event = await client.next_event(10)
        if event.kind == kind:
            return event


async def close_all(*clients: Client) -> None:
    for c in clients:
        await c.close()


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Polls ``check`` until it holds (bounded by the scenario's timeout)."""
    while not await check():  # noqa: ASYNC110 (the condition lives in the node)
        await asyncio.sleep(0.01)


PROTOCOLS = pytest.mark.parametrize("protocol", ["binary", "json"])


# -- presence ------------------------------------------------------------------------


@PROTOCOLS
def test_presence_goes_online_on_first_device_and_offline_only_when_the_last_one_leaves(
    run: Run, protocol: str
) -> None:
    async def scenario(node: Node) -> None:
        await node.store.create_direct("alice", "bob")
        alice = await connect(node, "alice", protocol=protocol)
        bob_phone = await connect(node, "bob", "phone")
        online = await next_of(alice, "presence")
        assert online.data["users"] == [{"user": "bob", "status": "online", "last_seen": None}]
        bob_laptop = await connect(node, "bob", "laptop")
        await bob_phone.close()
        await bob_laptop.close()
        # Had the second device or the first disconnect been announced, an extra
        # event would come before this one.
        offline = await next_of(alice, "presence")
        (entry,) = offline.data["users"]
        assert (entry["user"], entry["status"]) == ("bob", "offline")
        assert isinstance(entry["last_seen"], float)
        await alice.close()

    run(scenario)


def test_presence_is_not_pushed_to_users_who_share_no_conversation(run: Run) -> None:
    async def scenario(node: Node) -> None:
        await node.store.create_direct("alice", "bob")
        await node.store.create_direct("alice", "zed")
        zed = await connect(node, "zed")
        bob = await connect(node, "bob")
        alice = await connect(node, "alice")
        # zed and bob share a conversation only with alice: each hears of alice alone.
        for client in (zed, bob):
            event = await next_of(client, "presence")
            assert [e["user"] for e in event.data["users"]] == ["alice"]
        # bob's going offline reaches alice, not zed: zed's next presence is alice's.
        await bob.close()
        gone = await next_of(alice, "presence")
        assert gone.data["users"][0]["user"] == "bob"
        await alice.close()
        event = await next_of(zed, "presence")
        assert event.data["users"][0]["user"] == "alice"
        assert event.data["users"][0]["status"] == "offline"
        await zed.close()

    run(scenario)


@PROTOCOLS
def test_presence_query_reports_status_and_last_seen(run: Run, protocol: str) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice", protocol=protocol)
        bob = await connect(node, "bob")
        got = await alice.presence(["bob", "carol"])
        assert (got["bob"].status, got["bob"].last_seen) == ("online", None)
        assert (got["carol"].status, got["carol"].last_seen) == ("offline", None)
        await bob.close()

        async def bob_offline() -> bool:
            return (await alice.presence(["bob"]))["bob"].status == "offline"

        await until(bob_offline)
        seen = (await alice.presence(["bob"]))["bob"].last_seen
        assert seen is not None
        assert seen > 0
        await alice.close()

    run(scenario)


def test_presence_query_over_max_presence_query_is_refused(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        assert len(await alice.presence(["a", "b", "c"])) == 3
        with pytest.raises(ClientError) as info:
            await alice.presence(["a", "b", "c", "d"])
        assert info.value.code == ErrorCode.LIMIT_EXCEEDED
        assert "max_presence_query" in str(info.value)
        await alice.close()

    run(scenario, max_presence_query=3)


# -- typing --------------------------------------------------------------------------


@PROTOCOLS
def test_typing_reaches_the_other_online_members_and_is_not_stored(run: Run, protocol: str) -> None:
    async def scenario(node: Node) -> None:
        group = await node.store.create_group("alice", "g", ["bob", "carol"])
        alice = await connect(node, "alice", protocol=protocol)
        alice_tablet = await connect(node, "alice", "tablet")
        bob = await connect(node, "bob", protocol=protocol)
        carol = await connect(node, "carol")
        await alice.typing(group.id)
        for client in (bob, carol):
            event = await next_of(client, "typing")
            assert (event.conv, event.sender, event.device) == (group.id, "alice", "d1")
        # The typist's own devices are not told; the next typing alice_tablet sees is bob's.
        await bob.typing(group.id)
        event = await next_of(alice_tablet, "typing")
        assert event.sender == "bob"
        assert await node.store.last_seq(group.id) == 0
        await close_all(alice, alice_tablet, bob, carol)

    run(scenario)


def test_typing_by_a_non_member_is_refused(run: Run) -> None:
    async def scenario(node: Node) -> None:
        group = await node.store.create_group("alice", "g", ["bob"])
        mallory = await connect(node, "mallory")
        await mallory.typing(group.id)
        error = await next_of(mallory, "error")
        assert error.data["code"] == ErrorCode.NOT_MEMBER
        assert error.data["command"] == "typing"
        await mallory.close()

    run(scenario)


def test_typing_past_max_typing_per_second_is_rate_limited_with_retry_after(run: Run) -> None:
    async def scenario(node: Node) -> None:
        chat = await node.store.create_direct("alice", "bob")
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        # Four TYPING in one message: all meet the same clock, three tokens exist.
        frames = [(int(Kind.TYPING), 0, chat.id, 0, 0, b"")] * 4
        await bob.raw_message(2, encode_frames(frames))
        error = await next_of(bob, "error")
        assert error.data["code"] == ErrorCode.RATE_LIMITED
        assert error.data["name"] == "RATE_LIMITED"
        assert 0 < error.data["retry_after"] <= 1.0
        for _ in range(3):
            assert (await next_of(alice, "typing")).sender == "bob"
        await bob.send(chat.id, "sentinel")  # the connection stays usable
        # The fourth TYPING never reached alice: the next thing after three is the message.
        event = await alice.next_event(10)
        assert (event.kind, event.body) == ("deliver", b"sentinel")
        await close_all(alice, bob)

    run(scenario, max_typing_per_second=3)


# -- receipts ------------------------------------------------------------------------


@PROTOCOLS
def test_read_receipt_moves_the_mark_forward_only_and_is_pushed_to_members(
    run: Run, protocol: str
) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice", protocol=protocol)
        bob = await connect(node, "bob", protocol=protocol)
        bob_tablet = await connect(node, "bob", "tablet")
        chat = await alice.create_direct("bob")
        for text in ("one", "two", "three"):
            await alice.send(chat.conv, text)
        assert await bob.mark_read(chat.conv, 2) == 2
        receipt = await next_of(alice, "receipt")
        assert (receipt.conv, receipt.seq, receipt.sender) == (chat.conv, 2, "bob")
        assert receipt.data["type"] == "read"
        # The reader's other device learns it too (to clear its unread badge).
        mine = await next_of(bob_tablet, "receipt")
        assert (mine.seq, mine.data["type"]) == (2, "read")
        assert await bob.mark_read(chat.conv, 1) == 2  # never backwards, nothing pushed
        assert await bob.mark_read(chat.conv, 3) == 3
        receipt = await next_of(alice, "receipt")
        assert receipt.seq == 3  # not a second receipt for 2
        assert await node.store.read_seq(chat.conv, "bob") == 3
        with pytest.raises(ClientError) as info:
            await bob.mark_read(chat.conv, 99)
        assert info.value.code == ErrorCode.BAD_REQUEST
        await close_all(alice, bob, bob_tablet)

    run(scenario)


@PROTOCOLS
def test_cursor_confirmation_tells_the_senders_devices_delivered_up_to_seq(
    run: Run, protocol: str
) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice", protocol=protocol)
        alice_tablet = await connect(node, "alice", "tablet")
        bob = await connect(node, "bob")
        chat = await alice.create_direct("bob")
        await alice.send(chat.conv, "one")
        await alice.send(chat.conv, "two")
        await bob.confirm(chat.conv, 2)
        for device in (alice, alice_tablet):
            receipt = await next_of(device, "receipt")
            assert (receipt.conv, receipt.seq, receipt.sender) == (chat.conv, 2, "bob")
            assert receipt.data["type"] == "delivered"
        await close_all(alice, alice_tablet, bob)

    run(scenario)


def test_receipts_are_not_pushed_in_groups_above_receipts_max_members(run: Run) -> None:
    async def scenario(node: Node) -> None:
        big = await node.store.create_group("alice", "big", ["bob", "carol"])
        small = await node.store.create_group("alice", "small", ["bob"])
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        await alice.send(big.id, "hi all")
        await alice.send(small.id, "hi bob")
        assert await bob.mark_read(big.id, 1) == 1  # stored, not pushed (3 members > 2)
        assert await bob.mark_read(small.id, 1) == 1
        receipt = await next_of(alice, "receipt")
        assert receipt.conv == small.id
        assert await node.store.read_seq(big.id, "bob") == 1
        await close_all(alice, bob)

    run(scenario, receipts_max_members=2)


# -- history -------------------------------------------------------------------------


@PROTOCOLS
def test_history_pages_backwards_and_forwards_with_the_limit_capped(
    run: Run, protocol: str
) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice", protocol=protocol)
        chat = await alice.create_direct("bob")
        for i in range(1, 13):
            await alice.send(chat.conv, f"m{i}")
        newest = await alice.history(chat.conv)
        assert [m.seq for m in newest.messages] == [8, 9, 10, 11, 12]
        assert newest.more
        assert newest.messages[0].body == b"m8"
        assert newest.messages[0].sender == "alice"
        page = await alice.history(chat.conv, before_seq=8, limit=3)
        assert ([m.seq for m in page.messages], page.more) == ([5, 6, 7], True)
        first = await alice.history(chat.conv, before_seq=3, limit=3)
        assert ([m.seq for m in first.messages], first.more) == ([1, 2], False)
        tail = await alice.history(chat.conv, after_seq=10)
        assert ([m.seq for m in tail.messages], tail.more) == ([11, 12], False)
        capped = await alice.history(chat.conv, after_seq=0, limit=1000)
        assert ([m.seq for m in capped.messages], capped.more) == ([1, 2, 3, 4, 5], True)
        with pytest.raises(ClientError) as info:
            await alice.history(chat.conv, before_seq=5, after_seq=1)
        assert info.value.code == ErrorCode.BAD_REQUEST
        await alice.close()

    run(scenario, max_history_page=5)


def test_history_carries_binary_bodies_as_base64_in_json(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice", protocol="json")
        chat = await alice.create_direct("bob")
        await alice.send(chat.conv, b"\xff\x00bin")
        await alice.send(chat.conv, "text")
        async with ws_connect(node.url, subprotocols=["bluewren.json.v1"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"kind": "hello", "token": node.issuer.mint("bob", "d")}))
            assert json.loads(await ws.recv())["kind"] == "welcome"
            await ws.send(json.dumps({"kind": "history", "conv": chat.conv, "cmid": 4}))
            page = json.loads(await ws.recv())
        assert page["kind"] == "history"
        assert (page["conv"], page["cmid"], page["more"]) == (chat.conv, 4, False)
        first, second = page["messages"]
        assert first["body_b64"] == "/wBiaW4="
        assert "body" not in first
        assert (second["seq"], second["sender"], second["body"]) == (2, "alice", "text")
        got = await alice.history(chat.conv)
        assert [m.body for m in got.messages] == [b"\xff\x00bin", b"text"]
        await alice.close()

    run(scenario)


def test_history_hides_messages_from_before_a_member_joined_and_refuses_non_members(
    run: Run,
) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        group = await alice.create_group("g", [])
        for text in ("a", "b", "c"):
            await alice.send(group.conv, text)
        await alice.add_members(group.conv, ["carol"])
        await alice.send(group.conv, "d")
        carol = await connect(node, "carol")
        page = await carol.history(group.conv)
        assert [(m.seq, m.body) for m in page.messages] == [(4, b"d")]
        assert not page.more
        before = await carol.history(group.conv, before_seq=4)
        assert before.messages == []
        mallory = await connect(node, "mallory")
        with pytest.raises(ClientError) as info:
            await mallory.history(group.conv)
        assert info.value.code == ErrorCode.NOT_MEMBER
        await close_all(alice, carol, mallory)

    run(scenario)


# -- groups --------------------------------------------------------------------------


def test_only_owners_and_admins_rename_and_admins_cannot_touch_owners(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        carol = await connect(node, "carol")
        group = await alice.create_group("team", ["bob", "carol"])
        with pytest.raises(ClientError) as info:
            await bob.rename(group.conv, "mine")
        assert info.value.code == ErrorCode.FORBIDDEN
        promoted = await alice.set_role(group.conv, "bob", "admin")
        assert (promoted.change, promoted.members["bob"]) == ("role_changed", "admin")
        renamed = await bob.rename(group.conv, "bob's team")
        assert (renamed.change, renamed.title) == ("renamed", "bob's team")
        pushed = await next_of(carol, "conversation")
        while pushed.data["change"] != "renamed":
            pushed = await next_of(carol, "conversation")
        assert pushed.data["title"] == "bob's team"
        for attempt in (
            bob.set_role(group.conv, "carol", "owner"),
            bob.set_role(group.conv, "alice", "member"),
            bob.remove_member(group.conv, "alice"),
            carol.set_role(group.conv, "carol", "admin"),
        ):
            with pytest.raises(ClientError) as info:
                await attempt
            assert info.value.code == ErrorCode.FORBIDDEN
        assert (await bob.set_role(group.conv, "carol", "admin")).members["carol"] == "admin"
        removed = await bob.remove_member(group.conv, "carol")
        assert set(removed.members) == {"alice", "bob"}
        with pytest.raises(ClientError) as info:
            await alice.set_role(group.conv, "bob", "king")
        assert info.value.code == ErrorCode.BAD_REQUEST
        await close_all(alice, bob, carol)

    run(scenario)


def test_last_owner_cannot_leave_or_step_down_until_ownership_is_handed_over(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        group = await alice.create_group("g", ["bob"])
        for attempt in (
            alice.leave(group.conv),
            alice.set_role(group.conv, "alice", "member"),
            alice.remove_member(group.conv, "alice"),
        ):
            with pytest.raises(ClientError) as info:
                await attempt
            assert info.value.code == ErrorCode.FORBIDDEN
            assert "last owner" in str(info.value)
        await alice.set_role(group.conv, "bob", "owner")
        left = await alice.leave(group.conv)
        assert left.members == {"bob": "owner"}
        # Alone, the last owner may leave: nobody is left behind without an owner.
        final = await bob.leave(group.conv)
        assert final.members == {}
        await close_all(alice, bob)

    run(scenario)


def test_direct_conversation_cannot_be_renamed_or_left(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        for attempt in (alice.rename(chat.conv, "x"), alice.leave(chat.conv)):
            with pytest.raises(ClientError) as info:
                await attempt
            assert info.value.code == ErrorCode.BAD_REQUEST
        await alice.close()

    run(scenario)


def test_message_reaches_every_online_member_of_a_10000_member_group(run: Run) -> None:
    async def scenario(node: Node) -> None:
        users = [f"user{i:05d}" for i in range(10_000)]
        group = await node.store.create_group("boss", "everyone", users)
        clients = await asyncio.gather(*(connect(node, u) for u in users[:200]))
        boss = await connect(node, "boss")
        ack = await boss.send(group.id, "all hands at 10")
        assert ack.seq == 1

        async def got_it(client: Client) -> None:
            event = await next_of(client, "deliver")
            assert (event.conv, event.seq, event.body) == (group.id, 1, b"all hands at 10")

        await asyncio.gather(*(got_it(c) for c in clients))
        await close_all(boss, *clients)

    run(scenario)


# -- limits --------------------------------------------------------------------------


def test_send_burst_is_allowed_and_the_next_send_is_rate_limited(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        for i in range(5):
            await alice.send(chat.conv, f"m{i}")
        with pytest.raises(ClientError) as info:
            await alice.send(chat.conv, "one too many")
        assert info.value.code == ErrorCode.RATE_LIMITED
        assert info.value.retry_after is not None
        assert info.value.retry_after > 1.0
        assert await node.store.last_seq(chat.conv) == 5  # the refused send was not stored
        # Other commands are not rate-limited by the send bucket.
        assert (await alice.history(chat.conv)).messages[-1].body == b"m4"
        await alice.close()

    # 0.01 token a second: none comes back within the test.
    run(scenario, send_rate=0.01, send_burst=5)


def test_max_devices_per_user_refuses_the_next_device_with_limit_exceeded(run: Run) -> None:
    async def scenario(node: Node) -> None:
        phone = await connect(node, "alice", "phone")
        laptop = await connect(node, "alice", "laptop")
        tablet = Client(node.url, node.issuer.mint("alice", "tablet"), reconnect=False)
        with pytest.raises(ClientError) as info:
            await tablet.connect()
        assert info.value.code == ErrorCode.LIMIT_EXCEEDED
        assert "max_devices_per_user" in str(info.value)
        assert await tablet.wait_closed() == CloseCode.POLICY_VIOLATION
        await tablet.close()
        # A second connection of a device already online is not a new device.
        phone_again = await connect(node, "alice", "phone")
        await close_all(phone, laptop, phone_again)

    run(scenario, max_devices_per_user=2)


def test_max_connections_closes_the_next_connection_with_1013_and_a_retry_hint(
    run: Run,
) -> None:
    async def scenario(node: Node) -> None:
        first = await connect(node, "alice")
        second = await connect(node, "bob")
        third = Client(node.url, node.issuer.mint("carol", "d1"), reconnect=False)
        with pytest.raises(ConnectionLost) as info:
            await third.connect()
        assert info.value.close_code == CloseCode.TRY_AGAIN_LATER == 1013
        assert "retry after 7 s" in info.value.reason
        await third.close()
        await first.close()

        async def admitted() -> bool:
            client = Client(node.url, node.issuer.mint("carol", "d1"), reconnect=False)
            try:
                await client.connect()
            except ConnectionLost:
                return False
            await client.close()
            return True

        await until(admitted)
        await second.close()

    run(scenario, max_connections=2, overload_retry_after=7)


def test_group_size_and_groups_per_user_limits_allow_n_and_refuse_n_plus_one(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        full = await alice.create_group("three", ["bob", "carol"])  # 3 members: allowed
        with pytest.raises(ClientError) as info:
            await alice.create_group("four", ["bob", "carol", "dave"])
        assert info.value.code == ErrorCode.LIMIT_EXCEEDED
        assert "max_group_members" in str(info.value)
        with pytest.raises(ClientError) as info:
            await alice.add_members(full.conv, ["dave"])
        assert info.value.code == ErrorCode.LIMIT_EXCEEDED
        assert set((await alice.add_members(full.conv, ["bob"])).members) == {
            "alice",
            "bob",
            "carol",
        }  # re-adding a member adds no one: still allowed
        await alice.create_group("second", [])  # alice's 2nd group: allowed
        with pytest.raises(ClientError) as info:
            await alice.create_group("third", [])
        assert info.value.code == ErrorCode.LIMIT_EXCEEDED
        assert "max_groups_per_user" in str(info.value)
        await alice.remove_member(full.conv, "carol")
        # carol can still be added to another group; a user at the cap cannot.
        other = await connect(node, "erin")
        with pytest.raises(ClientError) as info:
            await other.create_group("with alice", ["alice"])
        assert info.value.code == ErrorCode.LIMIT_EXCEEDED
        await close_all(alice, other)

    run(scenario, max_group_members=3, max_groups_per_user=2)


def test_limit_errors_carry_the_field_and_its_value_in_both_encodings(run: Run) -> None:
    async def scenario(node: Node) -> None:
        async with ws_connect(node.url, subprotocols=["bluewren.json.v1"]) as ws:  # type: ignore[list-item]
            token = node.issuer.mint("alice", "d1")
            await ws.send(json.dumps({"kind": "hello", "token": token}))
            assert json.loads(await ws.recv())["kind"] == "welcome"
            await ws.send(json.dumps({"kind": "presence", "cmid": 9, "users": ["a", "b"]}))
            error = json.loads(await ws.recv())
            assert error == {
                "kind": "error",
                "cmid": 9,
                "code": 14,
                "name": "LIMIT_EXCEEDED",
                "message": error["message"],
                "command": "presence",
                "limit": "max_presence_query",
                "max": 1,
            }

    run(scenario, max_presence_query=1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("send_rate", 0),
        ("send_burst", 0),
        ("max_typing_per_second", 0),
        ("max_connections", 0),
        ("max_devices_per_user", 0),
        ("max_groups_per_user", -1),
        ("max_group_members", 1),
        ("max_history_page", 0),
        ("max_presence_query", "5"),
        ("receipts_max_members", True),
        ("overload_retry_after", -1.0),
    ],
)
def test_config_refuses_a_limit_out_of_range_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(NodeConfigError) as info:
        NodeConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, 3, lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [None, None, None]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() is None
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 60.0  # a long pause refills to the burst, not beyond
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)


# -- hooks ---------------------------------------------------------------------------


def test_on_connect_hook_refuses_a_user_and_commands_after_hello_wait_for_it(run: Run) -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    async def on_connect(identity: Identity, headers: dict[str, str]) -> bool:
        await asyncio.sleep(0.01)  # an awaitable answer: the node must wait for it
        seen.append((identity.user, dict(headers)))
        return identity.user != "mallory"

    async def scenario(node: Node) -> None:
        mallory = Client(node.url, node.issuer.mint("mallory", "d1"), reconnect=False)
        with pytest.raises(ClientError) as info:
            await mallory.connect()
        assert info.value.code == ErrorCode.AUTH_FAILED
        assert await mallory.wait_closed() == CloseCode.UNAUTHORIZED
        await mallory.close()
        async with ws_connect(node.url, subprotocols=["bluewren.v1"]) as ws:  # type: ignore[list-item]
            token = node.issuer.mint("alice", "d1").encode()
            hello = (int(Kind.HELLO), 0, 0, 0, 0, token)
            create = (int(Kind.CREATE_DIRECT), 0, 0, 0, 5, b'{"peer": "bob"}')
            await ws.send(encode_frames([hello, create]))
            kinds = []
            while len(kinds) < 2:
                message = await ws.recv()
                assert isinstance(message, bytes)
                kinds += [(f[0], f[5]) for f in decode_frames(message)]
            assert kinds[0][0] == Kind.WELCOME
            assert kinds[1][0] == Kind.CONVERSATION  # not NOT_AUTHENTICATED
        assert seen == [
            ("mallory", {"sec-websocket-protocol": "bluewren.v1"}),
            ("alice", {"sec-websocket-protocol": "bluewren.v1"}),
        ]

    run(scenario, hooks={"on_connect": on_connect})


def test_on_connect_hook_that_raises_refuses_only_that_connection(run: Run) -> None:
    def on_connect(identity: Identity, headers: dict[str, str]) -> bool:
        if identity.user == "crash":
            raise RuntimeError("hook bug")
        return True

    async def scenario(node: Node) -> None:
        crash = Client(node.url, node.issuer.mint("crash", "d1"), reconnect=False)
        with pytest.raises(ClientError) as info:
            await crash.connect()
        assert info.value.code == ErrorCode.AUTH_FAILED
        await crash.close()
        alice = await connect(node, "alice")  # the node goes on
        assert (await alice.create_direct("bob")).type == "direct"
        await alice.close()

    run(scenario, hooks={"on_connect": on_connect})


def test_on_message_hook_rejects_rewrites_and_a_raising_hook_fails_only_that_send(
    run: Run,
) -> None:
    stored: list[StoredMessage] = []

    def on_message(ctx: MessageContext) -> Reject | Rewrite | None:
        if ctx.body == b"spam":
            return Reject(ErrorCode.FORBIDDEN, "no spam here")
        if ctx.body == b"boom":
            raise RuntimeError("hook bug")
        if ctx.body.startswith(b"shout "):
            return Rewrite(ctx.body[6:].upper())
        return None

    async def after_store(message: StoredMessage) -> None:
        stored.append(message)
        if message.body == b"LOUD":
            raise RuntimeError("after_store bug")

    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        chat = await alice.create_direct("bob")
        with pytest.raises(ClientError) as info:
            await alice.send(chat.conv, "spam")
        assert (info.value.code, "no spam here" in str(info.value)) == (ErrorCode.FORBIDDEN, True)
        with pytest.raises(ClientError) as info:
            await alice.send(chat.conv, "boom")
        assert info.value.code == ErrorCode.INTERNAL
        loud = await alice.send(chat.conv, "shout loud")
        quiet = await alice.send(chat.conv, "quiet")
        assert (loud.seq, quiet.seq) == (1, 2)  # refused sends were not stored
        got = [await next_of(bob, "deliver") for _ in range(2)]
        assert [e.body for e in got] == [b"LOUD", b"quiet"]
        await until(lambda: _true_when(len(stored) == 2))
        assert [m.body for m in stored] == [b"LOUD", b"quiet"]
        # A retry of a stored send is deduplicated and does not run after_store again.
        await alice.send(chat.conv, "quiet", cmid=quiet.cmid)
        await alice.send(chat.conv, "end")
        await until(lambda: _true_when(len(stored) == 3))
        assert stored[-1].body == b"end"
        await close_all(alice, bob)

    run(scenario, hooks={"on_message": on_message, "after_store": after_store})


async def _true_when(value: bool) -> bool:
    return value


def test_node_post_stores_and_delivers_a_message_from_embedded_code(run: Run) -> None:
    async def scenario(node: Node) -> None:
        chat = await node.store.create_direct("alice", "bot")
        alice = await connect(node, "alice")
        message = await node.post(chat.id, "bot", "hello from inside", device="worker")
        event = await next_of(alice, "deliver")
        assert (event.seq, event.sender, event.device) == (message.seq, "bot", "worker")
        assert event.body == b"hello from inside"
        await alice.close()

    run(scenario)


def test_embed_bot_example_runs_and_echoes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed_bot.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "alice got: echo: hello bot" in result.stdout
    assert "mallory refused: AUTH_FAILED" in result.stdout
    assert "spam refused: FORBIDDEN" in result.stdout


def test_store_batch_max_caps_the_sends_committed_together(run: Run) -> None:
    """``store_batch_max`` reaches the store: 40 SENDs in flight at once are committed
    in transactions of at most 4, and every one is acknowledged in order."""

    async def scenario(node: Node) -> None:
        chat = await node.store.create_direct("alice", "bob")
        alice = await connect(node, "alice")
        acks = await asyncio.gather(*(alice.send(chat.id, f"m{i}") for i in range(40)))
        assert sorted(a.seq for a in acks) == list(range(1, 41))
        inner = cast(GuardedStore, node.store).inner
        stats = cast(SQLiteStore, inner).stats
        assert 1 < stats.largest_batch <= 4
        assert stats.commits >= 10
        await close_all(alice)

    run(scenario, store_batch_max=4)
