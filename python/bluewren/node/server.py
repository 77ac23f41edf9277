"""The node: accepts connections, applies policy, stores, acknowledges and fans out.

:class:`Node` owns the store, the token issuer, the online registry (user -> sessions),
a membership cache per conversation and the native ``FanOut`` with one outbox per
connection. The path of a SEND::

    decode -> auth and membership check -> store.append_each_nowait, once per loop pass
           -> ACK to the sender (the message is durable: in the store's message log,
              or committed by its group commit)
           -> DELIVER encoded once per subprotocol -> FanOut.publish to every live
              session of every member -> one flush per loop pass -> one write per socket

Ordering: the store assigns sequence numbers and answers appends in that order, and
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
import secrets
import ssl
import time
from collections.abc import Callable, Collection, Coroutine, Iterable
from functools import partial
from typing import Any, Final, cast

from bluewren import (
    FLAG_COMPRESSED,
    FLAG_DICT,
    CompressionError,
    Decompressor,
    FanOut,
    encode_frame,
    encode_ws_frame,
)
from bluewren.auth import Identity, TokenIssuer
from bluewren.errors import (
    AuthError,
    ConversationKindError,
    ConversationNotFoundError,
    NotAMemberError,
    StoreArgumentError,
    StoreError,
    StoreUnavailableError,
)
from bluewren.node.admission import AdmissionControl, peer_address
from bluewren.node.commands import COMMANDS, CloseCode, ErrorCode, Kind, encode_envelope
from bluewren.node.compression import CAP_ZSTD, COMPRESSION_NAME, DictCodec
from bluewren.node.config import NodeConfig, resolve_token_secret
from bluewren.node.deadlines import Deadlines
from bluewren.node.groups import add_members, create_group, leave, remove_member, rename, set_role
from bluewren.node.history import history
from bluewren.node.hooks import AfterStore, MessageContext, OnConnect, OnMessage
from bluewren.node.limits import ConnectionLimits, limit_exceeded
from bluewren.node.logs import conn_id_var, next_request_id, request_id_var
from bluewren.node.metrics import NodeMetrics
from bluewren.node.observability import ObservabilityServer
from bluewren.node.presence import Presence, presence_query, typing
from bluewren.node.receipts import Receipts, read_receipt
from bluewren.node.resilience import STORE_READ, STORE_WRITE, GuardedHooks, breaker_registry
from bluewren.node.session import Session
from bluewren.node.users import DISABLED_REASON, DisabledUsers
from bluewren.node.wire import OP_BINARY, OP_TEXT, BinaryCodec, Command, CommandError, JsonCodec
from bluewren.store import AppendResult, Conversation, Member, SQLiteStore, Store, StoredMessage
from bluewren.store.base import DEFAULT_KIND, NewMessage, new_message
from bluewren.store.guarded import GuardedStore

__all__ = ["Node"]

log = logging.getLogger("bluewren.node")

SYNC_PAGE: Final = 256
"""Messages read (and sent as one WebSocket message on bluewren.v1) per replay step."""

MEMBER_CACHE_SIZE: Final = 65536
"""Conversations whose membership the node keeps in memory (oldest loaded evicted first)."""

RETRY_AFTER: Final = 1.0
"""The retry hint (seconds) of an UNAVAILABLE error."""

_Members = dict[str, Member]
_SEND: Final = int(Kind.SEND)


class Node:
    """A BlueWren node serving WebSocket clients; see the module docstring.

    ``store`` defaults to a :class:`~bluewren.store.SQLiteStore` in ``config.data_dir``
    (the node opens and closes it); a store passed in must be open and stays open.
    ``issuer`` defaults to a :class:`~bluewren.auth.TokenIssuer` on the resolved secret.
    ``on_connect``, ``on_message`` and ``after_store`` are the embedding hooks
    (:mod:`bluewren.node.hooks`); they can also be set later on ``node.hooks``.
    ``tls`` is the context to serve with; by default it is loaded from
    ``config.tls_cert``/``tls_key`` when the node starts (``bluewren serve`` passes the
    one it loaded to check the files, so they are read once).
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        store: Store | None = None,
        issuer: TokenIssuer | None = None,
        on_connect: OnConnect | None = None,
        on_message: OnMessage | None = None,
        after_store: AfterStore | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.config: Final = config
        self._tls = tls
        self._store = store
        self._owns_store = store is None
        self._issuer = issuer
        self.fanout: Final = FanOut()
        self._decompressor = Decompressor(max_output=config.max_message_bytes)
        self._zstd = DictCodec(config.max_message_bytes)
        self._server: asyncio.Server | None = None
        self._tcp_server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_conn = 0
        self._sessions: dict[int, Session] = {}
        self.deadlines: Final = Deadlines(self._sessions.get)
        """Each connection's HELLO timeout, then token expiry, on one loop timer."""
        self.binary_codec: Final = BinaryCodec(config.max_ws_message_bytes)
        self.json_codec: Final = JsonCodec()
        """The subprotocols' codecs, stateless and shared by every connection."""
        # Per user, the authenticated connections (a list: most users have one device,
        # and a one-item list weighs a quarter of a one-item dict).
        self._online: dict[str, list[Session]] = {}
        self._members: dict[int, _Members] = {}
        self._member_gen: dict[int, int] = {}
        self._member_loads: dict[int, asyncio.Task[_Members]] = {}
        self._membership_epoch = 0
        self._published: dict[int, int] = {}
        self._held: dict[int, dict[int, tuple[StoredMessage, Session | None, _Members]]] = {}
        self._dirty: set[Session] = set()
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.breakers: Final = breaker_registry(config.breakers)
        """The circuit breakers of the node's dependencies (bluewren.node.resilience)."""
        self.hooks: Final = GuardedHooks(self.breakers, on_connect, on_message, after_store)
        self.admission: Final = AdmissionControl(config, time.monotonic)
        self.presence: Final = Presence(self)
        self.receipts: Final = Receipts(self)
        self.limits: Final = ConnectionLimits(config, time.monotonic)
        self._hello_pending: dict[int, list[Command]] = {}
        self._sends_in_flight = 0
        """SENDs of the synchronous path between store submission and ACK."""
        self._send_run: list[tuple[Session, Command, _Members]] = []
        self._run_messages: list[NewMessage] = []
        """The synchronous path's SENDs of this loop pass, checked by the node, not yet
        handed to the store: one ``append_each_nowait`` per pass (``_submit_sends``)."""
        self._run_started = 0.0
        self._sends_drained: asyncio.Future[None] | None = None
        self.metrics: Final = NodeMetrics()
        self._http: ObservabilityServer | None = None
        self.disabled: Final = DisabledUsers(self)
        """The disabled users, refused at HELLO (bluewren.node.users)."""

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
    def tcp_port(self) -> int:
        """The port of the raw TCP listener (``config.tcp_port``; the real one if 0)."""
        if self._tcp_server is None or not self._tcp_server.sockets:
            raise RuntimeError("the TCP listener is off: set NodeConfig.tcp_port")
        return int(self._tcp_server.sockets[0].getsockname()[1])

    @property
    def metrics_port(self) -> int:
        """The port of /metrics, /healthz and /readyz (``config.metrics_port``)."""
        if self._http is None:
            raise RuntimeError("the metrics endpoint is off: set NodeConfig.metrics_port")
        return self._http.port

    @property
    def url(self) -> str:
        """``ws://host:port/`` of the node (``wss://`` with TLS)."""
        scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{self.config.host}:{self.port}/"

    async def start(self) -> None:
        """Opens the store and starts listening."""
        self._loop = asyncio.get_running_loop()
        if self._issuer is None:
            secret = resolve_token_secret(self.config.data_dir, self.config.token_secret)
            self._issuer = TokenIssuer(secret)
        if self._store is None:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
            self._store = SQLiteStore(
                self.config.database_path,
                synchronous=self.config.sqlite_synchronous,
                wal_checkpoint_pages=self.config.store_wal_checkpoint_pages,
                batch_max=self.config.store_batch_max,
                message_log=self.config.store_message_log,
                log_backlog_max=self.config.store_log_backlog_max,
                log_segment_bytes=self.config.store_log_segment_bytes,
                log_cache_entries=self.config.store_log_cache_entries,
            )
            await self._store.open()
        if not isinstance(self._store, GuardedStore):
            self._store = GuardedStore(
                self._store,
                read=self.breakers[STORE_READ],
                write=self.breakers[STORE_WRITE],
                on_late_append=self._late_append,
            )
        await self.disabled.start()
        tls = self._tls
        if tls is None and self.config.tls_cert is not None and self.config.tls_key is not None:
            from bluewren.node.tls import server_context

            tls = self._tls = server_context(self.config.tls_cert, self.config.tls_key)
        self._server = await self._loop.create_server(
            self._new_session,
            self.config.host,
            self.config.port,
            reuse_address=True,
            backlog=self.config.listen_backlog,
            ssl=tls,
            # A TLS handshake gets the time a HELLO gets (the HELLO clock starts after it).
            ssl_handshake_timeout=self.config.hello_timeout if tls is not None else None,
        )
        if self.config.tcp_port is not None:
            from bluewren.node.tcp import TcpSession

            def new_tcp_session() -> asyncio.Protocol:
                self._next_conn += 1
                return TcpSession(self, self._next_conn)

            self._tcp_server = await self._loop.create_server(
                new_tcp_session,
                self.config.host,
                self.config.tcp_port,
                reuse_address=True,
                backlog=self.config.listen_backlog,
            )
        self.admission.start()
        if self.config.metrics_port is not None:
            self._http = ObservabilityServer(self)
            await self._http.start(self.config.host, self.config.metrics_port, ssl=tls)

    async def stop(self) -> None:
        """Stops gracefully within ``config.shutdown_timeout``: stops accepting and
        reading, lets commands in flight commit and send their ACKs, closes every
        connection (1001, "reconnect"), then closes the store if the node opened it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout
        servers = [s for s in (self._server, self._tcp_server) if s is not None]
        for server in servers:
            server.close()
        await self.admission.stop()
        await self.disabled.stop()
        self.deadlines.close()
        sessions = list(self._sessions.values())
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance here.
        for session in sessions:
            transport = cast("asyncio.Transport | None", session.transport)
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
        # A task may start another (a membership load): wait until none is left.
        await self.commands_done(deadline - loop.time())
        self._flush()
        for session in sessions:
            session.shut(1001, "node stopping: reconnect and SYNC")
        # Give clean closes a moment (at most a second of the bound left), then cut off
        # peers that do not read.
        steps = int(max(0.0, min(deadline - loop.time(), 1.0)) / 0.01)
        for _ in range(steps):
            if all(s.transport is None for s in sessions):
                break
            await asyncio.sleep(0.01)
        for session in sessions:
            transport = cast("asyncio.Transport | None", session.transport)
            if transport is not None:
                transport.abort()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), max(0.1, deadline - loop.time()))
        self._server = self._tcp_server = None
        if self._owns_store and self._store is not None:
            await self._store.close()
            self._store = None
        if self._http is not None:
            await self._http.close()
            self._http = None

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
        """A connection finished its upgrade: give it an outbox (past ``max_connections``,
        close it with 1013 and a retry hint instead)."""
        c = self.config
        refused = self.admission.refuse_connection(peer_address(session.transport))
        if refused is not None:
            session.shut(CloseCode.TRY_AGAIN_LATER, refused)
            return
        if len(self._sessions) >= c.max_connections:
            session.shut(
                CloseCode.TRY_AGAIN_LATER,
                f"node at max_connections ({c.max_connections}): retry after "
                f"{c.overload_retry_after:g} s",
            )
            return
        self._sessions[session.conn_id] = session
        self.deadlines.set(session, c.hello_timeout)
        log.debug("connection opened", extra={"conn_id": session.conn_id})
        self.fanout.register(
            session.conn_id, c.outbox_low_water, c.outbox_high_water, c.outbox_max_bytes
        )

    def session_closed(self, session: Session) -> None:
        """The transport is gone: forget the connection."""
        session.live = False
        self.deadlines.clear(session)
        if self._sessions.pop(session.conn_id, None) is not None:
            log.debug("connection closed", extra={"conn_id": session.conn_id})
        self._dirty.discard(session)
        self.fanout.unregister(session.conn_id)
        self.limits.forget(session.conn_id)
        self._hello_pending.pop(session.conn_id, None)
        if session.identity is not None:
            user = session.identity.user
            devices = self._online.get(user)
            if devices is not None and session in devices:
                devices.remove(session)
                if not devices:
                    del self._online[user]
                    self.presence.went_offline(user)

    def session_resumed(self, session: Session) -> None:
        """The transport drained: move what the outbox held while it was paused."""
        data = self.fanout.drain(session.conn_id)
        if data:
            session.send_raw(data)
            self.mark_dirty(session)

    def online(self, user: str) -> list[Session]:
        """The user's authenticated connections."""
        return list(self._online.get(user, ()))

    @property
    def serving(self) -> bool:
        """True from start() until stop() begins."""
        return self._server is not None and self._server.is_serving()

    def online_users(self) -> Collection[str]:
        """The users with at least one authenticated connection (a live view)."""
        return self._online.keys()

    async def peers_of(self, user: str) -> set[str]:
        """The online users who share a conversation with ``user`` (``user`` excluded)."""
        peers: set[str] = set()
        online = self._online
        for conv in await self.store.conversations_of(user):
            members = await self.members_of(conv)
            # Walk the smaller side: a huge group with few users online costs little.
            if len(online) < len(members):
                peers.update(u for u in online if u in members)
            else:
                peers.update(u for u in members if u in online)
        peers.discard(user)
        return peers

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
                if session in dirty:
                    session.send_raw(data)  # behind its queued events, in one write
                else:
                    session.write_raw(data)
        for session in dirty:
            session.flush()

    # -- command dispatch ------------------------------------------------------------

    def handle(self, session: Session, cmd: Command) -> None:
        """Runs one decoded command (synchronously when it needs no I/O)."""
        if self._hello_pending:
            pending = self._hello_pending.get(session.conn_id)
            if pending is not None:
                pending.append(cmd)  # the on_connect hook is deciding: keep the order
                return
        identity = session.identity
        try:
            if cmd.kind == _SEND and identity is not None:  # the hot path first
                if self._send_sync(session, cmd, identity.user):
                    return
                work = self._send(session, cmd)
            else:
                if cmd.kind not in COMMANDS:
                    raise CommandError(
                        ErrorCode.UNKNOWN_KIND, f"kind 0x{cmd.kind:02x} is not a command"
                    )
                if cmd.kind == Kind.HELLO:
                    self._hello(session, cmd)
                    return
                if identity is None:
                    raise CommandError(
                        ErrorCode.NOT_AUTHENTICATED, "send HELLO with a token before anything else"
                    )
                self.limits.admit(session.conn_id, cmd)
                work = self._handlers[cmd.kind](self, session, cmd)
        except CommandError as err:
            session.emit_error(cmd, err)
            return
        except StoreError as exc:
            session.emit_error(cmd, _store_error(exc))
            return
        self._spawn(self._run(session, cmd, work))

    def _send_sync(self, session: Session, cmd: Command, user: str) -> bool:
        """A SEND of an authenticated session, admitted and, when possible, submitted
        now: True if it was (the ACK follows from the store's completion), False if it
        needs the task (membership not cached, an earlier send of this session still
        waiting, or an on_message hook that must run before store)."""
        self.admission.admit_send(user)
        members = self._members.get(cmd.conv)
        gate = session.send_gate
        store = self._store
        if (
            members is not None
            and (gate is None or gate.done())
            and self.hooks.on_message is None
            and isinstance(store, GuardedStore)
            and store.nowait_ok
        ):
            self._send_now(session, cmd, members, store)
            return True
        return False

    async def commands_done(self, grace: float) -> None:
        """Waits at most ``grace`` seconds until no command is in flight (the node's
        tasks, and SENDs between their store submission and their ACK)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self._tasks or self._sends_in_flight) and (left := deadline - loop.time()) > 0:
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=left)
            else:
                drained = self._sends_drained
                if drained is None or drained.done():
                    self._sends_drained = drained = loop.create_future()
                await asyncio.wait([drained], timeout=left)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Runs ``coro`` as a task the node waits for when it stops."""
        self._spawn(coro)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, session: Session, cmd: Command, work: Coroutine[Any, Any, None]) -> None:
        conn_id_var.set(session.conn_id)  # this task's own context: its log lines
        request_id_var.set(next_request_id(session.conn_id))
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
            self.admission.admit_login(peer_address(session.transport))
        except CommandError as err:
            session.emit_error(cmd, err)
            session.shut(CloseCode.TRY_AGAIN_LATER, f"too many logins: {err}")
            return
        try:
            identity = self.issuer.verify(cmd.body.decode("utf-8", "replace"))
        except AuthError as exc:
            log.info("token refused: %s", exc, extra={"conn_id": session.conn_id})  # not the token
            session.emit_error(cmd, CommandError(ErrorCode.AUTH_FAILED, str(exc)))
            session.shut(CloseCode.UNAUTHORIZED, "token refused")
            return
        if self._refuse_disabled(session, cmd, identity):
            return
        if self.hooks.on_connect is None:
            self._welcome(session, cmd, identity)
            return
        self._hello_pending[session.conn_id] = []
        self._spawn(self._hello_hooked(session, cmd, identity))

    async def _hello_hooked(self, session: Session, cmd: Command, identity: Identity) -> None:
        # The hook sees what the WebSocket layer hands up of the request.
        headers = {"sec-websocket-protocol": session.codec.name}
        try:
            allowed = await self.hooks.connect_allowed(identity, headers)
        except CommandError as err:  # the hook's breaker is open or it timed out
            self._hello_pending.pop(session.conn_id, None)
            session.emit_error(cmd, err)
            session.shut(CloseCode.TRY_AGAIN_LATER, str(err))
            return
        queued = self._hello_pending.pop(session.conn_id, [])
        if session.is_closed:
            return
        if not allowed:
            refused = CommandError(
                ErrorCode.AUTH_FAILED, "the node refused this connection (on_connect hook)"
            )
            session.emit_error(cmd, refused)
            session.shut(CloseCode.UNAUTHORIZED, "connection refused")
            return
        if self._refuse_disabled(session, cmd, identity):  # disabled while the hook ran
            return
        if self._welcome(session, cmd, identity):
            for queued_cmd in queued:
                if session.is_closed:
                    break
                self.handle(session, queued_cmd)

    def _refuse_disabled(self, session: Session, cmd: Command, identity: Identity) -> bool:
        """Refuses a disabled user's HELLO (AUTH_FAILED, close 4001); True if it did."""
        if identity.user not in self.disabled:
            return False
        log.info("disabled user refused", extra={"conn_id": session.conn_id})
        refused = CommandError(ErrorCode.AUTH_FAILED, f"user {identity.user!r} is disabled")
        session.emit_error(cmd, refused)
        session.shut(CloseCode.UNAUTHORIZED, DISABLED_REASON)
        return True

    def _welcome(self, session: Session, cmd: Command, identity: Identity) -> bool:
        """Admits an authenticated connection, or refuses it past max_devices_per_user."""
        devices = self._online.get(identity.user, ())
        known = {s.identity.device for s in devices if s.identity is not None}
        cap = self.config.max_devices_per_user
        if identity.device not in known and len(known) >= cap:
            message = f"{identity.user!r} has {cap} devices connected: disconnect one first"
            session.emit_error(cmd, limit_exceeded("max_devices_per_user", cap, message))
            session.shut(CloseCode.POLICY_VIOLATION, "too many devices")
            return False
        first = not devices
        session.authenticated(identity)
        if cmd.seq & CAP_ZSTD and session.codec.opcode == OP_BINARY:
            session.compress = True
        self._online.setdefault(identity.user, []).append(session)
        session.emit(
            Kind.WELCOME,
            obj={
                "user": identity.user,
                "device": identity.device,
                "session": session.conn_id,
                "expires_at": identity.expires_at,
                "max_message_bytes": self.config.max_message_bytes,
                "compression": COMPRESSION_NAME if session.compress else None,
            },
        )
        if first:
            self.presence.came_online(identity.user)
        return True

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

    async def require_member(self, conv: int, user: str) -> Member:
        """``user``'s membership of ``conv``; CommandError NOT_MEMBER if none."""
        return await self._require_member(conv, user)

    async def members_of_checked(self, conv: int, user: str) -> _Members:
        """``conv``'s members, once ``user`` is known to be one of them."""
        await self._require_member(conv, user)
        return await self.members_of(conv)

    def invalidate_members(self, conv: int) -> None:
        """Drops the cached membership of ``conv`` after a change."""
        self._invalidate_members(conv)

    def _invalidate_members(self, conv: int) -> None:
        self._members.pop(conv, None)
        self._member_gen[conv] = self._member_gen.get(conv, 0) + 1
        self._membership_epoch += 1

    # -- SEND ------------------------------------------------------------------------

    def _send_body(self, cmd: Command) -> bytes:
        """The body SEND ``cmd`` stores (decompressed into ``cmd.body``), or CommandError
        for a SEND no path may store: no cmid, no conversation, a bad or oversized body."""
        if cmd.cmid == 0:
            raise CommandError(ErrorCode.BAD_REQUEST, "SEND needs a non-zero cmid")
        if cmd.conv == 0:
            raise CommandError(ErrorCode.BAD_REQUEST, "SEND needs a conversation id (conv)")
        if cmd.flags:
            cmd.body = self._decompress(cmd.flags, cmd.body)
        body = cmd.body
        if len(body) > self.config.max_message_bytes:
            raise CommandError(
                ErrorCode.TOO_LARGE,
                f"message body of {len(body)} bytes exceeds the node's limit of "
                f"{self.config.max_message_bytes} bytes: split it or send a link",
            )
        return body

    async def _send(self, session: Session, cmd: Command) -> None:
        assert session.identity is not None
        user, device = session.identity.user, session.identity.device
        self._send_body(cmd)
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
            if self.hooks.on_message is not None:
                # Inside the gate: a slow hook must not let a later send overtake this one.
                ctx = MessageContext(user, device, cmd.conv, cmd.cmid, cmd.body, len(members))
                cmd.body = await self.hooks.check_message(ctx)
                if len(cmd.body) > self.config.max_message_bytes:
                    raise CommandError(
                        ErrorCode.TOO_LARGE,
                        f"the rewritten body of {len(cmd.body)} bytes exceeds the node's "
                        f"limit of {self.config.max_message_bytes} bytes",
                    )
        finally:
            gate.set_result(None)
        # Awaiting the coroutine submits the write before any other callback runs
        # (through GuardedStore: schedules it, and writes start in the order called).
        started = time.perf_counter()
        result = await self.store.append(cmd.conv, user, device, cmd.cmid, cmd.body)
        if not result.duplicate:
            self.metrics.stored(time.perf_counter() - started)
            log.debug(  # never the body: ids and sizes only
                "message stored",
                extra={"conv": cmd.conv, "seq": result.message.seq, "bytes": len(cmd.body)},
            )
        message = result.message
        session.emit_ack(message.conv, message.seq, message.cmid)
        if not result.duplicate:
            self._publish(message, session, members)
            self._after_store(message)

    def _send_now(
        self, session: Session, cmd: Command, members: _Members, store: GuardedStore
    ) -> None:
        """A SEND without a task: validated now, and handed to the store with the other
        SENDs of this loop pass (``_submit_sends``); the ACK and the fan-out run from the
        store's completion callback (in commit order, as ``_send`` does). Raises
        CommandError or StoreError for what ``_send`` would answer with."""
        assert session.identity is not None
        user, device = session.identity.user, session.identity.device
        body = self._send_body(cmd)
        if user not in members:
            raise CommandError(
                ErrorCode.NOT_MEMBER, f"you are not a member of conversation {cmd.conv}"
            )
        # Valid for the store by construction (it checks again, once for the run): the
        # user and device of a verified token, the conv of a cached membership, a
        # non-zero u64 cmid, a bytes body.
        message = new_message(cmd.conv, user, device, cmd.cmid, body, DEFAULT_KIND)
        run = self._send_run
        if not run:
            assert self._loop is not None
            self._loop.call_soon(self._submit_sends, store)
            self._run_started = time.perf_counter()
        run.append((session, cmd, members))
        self._run_messages.append(message)
        self._sends_in_flight += 1

    def _submit_sends(self, store: GuardedStore) -> None:
        """Hands this loop pass's SENDs to the store, in arrival order, in runs of at most
        ``store_batch_max`` (each is committed in one transaction)."""
        entries, messages = self._send_run, self._run_messages
        self._send_run, self._run_messages = [], []
        started = self._run_started
        size = self.config.store_batch_max
        for at in range(0, len(entries), size):
            run = entries[at : at + size]
            done = partial(self._sends_done, run, started)
            try:
                store.append_each_nowait(messages[at : at + size], done)
            except StoreError as exc:  # an open breaker, a closed store
                done(None, exc)

    def _sends_done(
        self,
        run: list[tuple[Session, Command, _Members]],
        started: float,
        outcomes: list[AppendResult | StoreError] | None,
        error: BaseException | None,
    ) -> None:
        """Answers each SEND of ``run`` (from the store's completion, in commit order)."""
        self._sends_in_flight -= len(run)
        if not self._sends_in_flight and self._sends_drained is not None:
            if not self._sends_drained.done():
                self._sends_drained.set_result(None)
            self._sends_drained = None
        debug = log.isEnabledFor(logging.DEBUG)
        stored = 0
        # Consecutive ACKs of one connection are queued together.
        acks: list[bytes] = []
        to: Session | None = None
        for i, (session, cmd, members) in enumerate(run):
            if session is not to:
                if acks:
                    cast(Session, to).emit_payloads(acks)
                    acks = []
                to = session
            outcome = error if outcomes is None else outcomes[i]
            try:
                if not isinstance(outcome, AppendResult):
                    if acks:
                        session.emit_payloads(acks)
                        acks = []
                    if isinstance(outcome, StoreError):
                        session.emit_error(cmd, _store_error(outcome))
                        continue
                    raise outcome or RuntimeError("the store answered a SEND with nothing")
                message = outcome.message
                acks.append(session.codec.ack(message.conv, message.seq, message.cmid))
                if outcome.duplicate:
                    continue
                stored += 1
                if debug:
                    log.debug(  # never the body: ids and sizes only
                        "message stored",
                        extra={
                            "conv": message.conv,
                            "seq": message.seq,
                            "bytes": len(message.body),
                            "conn_id": session.conn_id,
                            "request_id": next_request_id(session.conn_id),
                        },
                    )
                self._publish(message, session, members)
                self._after_store(message)
            except Exception:
                if acks:
                    session.emit_payloads(acks)
                    acks = []
                log.exception("command %s of %r failed", _kind_name(cmd.kind), session)
                session.emit_error(
                    cmd, CommandError(ErrorCode.INTERNAL, "internal error; the node logged it")
                )
        if acks:
            cast(Session, to).emit_payloads(acks)
        self.metrics.stored(time.perf_counter() - started, stored)

    def _late_append(self, result: AppendResult) -> None:
        """An append committed after its SEND was answered UNAVAILABLE (store timeout):
        deliver it anyway, or later messages of its conversation would wait behind it."""

        async def deliver() -> None:
            message = result.message
            try:
                members = await self.members_of(message.conv)
            except StoreError:
                members = {}  # not delivered live; SYNC replays it from the store
            self._publish(message, None, members)
            self._after_store(message)

        if self._loop is not None and not self._loop.is_closed():
            self._spawn(deliver())

    def _after_store(self, message: StoredMessage) -> None:
        if self.hooks.after_store is not None:
            self._spawn(self.hooks.stored(message))

    async def post(
        self,
        conv: int,
        user: str,
        body: bytes | str,
        *,
        device: str = "server",
        cmid: int | None = None,
    ) -> StoredMessage:
        """Stores a message from ``user`` (a member of ``conv``) and delivers it, as a
        SEND would, without a connection: for bots and services embedded in the node.

        ``on_message`` does not run (the caller is the node's own code); ``after_store``
        does. A repeated ``cmid`` stores nothing and returns the original message."""
        data = body.encode() if isinstance(body, str) else body
        members = await self.members_of(conv)
        if user not in members:
            raise NotAMemberError(conv, user)
        result = await self.store.append(conv, user, device, cmid or secrets.randbits(63) | 1, data)
        if not result.duplicate:
            self._publish(result.message, None, members)
            self._after_store(result.message)
        return result.message

    def _decompress(self, flags: int, body: bytes) -> bytes:
        """The body of a COMPRESSED frame, decompressed within max_message_bytes.

        Messages are stored and delivered uncompressed, so every recipient can read them
        whatever it negotiated."""
        if flags & FLAG_DICT and not flags & FLAG_COMPRESSED:
            raise CommandError(ErrorCode.BAD_REQUEST, "the DICT flag needs COMPRESSED as well")
        if not flags & FLAG_COMPRESSED:
            return body
        decompressor = self._zstd.dict_decompressor if flags & FLAG_DICT else self._decompressor
        try:
            return decompressor.decompress(body)
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
        # Recipients by (framing, compressed): each form is encoded once per message.
        groups: dict[tuple[str, bool], list[int]] = {}
        online = self._online
        for user in members:
            devices = online.get(user)
            if not devices:
                continue
            for session in devices:
                if session is sender or not session.live or seq <= session.floors.get(conv, 0):
                    continue
                key = (
                    ("json", False)
                    if session.codec.opcode == OP_TEXT
                    else (
                        session.framing,
                        session.compress,
                    )
                )
                conns = groups.get(key)
                if conns is None:
                    groups[key] = [session.conn_id]
                else:
                    conns.append(session.conn_id)
        if not groups:  # nobody to deliver to now (e.g. a 1:1 peer offline)
            self.metrics.fanned_out(0, 0)
            return
        overflowed: list[int] = []
        frames: dict[bool, bytes] = {}
        for (framing, compress), conns in groups.items():
            if framing == "json":
                payload = encode_ws_frame(OP_TEXT, JsonCodec.delivery(message))
            else:
                frame = frames.get(compress)
                if frame is None:
                    frame = frames[compress] = self._delivery_frame(message, compress)
                payload = frame if framing == "tcp" else encode_ws_frame(OP_BINARY, frame)
            overflowed += self.fanout.publish(payload, conns)[2]
        self.metrics.fanned_out(sum(map(len, groups.values())), len(overflowed))
        for conn in overflowed:
            slow = self._sessions.get(conn)
            if slow is not None:
                slow.shut(CloseCode.SLOW_CONSUMER, "outbox full: read faster, then reconnect")
        if groups:
            self._schedule_flush()

    def _delivery_frame(self, message: StoredMessage, compress: bool) -> bytes:
        """The DELIVER frame of ``message``; its body zstd+dict if ``compress`` pays."""
        envelope = encode_envelope(message.sender, message.device, message.body)
        flags = 0
        if compress:
            packed = self._zstd.compress(envelope)
            if packed is not None:
                envelope, flags = packed, FLAG_COMPRESSED | FLAG_DICT
        return encode_frame(
            int(Kind.DELIVER), envelope, message.conv, message.seq, message.cmid, flags
        )

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
        if replayed:
            session.floors = {**session.floors, **replayed} if session.floors else replayed
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
            mark = await self.store.set_cursor(
                session.identity.user, session.identity.device, cmd.conv, cmd.seq
            )
        except StoreArgumentError as exc:
            raise CommandError(ErrorCode.BAD_REQUEST, str(exc)) from None
        await self.receipts.moved(cmd.conv, session.identity.user, "delivered", mark, session)

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

    async def _announce(
        self,
        session: Session,
        cmd: Command,
        conv: Conversation,
        change: str,
        also: Iterable[str],
    ) -> None:
        """Answers the request with CONVERSATION and pushes it to every member online."""
        await self.announce(session, cmd, conv, change, also)

    async def announce(
        self,
        session: Session,
        cmd: Command,
        conv: Conversation,
        change: str,
        also: Iterable[str],
    ) -> None:
        """Answers the request with CONVERSATION and pushes it to every member online
        (and to the users in ``also``, e.g. one just removed)."""
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

    # Every command but HELLO and SEND (``handle`` dispatches those itself).
    _handlers: Final[dict[int, Callable[[Node, Session, Command], Coroutine[Any, Any, None]]]] = {
        Kind.SYNC: _sync,
        Kind.CURSOR: _cursor,
        Kind.CREATE_DIRECT: _create_direct,
        Kind.CREATE_GROUP: create_group,
        Kind.ADD_MEMBERS: add_members,
        Kind.REMOVE_MEMBER: remove_member,
        Kind.LEAVE: leave,
        Kind.RENAME: rename,
        Kind.SET_ROLE: set_role,
        Kind.RECEIPT: read_receipt,
        Kind.TYPING: typing,
        Kind.PRESENCE: presence_query,
        Kind.HISTORY: history,
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
        # A breaker's rejection knows when it will let calls through again.
        retry_after = getattr(exc, "retry_after", RETRY_AFTER)
        return CommandError(ErrorCode.UNAVAILABLE, str(exc), retry_after=retry_after)
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
