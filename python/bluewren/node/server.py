"""The node: accepts connections, applies policy, stores, acknowledges and fans out.

:class:`Node` owns the store, the token issuer, the online registry (user -> sessions),
a membership cache per conversation and the native ``FanOut`` with one outbox per
connection. The path of a SEND::

    decode -> auth and membership check -> store.append (group commit)
           -> ACK to the sender (the message is committed)
           -> DELIVER encoded once per subprotocol -> FanOut.publish to every live
              session of every member -> one flush per loop pass -> one write per socket

Ordering: the store assigns sequence numbers and resolves appends in commit order, and
the node publishes right after an append resolves, without awaiting anything in between,
so deliveries leave in sequence order; ``_publish`` also holds back an out-of-order
sequence number until the gap is filled. Sends of one session reach the store in the
order they arrived (``Session.send_gate``).

Resume without gap or duplicate: a session is not live until its SYNC has replayed every
message after its cursors; the replay keeps reading until it has caught up with the last
sequence number the node published for each conversation (and re-reads the user's
conversations if any membership changed meanwhile), then the session turns live in the
same loop step. What was replayed is remembered per conversation (``floors``) so
a message that was committed during the replay but published after it is not sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, Final

from bluewren import (
    FLAG_COMPRESSED,
    FLAG_DICT,
    CompressionError,
    Decompressor,
    FanOut,
    encode_frame,
    encode_ws_frame,
)
from bluewren.auth import TokenIssuer
from bluewren.errors import (
    AuthError,
    ConversationKindError,
    ConversationNotFoundError,
    NotAMemberError,
    StoreArgumentError,
    StoreError,
    StoreUnavailableError,
)
from bluewren.node.commands import COMMANDS, CloseCode, ErrorCode, Kind, encode_envelope
from bluewren.node.config import NodeConfig, resolve_token_secret
from bluewren.node.session import Session
from bluewren.node.wire import OP_BINARY, OP_TEXT, Command, CommandError, JsonCodec
from bluewren.store import Conversation, Member, SQLiteStore, Store, StoredMessage

__all__ = ["Node"]

log = logging.getLogger("bluewren.node")

SYNC_PAGE: Final = 256
"""Messages read (and sent as one WebSocket message on bluewren.v1) per replay step."""

MEMBER_CACHE_SIZE: Final = 65536
"""Conversations whose membership the node keeps in memory (oldest loaded evicted first)."""

RETRY_AFTER: Final = 1.0
"""The retry hint (seconds) of an UNAVAILABLE error."""

_Members = dict[str, Member]


class Node:
    """A BlueWren node serving WebSocket clients; see the module docstring.

    ``store`` defaults to a :class:`~bluewren.store.SQLiteStore` in ``config.data_dir``
    (the node opens and closes it); a store passed in must be open and stays open.
    ``issuer`` defaults to a :class:`~bluewren.auth.TokenIssuer` on the resolved secret.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        store: Store | None = None,
        issuer: TokenIssuer | None = None,
    ) -> None:
        self.config: Final = config
        self._store = store
        self._owns_store = store is None
        self._issuer = issuer
        self.fanout: Final = FanOut()
        self._decompressor = Decompressor(max_output=config.max_message_bytes)
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_conn = 0
        self._sessions: dict[int, Session] = {}
        self._online: dict[str, dict[int, Session]] = {}
        self._members: dict[int, _Members] = {}
        self._member_gen: dict[int, int] = {}
        self._member_loads: dict[int, asyncio.Task[_Members]] = {}
        self._membership_epoch = 0
        self._published: dict[int, int] = {}
        self._held: dict[int, dict[int, tuple[StoredMessage, Session | None, _Members]]] = {}
        self._dirty: set[Session] = set()
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life cycle ------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store the node writes through (available once started)."""
        if self._store is None:
            raise RuntimeError("the node is not started: await node.start() first")
        return self._store

    @property
    def issuer(self) -> TokenIssuer:
        """The token issuer (mint tokens for tests and tools with ``node.issuer.mint``)."""
        if self._issuer is None:
            raise RuntimeError("the node is not started: await node.start() first")
        return self._issuer

    @property
    def port(self) -> int:
        """The port the node listens on (the real one when ``config.port`` was 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the node is not listening: await node.start() first")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``ws://host:port/`` of the node."""
        return f"ws://{self.config.host}:{self.port}/"

    async def start(self) -> None:
        """Opens the store and starts listening."""
        self._loop = asyncio.get_running_loop()
        if self._issuer is None:
            secret = resolve_token_secret(self.config.data_dir, self.config.token_secret)
            self._issuer = TokenIssuer(secret)
        if self._store is None:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
            self._store = SQLiteStore(
                self.config.database_path, synchronous=self.config.sqlite_synchronous
            )
            await self._store.open()
        self._server = await self._loop.create_server(
            self._new_session, self.config.host, self.config.port, reuse_address=True
        )

    async def stop(self) -> None:
        """Stops listening, closes every connection (1001), waits for commands in flight
        and closes the store if the node opened it."""
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions.values())
        for session in sessions:
            session.shut(1001, "node stopping")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10.0)
        # Give clean closes a moment, then cut off peers that do not read.
        for _ in range(100):
            if all(s.transport is None for s in sessions):
                break
            await asyncio.sleep(0.01)
        for session in sessions:
            transport = session.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None
        if self._owns_store and self._store is not None:
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _new_session(self) -> Session:
        self._next_conn += 1
        return Session(self, self._next_conn)

    # -- registry (called by sessions) -----------------------------------------------

    def session_opened(self, session: Session) -> None:
        """A connection finished its upgrade: give it an outbox."""
        self._sessions[session.conn_id] = session
        c = self.config
        self.fanout.register(
            session.conn_id, c.outbox_low_water, c.outbox_high_water, c.outbox_max_bytes
        )

    def session_closed(self, session: Session) -> None:
        """The transport is gone: forget the connection."""
        session.live = False
        self._sessions.pop(session.conn_id, None)
        self._dirty.discard(session)
        self.fanout.unregister(session.conn_id)
        if session.identity is not None:
            devices = self._online.get(session.identity.user)
            if devices is not None:
                devices.pop(session.conn_id, None)
                if not devices:
                    del self._online[session.identity.user]

    def session_resumed(self, session: Session) -> None:
        """The transport drained: move what the outbox held while it was paused."""
        data = self.fanout.drain(session.conn_id)
        if data:
            session.send_raw(data)
            self.mark_dirty(session)

    def online(self, user: str) -> list[Session]:
        """The user's authenticated connections."""
        return list(self._online.get(user, {}).values())

    # -- flushing --------------------------------------------------------------------

    def mark_dirty(self, session: Session) -> None:
        """``session`` has output queued: flush it at the end of this loop pass."""
        self._dirty.add(session)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        fanout = self.fanout
        dirty = self._dirty
        self._dirty = set()
        for conn in fanout.take_ready():
            session = self._sessions.get(conn)
            if session is None or session.writing_paused:
                continue  # a paused session's outbox is moved by session_resumed
            data = fanout.drain(conn)
            if data:
                session.send_raw(data)
                dirty.add(session)
        for session in dirty:
            session.flush()

    # -- command dispatch ------------------------------------------------------------

    def handle(self, session: Session, cmd: Command) -> None:
        """Runs one decoded command (synchronously when it needs no I/O)."""
        try:
            if cmd.kind not in COMMANDS:
                raise CommandError(
                    ErrorCode.UNKNOWN_KIND, f"kind 0x{cmd.kind:02x} is not a command"
                )
            if cmd.kind == Kind.HELLO:
                self._hello(session, cmd)
                return
            if session.identity is None:
                raise CommandError(
                    ErrorCode.NOT_AUTHENTICATED, "send HELLO with a token before anything else"
                )
            handler = self._handlers[Kind(cmd.kind)]
        except CommandError as err:
            session.emit_error(cmd, err)
            return
        self._spawn(self._run(session, cmd, handler(self, session, cmd)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, session: Session, cmd: Command, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except CommandError as err:
            session.emit_error(cmd, err)
        except StoreError as exc:
            session.emit_error(cmd, _store_error(exc))
        except Exception:
            log.exception("command %s of %r failed", _kind_name(cmd.kind), session)
            session.emit_error(
                cmd, CommandError(ErrorCode.INTERNAL, "internal error; the node logged it")
            )

    def _hello(self, session: Session, cmd: Command) -> None:
        if session.identity is not None:
            raise CommandError(ErrorCode.ALREADY_AUTHENTICATED, "this connection has said HELLO")
        try:
            identity = self.issuer.verify(cmd.body.decode("utf-8", "replace"))
        except AuthError as exc:
            session.emit_error(cmd, CommandError(ErrorCode.AUTH_FAILED, str(exc)))
            session.shut(CloseCode.UNAUTHORIZED, "token refused")
            return
        session.authenticated(identity)
        self._online.setdefault(identity.user, {})[session.conn_id] = session
        session.emit(
            Kind.WELCOME,
            obj={
                "user": identity.user,
                "device": identity.device,
                "session": session.conn_id,
                "expires_at": identity.expires_at,
                "max_message_bytes": self.config.max_message_bytes,
            },
        )

    # -- membership ------------------------------------------------------------------

    async def members_of(self, conv: int) -> _Members:
        """The conversation's members by user id (cached; loads are shared)."""
        cached = self._members.get(conv)
        if cached is not None:
            return cached
        load = self._member_loads.get(conv)
        if load is None:
            load = asyncio.ensure_future(self._load_members(conv))
            self._member_loads[conv] = load
        return await asyncio.shield(load)

    async def _load_members(self, conv: int) -> _Members:
        gen = self._member_gen.get(conv, 0)
        try:
            members = {m.user: m for m in await self.store.members(conv)}
        finally:
            self._member_loads.pop(conv, None)
        if self._member_gen.get(conv, 0) == gen:
            if len(self._members) >= MEMBER_CACHE_SIZE:
                del self._members[next(iter(self._members))]  # the oldest entry
            self._members[conv] = members
        return members

    def _invalidate_members(self, conv: int) -> None:
        self._members.pop(conv, None)
        self._member_gen[conv] = self._member_gen.get(conv, 0) + 1
        self._membership_epoch += 1

    # -- SEND ------------------------------------------------------------------------

    async def _send(self, session: Session, cmd: Command) -> None:
        assert session.identity is not None
        user, device = session.identity.user, session.identity.device
        if cmd.cmid == 0:
            raise CommandError(ErrorCode.BAD_REQUEST, "SEND needs a non-zero cmid")
        if cmd.conv == 0:
            raise CommandError(ErrorCode.BAD_REQUEST, "SEND needs a conversation id (conv)")
        if cmd.flags:
            cmd.body = self._decompress(cmd.flags, cmd.body)
        if len(cmd.body) > self.config.max_message_bytes:
            raise CommandError(
                ErrorCode.TOO_LARGE,
                f"message body of {len(cmd.body)} bytes exceeds the node's limit of "
                f"{self.config.max_message_bytes} bytes: split it or send a link",
            )
        # Sends of one session reach the store in arrival order, even when one of them
        # has to wait for the membership to load.
        previous = session.send_gate
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.send_gate = gate
        try:
            if previous is not None and not previous.done():
                await previous
            members = await self.members_of(cmd.conv)
            if user not in members:
                raise CommandError(
                    ErrorCode.NOT_MEMBER, f"you are not a member of conversation {cmd.conv}"
                )
        finally:
            gate.set_result(None)
        # Awaiting the coroutine submits the write before any other callback runs.
        result = await self.store.append(cmd.conv, user, device, cmd.cmid, cmd.body)
        message = result.message
        session.emit(Kind.ACK, conv=message.conv, seq=message.seq, cmid=message.cmid)
        if not result.duplicate:
            self._publish(message, session, members)

    def _decompress(self, flags: int, body: bytes) -> bytes:
        """The body of a COMPRESSED frame, decompressed within max_message_bytes.

        Messages are stored and delivered uncompressed, so every recipient can read them
        whatever it negotiated."""
        if flags & FLAG_DICT:
            raise CommandError(
                ErrorCode.BAD_REQUEST,
                "this node ships no compression dictionary: clear the DICT flag",
            )
        if not flags & FLAG_COMPRESSED:
            return body
        try:
            return self._decompressor.decompress(body)
        except CompressionError as exc:
            code = ErrorCode.TOO_LARGE if "limit" in str(exc) else ErrorCode.BAD_FRAME
            raise CommandError(code, str(exc)) from None

    def _publish(self, message: StoredMessage, sender: Session | None, members: _Members) -> None:
        conv, seq = message.conv, message.seq
        last = self._published.get(conv)
        if last is not None:
            if seq <= last:
                return
            if seq > last + 1:
                self._held.setdefault(conv, {})[seq] = (message, sender, members)
                return
        self._fan_out(message, sender, members)
        self._published[conv] = seq
        held = self._held.get(conv)
        while held:
            nxt = held.pop(seq + 1, None)
            if nxt is None:
                break
            seq += 1
            self._fan_out(*nxt)
            self._published[conv] = seq
        if held is not None and not held:
            del self._held[conv]

    def _fan_out(self, message: StoredMessage, sender: Session | None, members: _Members) -> None:
        conv, seq = message.conv, message.seq
        binary: list[int] = []
        text: list[int] = []
        for user in members:
            devices = self._online.get(user)
            if not devices:
                continue
            for session in devices.values():
                if session is sender or not session.live or seq <= session.floors.get(conv, 0):
                    continue
                (text if session.codec.opcode == OP_TEXT else binary).append(session.conn_id)
        overflowed: list[int] = []
        if binary:
            frame = encode_frame(
                int(Kind.DELIVER),
                encode_envelope(message.sender, message.device, message.body),
                conv,
                seq,
                message.cmid,
            )
            overflowed += self.fanout.publish(encode_ws_frame(OP_BINARY, frame), binary)[2]
        if text:
            payload = JsonCodec.delivery(message)
            overflowed += self.fanout.publish(encode_ws_frame(OP_TEXT, payload), text)[2]
        for conn in overflowed:
            slow = self._sessions.get(conn)
            if slow is not None:
                slow.shut(CloseCode.SLOW_CONSUMER, "outbox full: read faster, then reconnect")
        if binary or text:
            self._schedule_flush()

    # -- SYNC ------------------------------------------------------------------------

    async def _sync(self, session: Session, cmd: Command) -> None:
        assert session.identity is not None
        user, device = session.identity.user, session.identity.device
        asked = _parse_cursors(cmd.json_args())
        # A re-sync: let what is already queued go first, then hold live traffic back.
        if not session.writing_paused:
            self.session_resumed(session)
        session.live = False
        stored = await self.store.cursors(user, device)
        replayed: dict[int, int] = {}
        todo: set[int] = set()
        epoch = -1
        while True:
            if epoch != self._membership_epoch:
                # (Re)read the user's conversations: one may have been joined meanwhile.
                epoch = self._membership_epoch
                for conv in await self.store.conversations_of(user):
                    if conv in replayed:
                        continue
                    member = (await self.members_of(conv)).get(user)
                    if member is not None:
                        start = asked.get(conv, stored.get(conv, member.joined_seq))
                        replayed[conv] = max(start, member.joined_seq)
                        todo.add(conv)
                continue
            todo.update(c for c in replayed if self._published.get(c, 0) > replayed[c])
            if not todo:
                break  # nothing awaited since both checks: turning live now leaves no gap
            for conv in sorted(todo):
                replayed[conv] = await self._replay(session, conv, replayed[conv])
                if session.is_closed:
                    return
            todo.clear()
        session.floors.update(replayed)
        session.live = True
        session.emit(Kind.SYNCED, obj={str(conv): seq for conv, seq in replayed.items()})

    async def _replay(self, session: Session, conv: int, after: int) -> int:
        while True:
            page = await self.store.history(conv, after, SYNC_PAGE)
            if not page:
                return after
            session.emit_payloads(session.codec.deliveries(page))
            after = page[-1].seq
            await session.writable()
            if session.is_closed or len(page) < SYNC_PAGE:
                return after

    # -- CURSOR ----------------------------------------------------------------------

    async def _cursor(self, session: Session, cmd: Command) -> None:
        assert session.identity is not None
        await self._require_member(cmd.conv, session.identity.user)
        try:
            await self.store.set_cursor(
                session.identity.user, session.identity.device, cmd.conv, cmd.seq
            )
        except StoreArgumentError as exc:
            raise CommandError(ErrorCode.BAD_REQUEST, str(exc)) from None

    async def _require_member(self, conv: int, user: str) -> Member:
        if conv == 0:
            raise CommandError(ErrorCode.BAD_REQUEST, "this command needs a conversation (conv)")
        member = (await self.members_of(conv)).get(user)
        if member is None:
            raise CommandError(
                ErrorCode.NOT_MEMBER, f"{user!r} is not a member of conversation {conv}"
            )
        return member

    # -- conversations ---------------------------------------------------------------

    async def _create_direct(self, session: Session, cmd: Command) -> None:
        assert session.identity is not None
        peer = _user_arg(cmd.json_args(), "peer")
        conv = await self.store.create_direct(session.identity.user, peer)
        await self._announce(session, cmd, conv, "created", ())

    async def _create_group(self, session: Session, cmd: Command) -> None:
        assert session.identity is not None
        args = cmd.json_args()
        title = args.get("title", "")
        if not isinstance(title, str):
            raise CommandError(ErrorCode.BAD_REQUEST, "'title' must be a string")
        members = _users_arg(args, "members")
        conv = await self.store.create_group(session.identity.user, title, members)
        await self._announce(session, cmd, conv, "created", ())

    async def _add_members(self, session: Session, cmd: Command) -> None:
        assert session.identity is not None
        users = _users_arg(cmd.json_args(), "users")
        await self._require_manager(cmd.conv, session.identity.user)
        await self.store.add_members(cmd.conv, users)
        self._invalidate_members(cmd.conv)
        conv = await self.store.conversation(cmd.conv)
        await self._announce(session, cmd, conv, "members_added", ())

    async def _remove_member(self, session: Session, cmd: Command) -> None:
        assert session.identity is not None
        user = _user_arg(cmd.json_args(), "user")
        if user != session.identity.user:
            await self._require_manager(cmd.conv, session.identity.user)
        await self._remove(session, cmd, user)

    async def _leave(self, session: Session, cmd: Command) -> None:
        assert session.identity is not None
        await self._remove(session, cmd, session.identity.user)

    async def _remove(self, session: Session, cmd: Command, user: str) -> None:
        await self._require_member(cmd.conv, user)
        await self.store.remove_member(cmd.conv, user)
        self._invalidate_members(cmd.conv)
        conv = await self.store.conversation(cmd.conv)
        await self._announce(session, cmd, conv, "member_removed", (user,))

    async def _require_manager(self, conv: int, user: str) -> None:
        member = await self._require_member(conv, user)
        if member.role not in ("owner", "admin"):
            raise CommandError(
                ErrorCode.FORBIDDEN,
                f"only owners and admins may change the members of conversation {conv}",
            )

    async def _announce(
        self,
        session: Session,
        cmd: Command,
        conv: Conversation,
        change: str,
        also: Iterable[str],
    ) -> None:
        """Answers the request with CONVERSATION and pushes it to every member online."""
        self._invalidate_members(conv.id)
        members = await self.members_of(conv.id)
        desc: dict[str, Any] = {
            "change": change,
            "type": conv.kind,
            "title": conv.title,
            "members": [{"user": m.user, "role": m.role} for m in members.values()],
        }
        session.emit(Kind.CONVERSATION, conv=conv.id, cmid=cmd.cmid, obj=desc)
        for user in {*members, *also}:
            for other in self.online(user):
                if other is not session:
                    other.emit(Kind.CONVERSATION, conv=conv.id, obj=desc)

    _handlers: Final = {
        Kind.SEND: _send,
        Kind.SYNC: _sync,
        Kind.CURSOR: _cursor,
        Kind.CREATE_DIRECT: _create_direct,
        Kind.CREATE_GROUP: _create_group,
        Kind.ADD_MEMBERS: _add_members,
        Kind.REMOVE_MEMBER: _remove_member,
        Kind.LEAVE: _leave,
    }


def _kind_name(kind: int) -> str:
    try:
        return Kind(kind).name
    except ValueError:
        return f"0x{kind:02x}"


def _store_error(exc: StoreError) -> CommandError:
    if isinstance(exc, ConversationNotFoundError):
        return CommandError(ErrorCode.NO_SUCH_CONVERSATION, str(exc))
    if isinstance(exc, NotAMemberError):
        return CommandError(ErrorCode.NOT_MEMBER, str(exc))
    if isinstance(exc, StoreUnavailableError):
        return CommandError(ErrorCode.UNAVAILABLE, str(exc), retry_after=RETRY_AFTER)
    if isinstance(exc, StoreArgumentError | ConversationKindError):
        return CommandError(ErrorCode.BAD_REQUEST, str(exc))
    log.error("store error: %s", exc)
    return CommandError(ErrorCode.INTERNAL, "store error; the node logged it")


def _parse_cursors(raw: dict[str, Any]) -> dict[int, int]:
    cursors: dict[int, int] = {}
    for key, value in raw.items():
        try:
            conv = int(key)
        except ValueError:
            conv = -1
        if conv <= 0 or not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CommandError(
                ErrorCode.BAD_REQUEST,
                f"SYNC cursors map conversation ids to sequence numbers >= 0; got "
                f"{key!r}: {value!r}",
            )
        cursors[conv] = value
    return cursors


def _user_arg(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise CommandError(ErrorCode.BAD_REQUEST, f"{key!r} must be a user id string")
    return value


def _users_arg(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key, [])
    if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
        raise CommandError(ErrorCode.BAD_REQUEST, f"{key!r} must be a list of user id strings")
    return value
