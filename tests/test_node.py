"""Behaviour of the BlueWren node (bluewren.node) through real sockets on loopback.

Each test starts a node in-process on port 0 with its own data directory, connects
clients (bluewren.client, the websockets library or raw sockets) and checks what the
delivery promise says: acks only after storage, one order per conversation, no duplicate
on retry, resume without gap or duplicate, offline delivery, and clear errors for bad
input. Every test runs on stdlib asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from bluewren import FLAG_COMPRESSED, Compressor, encode_frame, encode_ws_frame
from bluewren.client import Client, ClientError, ConnectionLost, Event
from bluewren.node import CloseCode, ErrorCode, Kind, Node, NodeConfig
from bluewren.store import AppendResult, StoredMessage
from conftest import NodeRunner, NodeScenario, node_runner

SECRET = "s" * 48
TEST_TIMEOUT = 30.0

Scenario = NodeScenario
Run = NodeRunner


@pytest.fixture
def run(loop_name: str, tmp_path: Path) -> NodeRunner:
    """Runs a scenario against a fresh node on the parametrised event loop."""
    return node_runner(loop_name, tmp_path, timeout=TEST_TIMEOUT, token_secret=SECRET)


async def connect(node: Node, user: str, device: str = "d1", protocol: str = "binary") -> Client:
    client = Client(node.url, node.issuer.mint(user, device), protocol=protocol)  # type: ignore[arg-type]
    await client.connect()
    return client


async def deliveries(client: Client, n: int) -> list[Event]:
    """The next ``n`` delivery events (other pushed events are skipped)."""
    out: list[Event] = []
    while len(out) < n:
        event = await client.next_event(10)
        if event.kind == "deliver":
            out.append(event)
    return out


async def close_all(*clients: Client) -> None:
    for c in clients:
        await c.close()


# -- the happy path ------------------------------------------------------------------


def test_direct_message_is_acked_then_delivered_to_each_device_of_the_peer(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice", "phone")
        alice_tablet = await connect(node, "alice", "tablet")
        bob_phone = await connect(node, "bob", "phone")
        bob_laptop = await connect(node, "bob", "laptop")
        chat = await alice.create_direct("bob")
        assert chat.type == "direct"
        assert set(chat.members) == {"alice", "bob"}
        ack = await alice.send(chat.conv, "hi bob")
        assert (ack.conv, ack.seq) == (chat.conv, 1)
        for device in (bob_phone, bob_laptop):
            (got,) = await deliveries(device, 1)
            assert (got.conv, got.seq, got.cmid) == (chat.conv, 1, ack.cmid)
            assert (got.sender, got.device, got.body) == ("alice", "phone", b"hi bob")
        # The sender's other devices see the message too (the sending one got the ack).
        (mine,) = await deliveries(alice_tablet, 1)
        assert (mine.seq, mine.device) == (1, "phone")
        sentinel = await bob_phone.send(chat.conv, "back")
        (next_at_alice,) = await deliveries(alice, 1)
        assert next_at_alice.seq == sentinel.seq == 2
        await close_all(alice, alice_tablet, bob_phone, bob_laptop)

    run(scenario)


def test_ack_arrives_only_after_the_message_is_stored(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        for i in range(20):
            ack = await alice.send(chat.conv, f"m{i}")
            # No other work in between: what the ack names must already be committed.
            stored = await node.store.history(chat.conv, ack.seq - 1, 1)
            assert [(m.seq, m.cmid, m.body) for m in stored] == [
                (ack.seq, ack.cmid, f"m{i}".encode())
            ]
        await alice.close()

    run(scenario)


def test_group_members_see_one_strictly_increasing_order_under_concurrent_senders(
    run: Run,
) -> None:
    senders = [f"user{i}" for i in range(10)]
    per_sender = 5
    total = len(senders) * per_sender

    async def scenario(node: Node) -> None:
        owner = await connect(node, "observer")
        group = await owner.create_group("ten", senders)
        clients = [await connect(node, u) for u in senders]

        async def pump(c: Client) -> list[int]:
            acks = await asyncio.gather(
                *(c.send(group.conv, f"{c.user}:{k}") for k in range(per_sender))
            )
            return [a.seq for a in acks]

        acked = await asyncio.gather(*(pump(c) for c in clients))
        assert sorted(s for seqs in acked for s in seqs) == list(range(1, total + 1))
        seen = await deliveries(owner, total)
        assert [e.seq for e in seen] == list(range(1, total + 1))
        by_seq = {e.seq: (e.sender, e.body) for e in seen}
        for c, own in zip(clients, acked, strict=True):
            got = await deliveries(c, total - per_sender)
            seqs = [e.seq for e in got]
            assert seqs == sorted(seqs)
            assert set(seqs) == set(range(1, total + 1)) - set(own)
            assert all(by_seq[e.seq] == (e.sender, e.body) for e in got)
        await close_all(owner, *clients)

    run(scenario)


def test_sends_of_one_connection_keep_their_order(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        chat = await alice.create_direct("bob")
        acks = await asyncio.gather(*(alice.send(chat.conv, str(i)) for i in range(30)))
        assert [a.seq for a in acks] == list(range(1, 31))
        got = await deliveries(bob, 30)
        assert [e.body for e in got] == [str(i).encode() for i in range(30)]
        await close_all(alice, bob)

    run(scenario)


# -- retries, resumption, offline delivery -------------------------------------------


def test_retry_with_the_same_cmid_returns_the_same_seq_and_stores_once(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        chat = await alice.create_direct("bob")
        first = await alice.send(chat.conv, "once", cmid=4242)
        # The retry comes over a new connection, as after a lost ack.
        await alice.drop()
        again = await alice.send(chat.conv, "once", cmid=4242)
        assert (again.seq, again.cmid) == (first.seq, 4242)
        stored = await node.store.history(chat.conv, 0, 10)
        assert [(m.seq, m.cmid) for m in stored] == [(first.seq, 4242)]
        sentinel = await alice.send(chat.conv, "next")
        got = await deliveries(bob, 2)
        assert [(e.seq, e.body) for e in got] == [(first.seq, b"once"), (sentinel.seq, b"next")]
        await close_all(alice, bob)

    run(scenario)


def test_send_whose_ack_is_lost_is_retried_with_the_same_cmid_and_stored_once(
    run: Run,
) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        store = node.store
        append = store.append
        cut = 0

        async def append_then_cut(*args: object, **kw: object) -> AppendResult:
            nonlocal cut
            result = await append(*args, **kw)  # type: ignore[arg-type]
            if cut == 0:  # the first write commits, then the connection dies unacked
                cut += 1
                await alice.drop()
            return result

        store.append = append_then_cut  # type: ignore[method-assign]
        ack = await alice.send(chat.conv, "are you there?")
        assert cut == 1
        stored = await store.history(chat.conv, 0, 10)
        assert [(m.seq, m.cmid) for m in stored] == [(ack.seq, ack.cmid)]
        assert store.stats.duplicates == 1
        await alice.close()

    run(scenario)


def test_resume_after_disconnect_has_no_gap_and_no_duplicate(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        bob = await connect(node, "bob")
        chat = await alice.create_direct("bob")
        for i in range(1, 4):
            await alice.send(chat.conv, f"live{i}")
        seen = await deliveries(bob, 3)
        await bob.drop()
        for i in range(4, 7):
            await alice.send(chat.conv, f"offline{i}")

        async def keep_sending() -> None:
            for i in range(7, 31):
                await alice.send(chat.conv, f"racing{i}")

        # Sends race the reconnect and its replay.
        sending = asyncio.ensure_future(keep_sending())
        await bob.connect()
        await sending
        seen += await deliveries(bob, 27)
        assert [e.seq for e in seen] == list(range(1, 31))
        assert bob.cursors == {chat.conv: 30}
        await close_all(alice, bob)

    run(scenario)


def test_message_committed_during_a_replay_is_not_delivered_twice(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        store = node.store
        append = store.append
        committed = asyncio.Event()
        publish = asyncio.Event()

        async def slow_to_return(*args: object, **kw: object) -> AppendResult:
            result = await append(*args, **kw)  # type: ignore[arg-type]
            committed.set()
            await publish.wait()  # committed, not yet acked or published
            return result

        store.append = slow_to_return  # type: ignore[method-assign]
        sending = asyncio.ensure_future(alice.send(chat.conv, "in flight"))
        await committed.wait()
        bob = await connect(node, "bob")  # the replay reads the committed message
        store.append = append  # type: ignore[method-assign]
        publish.set()
        await sending
        await alice.send(chat.conv, "after")
        got = await deliveries(bob, 2)
        assert [(e.seq, e.body) for e in got] == [(1, b"in flight"), (2, b"after")]
        await close_all(alice, bob)

    run(scenario)


def test_message_published_during_a_replay_is_replayed_not_lost(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        await alice.send(chat.conv, "before")
        store = node.store
        history = store.history
        raced = False

        async def history_then_race(conv: int, after: int, limit: int) -> list[StoredMessage]:
            nonlocal raced
            page = await history(conv, after, limit)
            if not raced:  # while bob's replay holds its page, a message goes out live
                raced = True
                await alice.send(chat.conv, "during")
            return page

        store.history = history_then_race  # type: ignore[method-assign,assignment]
        bob = await connect(node, "bob")
        store.history = history  # type: ignore[method-assign]
        assert raced
        await alice.send(chat.conv, "after")
        got = await deliveries(bob, 3)
        assert [(e.seq, e.body) for e in got] == [(1, b"before"), (2, b"during"), (3, b"after")]
        await close_all(alice, bob)

    run(scenario)


def test_conversation_joined_during_a_replay_is_replayed_too(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        await alice.send(chat.conv, "direct")
        store = node.store
        history = store.history
        group_conv = 0

        async def history_then_join(conv: int, after: int, limit: int) -> list[StoredMessage]:
            nonlocal group_conv
            page = await history(conv, after, limit)
            if not group_conv:  # bob is added to a new group, which gets a message
                group_conv = (await alice.create_group("new", ["bob"])).conv
                await alice.send(group_conv, "welcome")
            return page

        store.history = history_then_join  # type: ignore[method-assign,assignment]
        bob = await connect(node, "bob")
        store.history = history  # type: ignore[method-assign]
        got = await deliveries(bob, 2)
        assert [(e.conv, e.seq, e.body) for e in got] == [
            (chat.conv, 1, b"direct"),
            (group_conv, 1, b"welcome"),
        ]
        await close_all(alice, bob)

    run(scenario)


def test_offline_user_receives_missed_messages_in_order_on_next_connect(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("carol")
        for i in range(5):
            await alice.send(chat.conv, f"while you were out {i}")
        carol = await connect(node, "carol")  # connect() replays from cursor 0
        got = await deliveries(carol, 5)
        assert [(e.seq, e.body) for e in got] == [
            (i + 1, f"while you were out {i}".encode()) for i in range(5)
        ]
        await close_all(alice, carol)

    run(scenario)


def test_acknowledged_messages_survive_a_node_restart(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        acks = [await alice.send(chat.conv, f"kept {i}") for i in range(3)]
        await alice.close()
        await node.stop()
        restarted = Node(node.config)  # same data directory and secret
        await restarted.start()
        try:
            bob = await connect(restarted, "bob")
            got = await deliveries(bob, 3)
            assert [(e.seq, e.cmid) for e in got] == [(a.seq, a.cmid) for a in acks]
            ack = await bob.send(chat.conv, "numbering goes on")
            assert ack.seq == 4
            await bob.close()
        finally:
            await restarted.stop()

    run(scenario)


def test_confirmed_cursor_limits_the_replay_of_a_later_connection(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        for i in range(4):
            await alice.send(chat.conv, str(i))
        bob = await connect(node, "bob", "tablet")
        await deliveries(bob, 4)
        await bob.confirm(chat.conv, 2)
        await bob.close()
        await alice.send(chat.conv, "4")
        for _ in range(100):  # CURSOR has no reply: wait until the store has it
            if (await node.store.cursors("bob", "tablet")).get(chat.conv) == 2:
                break
            await asyncio.sleep(0.01)
        again = await connect(node, "bob", "tablet")  # a fresh client: no cursors of its own
        got = await deliveries(again, 3)
        assert [e.seq for e in got] == [3, 4, 5]
        await close_all(alice, again)

    run(scenario)


def test_member_added_later_is_not_replayed_messages_from_before_joining(run: Run) -> None:
    async def scenario(node: Node) -> None:
        owner = await connect(node, "owner")
        group = await owner.create_group("history", ["bob"])
        for i in range(3):
            await owner.send(group.conv, f"before {i}")
        await owner.add_members(group.conv, ["carol"])
        carol = await connect(node, "carol")
        assert await carol.sync({group.conv: 0}) == {group.conv: 3}  # asked for all: clamped
        ack = await owner.send(group.conv, "after")
        (got,) = await deliveries(carol, 1)  # the first delivery carol ever sees
        assert (got.seq, got.body) == (ack.seq, b"after") == (4, b"after")
        await close_all(owner, carol)

    run(scenario)


def test_explicit_sync_cursor_replays_only_what_follows_it(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        for i in range(5):
            await alice.send(chat.conv, str(i))
        bob = await connect(node, "bob")
        await deliveries(bob, 5)
        assert await bob.sync({chat.conv: 3}) == {chat.conv: 5}
        again = await deliveries(bob, 2)
        assert [e.seq for e in again] == [4, 5]
        await close_all(alice, bob)

    run(scenario)


# -- subprotocols --------------------------------------------------------------------


def test_json_and_binary_sessions_interoperate_in_one_conversation(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice", protocol="binary")
        bob = await connect(node, "bob", protocol="json")
        group = await bob.create_group("mixed", ["alice"])
        a_ack = await alice.send(group.conv, "from binary ü")
        b_ack = await bob.send(group.conv, b"\x00\xffraw")  # not UTF-8: body_b64 on JSON
        (at_bob,) = await deliveries(bob, 1)
        (at_alice,) = await deliveries(alice, 1)
        text = "from binary ü".encode()
        assert (at_bob.seq, at_bob.sender, at_bob.body) == (a_ack.seq, "alice", text)
        assert (at_alice.seq, at_alice.sender, at_alice.body) == (b_ack.seq, "bob", b"\x00\xffraw")
        await close_all(alice, bob)

    run(scenario)


def test_json_session_speaks_plain_json_to_an_independent_client(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        async with ws_connect(node.url, subprotocols=["bluewren.json.v1"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"kind": "hello", "token": node.issuer.mint("bob", "web")}))
            welcome = json.loads(await ws.recv())
            assert welcome["kind"] == "welcome"
            assert (welcome["user"], welcome["device"]) == ("bob", "web")
            await ws.send(json.dumps({"kind": "sync"}))
            assert json.loads(await ws.recv()) == {
                "kind": "synced",
                "cursors": {str(chat.conv): 0},
            }
            await ws.send(json.dumps({"kind": "send", "conv": chat.conv, "cmid": 7, "body": "yo"}))
            assert json.loads(await ws.recv()) == {
                "kind": "ack",
                "conv": chat.conv,
                "seq": 1,
                "cmid": 7,
            }
            await alice.send(chat.conv, "back")
            event = json.loads(await ws.recv())
            assert event == {
                "kind": "deliver",
                "conv": chat.conv,
                "seq": 2,
                "cmid": event["cmid"],
                "sender": "alice",
                "device": "d1",
                "body": "back",
            }
        await alice.close()

    run(scenario)


# -- bad input -----------------------------------------------------------------------


def test_bad_token_gets_auth_failed_error_then_close_4001(run: Run) -> None:
    async def scenario(node: Node) -> None:
        forged = Client(node.url, "not.a.token", reconnect=False)
        with pytest.raises(ClientError) as info:
            await forged.connect()
        assert info.value.code == ErrorCode.AUTH_FAILED
        assert await forged.wait_closed() == CloseCode.UNAUTHORIZED
        await forged.close()

    run(scenario)


def test_token_expiring_during_the_connection_closes_it_with_4001(run: Run) -> None:
    async def scenario(node: Node) -> None:
        client = Client(node.url, node.issuer.mint("alice", ttl=1), reconnect=False)
        await client.connect()
        assert await client.wait_closed() == CloseCode.UNAUTHORIZED
        await client.close()

    run(scenario)


def test_connection_without_hello_is_closed_with_4002(run: Run) -> None:
    async def scenario(node: Node) -> None:
        async with ws_connect(node.url, subprotocols=["bluewren.v1"]) as ws:  # type: ignore[list-item]
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == CloseCode.HELLO_TIMEOUT

    run(scenario, hello_timeout=0.2)


def test_command_before_hello_gets_not_authenticated(run: Run) -> None:
    async def scenario(node: Node) -> None:
        async with ws_connect(node.url, subprotocols=["bluewren.v1"]) as ws:  # type: ignore[list-item]
            await ws.send(encode_frame(int(Kind.SEND), b"x", 1, 0, 9))
            reply = await ws.recv()
            assert isinstance(reply, bytes)
            assert reply[1] == Kind.ERROR
            assert json.loads(reply[32:])["code"] == ErrorCode.NOT_AUTHENTICATED

    run(scenario)


def test_second_hello_and_send_without_cmid_get_errors_and_the_session_goes_on(
    run: Run,
) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        await alice.raw(int(Kind.HELLO), body=node.issuer.mint("mallory").encode())
        await alice.raw(int(Kind.SEND), conv=chat.conv, cmid=0, body=b"no id")
        codes: list[int] = []
        while len(codes) < 2:
            event = await alice.next_event(10)
            if event.kind == "error":
                codes.append(event.data["code"])
        assert codes == [ErrorCode.ALREADY_AUTHENTICATED, ErrorCode.BAD_REQUEST]
        assert (await alice.send(chat.conv, "still alice")).seq == 1
        assert [m.sender for m in await node.store.history(chat.conv, 0, 10)] == ["alice"]
        await alice.close()

    run(scenario)


def test_json_session_gets_bad_frame_for_a_message_that_is_not_a_json_object(run: Run) -> None:
    async def scenario(node: Node) -> None:
        async with ws_connect(node.url, subprotocols=["bluewren.json.v1"]) as ws:  # type: ignore[list-item]
            await ws.send("{not json")
            error = json.loads(await ws.recv())
            assert (error["kind"], error["code"]) == ("error", ErrorCode.BAD_FRAME)
            await ws.send(json.dumps({"kind": "hello", "token": node.issuer.mint("bob")}))
            assert json.loads(await ws.recv())["kind"] == "welcome"

    run(scenario)


def test_upgrade_without_a_bluewren_subprotocol_is_refused(run: Run) -> None:
    async def scenario(node: Node) -> None:
        with pytest.raises(Exception, match="400"):
            async with ws_connect(node.url, subprotocols=["chat"]):  # type: ignore[list-item]
                pass

    run(scenario)


def test_unknown_kind_gets_error_and_the_connection_stays_usable(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        await alice.raw(0x55, conv=chat.conv, cmid=77)
        event = await alice.next_event(10)
        while event.kind != "error":
            event = await alice.next_event(10)
        assert event.data["code"] == ErrorCode.UNKNOWN_KIND
        assert (event.conv, event.cmid) == (chat.conv, 77)
        assert (await alice.send(chat.conv, "still here")).seq == 1
        await alice.close()

    run(scenario)


def test_malformed_frame_gets_bad_frame_and_the_connection_stays_usable(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        await alice.raw_message(2, b"\x07" + b"\x00" * 40)  # version 7
        event = await alice.next_event(10)
        while event.kind != "error":
            event = await alice.next_event(10)
        assert event.data["code"] == ErrorCode.BAD_FRAME
        assert (await alice.send(chat.conv, "fine")).seq == 1
        await alice.close()

    run(scenario)


def test_body_over_the_limit_gets_too_large_and_is_not_stored(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        with pytest.raises(ClientError) as info:
            await alice.send(chat.conv, b"x" * 1025)
        assert info.value.code == ErrorCode.TOO_LARGE
        assert await node.store.last_seq(chat.conv) == 0
        assert (await alice.send(chat.conv, b"x" * 1024)).seq == 1
        await alice.close()

    run(scenario, max_message_bytes=1024)


def test_compressed_send_is_stored_and_delivered_decompressed(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        bob = await connect(node, "bob", protocol="json")
        chat = await alice.create_direct("bob")
        text = b"hello " * 150  # 900 bytes, within the 1024-byte limit once decompressed
        packed = Compressor().compress(text)
        await alice.raw(int(Kind.SEND), conv=chat.conv, cmid=5, body=packed, flags=FLAG_COMPRESSED)
        (got,) = await deliveries(bob, 1)
        assert (got.seq, got.cmid, got.body) == (1, 5, text)
        assert [m.body for m in await node.store.history(chat.conv, 0, 10)] == [text]
        bomb = Compressor().compress(b"a" * 100_000)
        await alice.raw(int(Kind.SEND), conv=chat.conv, cmid=6, body=bomb, flags=FLAG_COMPRESSED)
        event = await alice.next_event(10)
        while event.kind != "error":
            event = await alice.next_event(10)
        assert (event.cmid, event.data["code"]) == (6, ErrorCode.TOO_LARGE)
        assert await node.store.last_seq(chat.conv) == 1
        await close_all(alice, bob)

    run(scenario, max_message_bytes=1024)


def test_websocket_message_over_the_limit_closes_with_1009(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        huge = b"x" * (node.config.max_ws_message_bytes + 1)
        await alice.raw(int(Kind.SEND), conv=chat.conv, cmid=1, body=huge)
        assert await alice.wait_closed() == 1009
        await alice.close()

    run(scenario, max_message_bytes=1024)


def test_send_to_a_conversation_of_others_gets_not_member(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        mallory = await connect(node, "mallory")
        chat = await alice.create_direct("bob")
        with pytest.raises(ClientError) as info:
            await mallory.send(chat.conv, "let me in")
        assert info.value.code == ErrorCode.NOT_MEMBER
        with pytest.raises(ClientError) as missing:
            await mallory.send(9999, "anyone?")
        assert missing.value.code == ErrorCode.NO_SUCH_CONVERSATION
        assert await node.store.last_seq(chat.conv) == 0
        await close_all(alice, mallory)

    run(scenario)


# -- membership ----------------------------------------------------------------------


def test_removed_member_stops_receiving_and_added_member_starts(run: Run) -> None:
    async def scenario(node: Node) -> None:
        owner = await connect(node, "owner")
        bob = await connect(node, "bob")
        carol = await connect(node, "carol")
        group = await owner.create_group("team", ["bob"])
        await owner.send(group.conv, "1")  # loads the membership cache
        removed = await owner.remove_member(group.conv, "bob")
        assert set(removed.members) == {"owner"}
        added = await owner.add_members(group.conv, ["carol"])
        assert set(added.members) == {"owner", "carol"}
        await owner.send(group.conv, "2")
        (at_carol,) = await deliveries(carol, 1)
        assert (at_carol.seq, at_carol.body) == (2, b"2")
        (at_bob,) = await deliveries(bob, 1)
        assert at_bob.seq == 1
        with pytest.raises(ClientError) as info:
            await bob.send(group.conv, "still in?")
        assert info.value.code == ErrorCode.NOT_MEMBER
        with pytest.raises(ClientError) as forbidden:
            await carol.add_members(group.conv, ["bob"])
        assert forbidden.value.code == ErrorCode.FORBIDDEN
        await close_all(owner, bob, carol)

    run(scenario)


# -- slow consumers ------------------------------------------------------------------


def test_slow_consumer_is_closed_with_4008(run: Run) -> None:
    async def scenario(node: Node) -> None:
        alice = await connect(node, "alice")
        chat = await alice.create_direct("bob")
        token = node.issuer.mint("bob", "stalled")
        # A client that authenticates, syncs and then never reads.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", node.port))
        handshake = (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: bluewren.v1\r\n\r\n"
        )
        mask = os.urandom(4)
        hello = encode_ws_frame(2, encode_frame(int(Kind.HELLO), token.encode()), mask=mask)
        sync = encode_ws_frame(2, encode_frame(int(Kind.SYNC), b"{}"), mask=mask)
        await loop.sock_sendall(sock, handshake + hello + sync)
        # No event to wait on: poll (bounded by TEST_TIMEOUT) until the reader is live.
        while not any(s.live for s in node.online("bob")):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        try:
            body = b"y" * 1000
            sent = 0
            while node.online("bob") and sent < 50_000:
                await asyncio.gather(*(alice.send(chat.conv, body) for _ in range(100)))
                sent += 100
            assert not node.online("bob"), "the stalled reader was never closed"
            data = b""
            while chunk := await loop.sock_recv(sock, 1 << 20):  # until the node's EOF
                data += chunk
            close_at = data.rfind(b"\x88")
            assert close_at >= 0
            code = int.from_bytes(data[close_at + 2 : close_at + 4], "big")
            assert code == CloseCode.SLOW_CONSUMER
        finally:
            sock.close()
        await alice.close()

    run(
        scenario,
        max_message_bytes=2048,
        outbox_low_water=4096,
        outbox_high_water=16384,
        outbox_max_bytes=65536,
    )


# -- configuration and command line --------------------------------------------------


def test_config_names_the_bad_field() -> None:
    from bluewren.node import NodeConfigError

    with pytest.raises(NodeConfigError) as info:
        NodeConfig(port=70000)
    assert info.value.field == "port"
    with pytest.raises(NodeConfigError) as info:
        NodeConfig(outbox_low_water=10, outbox_high_water=5)
    assert info.value.field == "outbox_high_water"
    with pytest.raises(NodeConfigError) as info:
        NodeConfig(token_secret="short")
    assert info.value.field == "token_secret"


def test_cli_token_is_accepted_by_cli_serve_with_the_generated_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BLUEWREN_TOKEN_SECRET"}
    data = str(tmp_path / "data")
    server = subprocess.Popen(
        [sys.executable, "-m", "bluewren", "serve", "--port", "0", "--data-dir", data],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        match = re.search(r"listening on (ws://\S+)", line)
        assert match, line
        token = (
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bluewren",
                    "token",
                    "alice",
                    "--device",
                    "cli",
                    "--data-dir",
                    data,
                ],
                capture_output=True,
                check=True,
                env=env,
                timeout=30,
            )
            .stdout.decode()
            .strip()
        )

        async def main() -> None:
            client = Client(match.group(1), token)
            await asyncio.wait_for(client.connect(), 10)
            assert (client.user, client.device) == ("alice", "cli")
            await client.close()

        asyncio.run(main())
    finally:
        server.terminate()
        server.wait(15)
        if server.stdout:
            server.stdout.close()
        if server.stderr:
            server.stderr.close()


def test_closed_client_raises_connection_lost() -> None:
    async def main() -> None:
        client = Client("ws://127.0.0.1:9/", SECRET, reconnect=False)
        await client.close()
        with pytest.raises(ConnectionLost):
            await client.send(1, "x")

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read the queue")
def test_listen_backlog_reaches_both_listeners(run: Run) -> None:
    async def scenario(node: Node) -> None:
        for port in (node.port, node.tcp_port):
            ss = await asyncio.create_subprocess_exec(
                "ss", "-ltnH", f"sport = :{port}", stdout=asyncio.subprocess.PIPE
            )
            out = (await ss.communicate())[0].decode().split()
            # State, Recv-Q, Send-Q: a listener's Send-Q is its accept queue's size.
            assert out[2] == "77", out

    run(scenario, listen_backlog=77, tcp_port=0)
