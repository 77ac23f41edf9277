"""The raw TCP transport: bare BlueWren frames on a plain TCP stream.

For trusted services and fast clients that do not need WebSocket: no upgrade, no
WebSocket framing or masking, frames back to back on the stream (docs/protocol.md,
"Raw TCP transport"). The commands, events, errors and rules are those of the binary
WebSocket subprotocol ``bluewren.v1``: HELLO first (within ``hello_timeout``), SYNC to
turn live, then SEND / ACK / DELIVER. A :class:`TcpSession` is what the node's policy
sees in place of a WebSocket :class:`~bluewren.node.session.Session`; it has the same
attributes and methods, so ``Node`` handles both alike.

The stream has no close frame: where a WebSocket session would close with a code, a
TCP session sends what is queued (for a refused HELLO or a malformed frame: the ERROR
event), then closes the stream. A frame that does not decode (bad version, reserved
bits, a body over the limit) is final on a stream, since the next frame boundary is
lost: ERROR ``BAD_FRAME`` (or ``TOO_LARGE``), then close.

Enable it with ``NodeConfig(tcp_port=...)`` (``--tcp-port`` on the command line).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from bluewren import FrameDecoder, FrameError
from bluewren.node.commands import ErrorCode
from bluewren.node.session import CLOSE_GRACE, SESSION_SLOTS, SessionEvents
from bluewren.node.wire import Command, CommandError

if TYPE_CHECKING:
    from bluewren.node.server import Node
    from bluewren.node.session import Session

__all__ = ["TcpSession"]


class TcpSession(SessionEvents, asyncio.Protocol):
    """One raw TCP connection; see the module docstring."""

    __slots__ = (
        *SESSION_SLOTS,
        "_broken",
        "_decoder",
        "_failing",
        "_out",
        "transport",
        "writing_paused",
    )

    framing = "tcp"

    def __init__(self, node: Node, conn_id: int) -> None:
        self._init_state(node, conn_id)
        self.transport: asyncio.Transport | None = None
        self.writing_paused = False
        self._decoder = FrameDecoder(node.config.max_ws_message_bytes)
        self._out: list[bytes] = []
        self._broken = False
        self._failing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        who = f"{self.identity.user}/{self.identity.device}" if self.identity else "anonymous"
        return f"<TcpSession {self.conn_id} {who}>"

    @property
    def _session(self) -> Session:
        # The node's policy is typed for WebSocket sessions; this class has the same
        # attributes and methods (duck typing, checked by the TCP tests).
        return cast("Session", self)

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.node.session_opened(self._session)

    def data_received(self, data: bytes) -> None:
        if self.is_closed or self._broken:
            return
        error: CommandError | None = None
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            frames = getattr(exc, "frames", [])
            code = ErrorCode.TOO_LARGE if "exceeds" in str(exc) else ErrorCode.BAD_FRAME
            error = CommandError(code, f"{exc}; the stream cannot be resynchronised: closing")
        for kind, flags, conv, seq, cmid, body in frames:
            self.node.handle(self._session, Command(kind, conv, seq, cmid, body, None, flags))
            if self.is_closed:
                return
        if error is not None:
            # Nothing after the bad frame can be read; answer the commands before it
            # (their ACKs), then the ERROR, then close.
            self._broken = True
            if self.transport is not None:
                self.transport.pause_reading()
            task = asyncio.ensure_future(self._fail(error))
            self._failing = task

    async def _fail(self, error: CommandError) -> None:
        # The node's commands in flight, this connection's among them.
        await self.node.commands_done(CLOSE_GRACE)
        self.emit_error(None, error)
        self.shut(1002, "malformed frame")

    def eof_received(self) -> bool:
        # The client has nothing more to say: let what is in flight be answered, then
        # close (keeping the write side open for those answers).
        asyncio.get_running_loop().call_later(CLOSE_GRACE, self.shut, 1000, "end of stream")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self.transport = None
        if self._writable is not None:
            self._writable.set()
        self.node.session_closed(self._session)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self._writable is not None:
            self._writable.clear()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._writable is not None:
            self._writable.set()
        self.node.session_resumed(self._session)

    # -- what the node calls (the Session interface) ---------------------------------

    def _queue(self, payloads: list[bytes]) -> None:
        self._out.extend(payloads)
        self.node.mark_dirty(self._session)

    def send_raw(self, data: bytes) -> None:
        """Queues bytes already framed for this stream (fanned-out deliveries)."""
        self._out.append(data)

    def write_raw(self, data: bytes) -> None:
        """Writes framed bytes now, after anything queued (no join when nothing is)."""
        transport = self.transport
        if not self._out and transport is not None and not transport.is_closing():
            transport.write(data)
        else:
            self._out.append(data)
            self.flush()

    def flush(self) -> None:
        """Writes everything queued in one ``transport.write``."""
        transport = self.transport
        if self._out and transport is not None and not transport.is_closing():
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            transport.write(data)

    def shut(self, code: int, reason: str) -> None:
        """Sends what is queued, then closes the stream (``code`` has no wire form)."""
        if self.is_closed:
            return
        self.is_closed = True
        self.flush()
        self.node.session_closed(self._session)
        transport = self.transport
        if transport is not None:
            transport.close()  # after the buffered data is written
            asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Same as :meth:`shut`."""
        self.shut(code, reason)

    async def writable(self) -> None:
        """Returns once the transport accepts writes again (at once if it does)."""
        if not self.writing_paused or self.is_closed:
            return
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()
        await self._writable.wait()
