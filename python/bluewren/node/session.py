"""One client connection: the WebSocket protocol subclass and its per-connection state.

A :class:`Session` picks the subprotocol at the upgrade (``bluewren.v1`` preferred over
``bluewren.json.v1``), decodes each message into commands with its codec and hands them
to the :class:`~bluewren.node.server.Node`, which holds the policy. It enforces the
connection's own rules: HELLO within ``hello_timeout`` (else close 4002), the token's
expiry during the connection (close 4001 when ``exp`` passes). Both are deadlines in
the node's ``Deadlines`` (bluewren.node.deadlines), one timer for every connection.

Events leave through two doors: ``emit`` (answers to this connection: WELCOME, ACK,
ERROR, replays) queues on the connection's own buffer; deliveries fanned out to many
connections sit in the node's ``FanOut`` outbox and are moved here once per loop pass.
Either way one ``transport.write`` per loop pass carries everything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, cast

from bluewren.auth import Identity
from bluewren.node.commands import BINARY_SUBPROTOCOL, JSON_SUBPROTOCOL, CloseCode, Kind
from bluewren.node.wire import Codec, Command, CommandError
from bluewren.protocol import BufferedWebSocketProtocol

if TYPE_CHECKING:
    from bluewren.node.server import Node

__all__ = ["Session"]

CLOSE_GRACE = 5.0
"""Seconds a closed connection may take to drain before its socket is aborted."""

NO_FLOORS: Mapping[int, int] = MappingProxyType({})
"""The replay floors of a connection that has replayed nothing (shared, read-only)."""

SESSION_SLOTS: Final = (
    "_writable",
    "codec",
    "compress",
    "conn_id",
    "connected_at",
    "deadline",
    "floors",
    "identity",
    "is_closed",
    "live",
    "node",
    "send_gate",
)
"""The state every connection keeps (set by :meth:`SessionEvents._init_state`); each
transport's ``__slots__`` lists these and its own, so no connection has a ``__dict__``."""


class SessionEvents:
    """What the node calls on every connection, WebSocket or raw TCP: the verified
    identity, its deadline and event queueing. Each transport says how payloads are
    queued (:meth:`_queue`) and how it closes (:meth:`shut`)."""

    if not TYPE_CHECKING:  # (mypy would refuse the assignments below to empty slots)
        # No __dict__ from this base: the concrete classes list SESSION_SLOTS.
        __slots__ = ()

    node: Node
    conn_id: int
    codec: Codec
    identity: Identity | None
    is_closed: bool
    deadline: float
    """Loop time of this connection's deadline in ``node.deadlines`` (0.0: none): the
    HELLO timeout until HELLO, then the token's expiry."""

    def _init_state(self, node: Node, conn_id: int) -> None:
        self.node = node
        self.conn_id = conn_id
        self.connected_at = time.time()
        """When the connection was accepted (UNIX seconds; the admin API lists it)."""
        # The frame layer allows what a WebSocket message allows; the node then refuses
        # a SEND body over max_message_bytes with its conv and cmid in the ERROR.
        self.codec = node.binary_codec
        self.identity = None
        self.live = False
        self.floors: Mapping[int, int] = NO_FLOORS
        """Per conversation, the last sequence number a replay sent (see ``Session``);
        the shared empty ``NO_FLOORS`` until the first replay."""
        self.is_closed = False
        self.send_gate: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.compress = False
        """True once HELLO negotiated zstd with the shipped dictionary (compression.CAP_ZSTD)."""
        self._writable: asyncio.Event | None = None

    def _queue(self, payloads: list[bytes]) -> None:
        raise NotImplementedError

    def shut(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def authenticated(self, identity: Identity) -> None:
        """Records the verified identity and arms the token-expiry close."""
        self.identity = identity
        self.node.deadlines.set(self, identity.seconds_left())

    def deadline_passed(self) -> None:
        """No HELLO in time (close 4002), or the token expired (close 4001)."""
        if self.identity is None:
            self.shut(
                CloseCode.HELLO_TIMEOUT,
                f"no HELLO within {self.node.config.hello_timeout:g} s",
            )
        else:
            self.shut(CloseCode.UNAUTHORIZED, "token expired; reconnect with a new token")

    def emit(
        self,
        kind: Kind,
        *,
        conv: int = 0,
        seq: int = 0,
        cmid: int = 0,
        obj: dict[str, Any] | None = None,
    ) -> None:
        """Queues one event for this connection; it leaves at the node's next flush."""
        if not self.is_closed:
            self._queue([self.codec.event(kind, conv=conv, seq=seq, cmid=cmid, obj=obj)])

    def emit_ack(self, conv: int, seq: int, cmid: int) -> None:
        """Queues the ACK of a stored SEND (``emit(Kind.ACK, ...)``, on the hot path)."""
        if not self.is_closed:
            self._queue([self.codec.ack(conv, seq, cmid)])

    def emit_payloads(self, payloads: list[bytes]) -> None:
        """Queues already-encoded messages of this connection's encoding."""
        if not self.is_closed:
            self._queue(payloads)

    def emit_error(self, cmd: Command | None, err: CommandError) -> None:
        """Queues the ERROR event answering ``cmd``."""
        if not self.is_closed:
            self._queue([self.codec.error(cmd, err)])


class Session(SessionEvents, BufferedWebSocketProtocol):
    """Server side of one client connection; see the module docstring.

    ``conn_id`` keys the connection in the node's ``FanOut``. ``live`` is False until
    the client's first SYNC has replayed what it missed; only live sessions receive
    fanned-out deliveries. ``floors`` holds, per conversation, the last sequence number
    a replay sent, so a delivery already replayed is not sent again live.
    """

    # No per-instance __dict__: an idle connection's Python state is these slots.
    __slots__ = SESSION_SLOTS

    framing: str = "ws"
    """How fanned-out deliveries are framed for this connection (``bluewren.node.tcp``
    sessions say ``"tcp"``); JSON sessions are told apart by their codec."""

    def __new__(cls, node: Node, conn_id: int) -> Session:
        limit = node.config.max_ws_message_bytes
        return super().__new__(cls, max_frame_size=limit, max_message_size=limit)

    def __init__(self, node: Node, conn_id: int) -> None:
        self._init_state(node, conn_id)

    def __repr__(self) -> str:
        who = f"{self.identity.user}/{self.identity.device}" if self.identity else "anonymous"
        return f"<Session {self.conn_id} {who} {self.codec.name}>"

    # -- WebSocket callbacks ---------------------------------------------------------

    def request_received(self, path: str, offered: list[str]) -> str | tuple[int, str] | None:
        if BINARY_SUBPROTOCOL in offered:
            return BINARY_SUBPROTOCOL
        if JSON_SUBPROTOCOL in offered:
            self.codec = self.node.json_codec
            return JSON_SUBPROTOCOL
        return (
            400,
            f"offer the WebSocket subprotocol {BINARY_SUBPROTOCOL} or {JSON_SUBPROTOCOL}",
        )

    def opened(self) -> None:
        self.node.session_opened(self)

    def message_received(self, opcode: int, payload: bytes) -> None:
        if self.is_closed:
            return
        commands, error = self.codec.decode(opcode, payload)
        for cmd in commands:
            self.node.handle(self, cmd)
            if self.is_closed:
                return
        if error is not None:
            self.emit_error(error.cmd, error)

    def closing(self, code: int, reason: str) -> None:
        self.is_closed = True

    def closed(self, exc: Exception | None) -> None:
        self.is_closed = True
        if self._writable is not None:
            self._writable.set()
        self.node.session_closed(self)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._writable is not None:
            self._writable.clear()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._writable is not None:
            self._writable.set()
        self.node.session_resumed(self)

    # -- what the node calls ---------------------------------------------------------

    def _queue(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            self.send(self.codec.opcode, payload)
        self.node.mark_dirty(self)

    def shut(self, code: int, reason: str) -> None:
        """Flushes what is queued, then closes with ``code``."""
        if self.is_closed:
            return
        self.is_closed = True
        self.close(code, reason)
        # A peer that does not read never lets the close frame (or the transport's
        # buffer) drain: stop routing to it now and cut it off after a grace period.
        self.node.session_closed(self)
        if self.transport is not None:
            asyncio.get_running_loop().call_later(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance here.
        transport = cast("asyncio.Transport | None", self.transport)
        if transport is None or not transport.is_closing():
            return
        transport.abort()

    async def writable(self) -> None:
        """Returns once the transport accepts writes again (at once if it does)."""
        if not self.writing_paused or self.is_closed:
            return
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()
        await self._writable.wait()
