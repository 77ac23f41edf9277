"""A blocking BlueWren client for load tests: one socket, one reader thread.

It speaks ``bluewren.v1`` with the native codec (``bluewren.encode_frame``,
``decode_frames``, ``encode_ws_frame``, ``WsDecoder``) over a plain ``socket``.
Under Locust, gevent monkey-patches ``socket`` and ``threading``, so the reader
"thread" is a greenlet and a blocked call yields to the other users; outside Locust
it is an ordinary thread.

    client = SyncClient("127.0.0.1", 8470, token, on_deliver=print)
    client.connect()                      # HELLO, WELCOME, SYNC from client.cursors
    conv = client.create_direct("bob")
    seq = client.send(conv, b"hi")        # returns once ACKed
    client.close()
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from bluewren import (
    WsDecoder,
    client_handshake,
    decode_frames,
    encode_frame,
    encode_ws_close,
    encode_ws_frame,
    parse_handshake_response,
)
from bluewren.node.commands import BINARY_SUBPROTOCOL, Kind, decode_envelope

__all__ = ["Delivery", "LoadClientError", "SyncClient"]

_OP_BINARY: Final = 2
_OP_CLOSE: Final = 8
_OP_PING: Final = 9
_OP_PONG: Final = 10
_MAX: Final = 1 << 24


class LoadClientError(Exception):
    """The node refused a command (ERROR), closed the connection, or did not answer."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One DELIVER event."""

    conv: int
    seq: int
    cmid: int
    sender: str
    device: str
    body: bytes


class _Waiter:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: str | None = None


class SyncClient:
    """One authenticated ``bluewren.v1`` connection with blocking calls.

    ``on_deliver`` runs on the reader for every DELIVER (live or replayed), after
    ``cursors`` moved; keep it short. ``timeout`` bounds every wait for a reply.
    """

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        *,
        timeout: float = 10.0,
        on_deliver: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout
        self.on_deliver = on_deliver
        self.cursors: dict[int, int] = {}
        """Per conversation, the highest ``seq`` delivered to this client."""
        self.user = ""
        self.device = ""
        self.close_code: int | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._waiters: dict[tuple[str, int, int], _Waiter] = {}
        self._cmid = int.from_bytes(os.urandom(7), "big") + 1
        self._alive = False

    @property
    def connected(self) -> bool:
        """True from WELCOME until the connection closes."""
        return self._alive

    # -- life cycle ----------------------------------------------------------------

    def connect(self, *, sync: bool = True) -> dict[int, int]:
        """Opens the socket, upgrades, says HELLO; then (``sync``) SYNCs from ``cursors``
        and returns the SYNCED map (empty without ``sync``)."""
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(client_handshake(f"{self.host}:{self.port}", "/", key, [BINARY_SUBPROTOCOL]))
        buf = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                sock.close()
                raise LoadClientError("connection closed during the upgrade")
            buf += chunk
            parsed = parse_handshake_response(buf, key)
            if parsed is not None:
                break
        status, chosen, used = parsed
        if status != 101 or chosen != BINARY_SUBPROTOCOL:
            sock.close()
            raise LoadClientError(f"upgrade refused (HTTP {status}, subprotocol {chosen!r})")
        sock.settimeout(None)
        self._sock = sock
        self.close_code = None
        self._alive = True
        welcome = self._expect("welcome")
        self._reader = threading.Thread(
            target=self._read_loop, args=(sock, buf[used:]), daemon=True
        )
        self._reader.start()
        self._write(encode_frame(int(Kind.HELLO), self.token.encode()))
        info = self._wait(welcome, "HELLO")
        self.user, self.device = str(info["user"]), str(info["device"])
        return self.sync() if sync else {}

    def close(self) -> None:
        """Closes with a close handshake (1000) and stops the reader."""
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError):
            self._write_raw(encode_ws_close(1000, "", mask=os.urandom(4)))
        self._shutdown(sock)

    def abort(self) -> None:
        """Drops the TCP connection without a close handshake (a lost network)."""
        sock = self._sock
        if sock is not None:
            # RST instead of FIN: the node sees an abrupt loss.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._shutdown(sock)

    def _shutdown(self, sock: socket.socket) -> None:
        self._alive = False
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        if self._reader is not None:
            self._reader.join(self.timeout)
        self._sock = None
        self._fail_all("connection closed by the client")

    # -- commands ------------------------------------------------------------------

    def next_cmid(self) -> int:
        """A fresh client message id."""
        self._cmid += 1
        return self._cmid

    def send(self, conv: int, body: bytes, cmid: int | None = None) -> int:
        """Sends a message and waits for its ACK; returns its ``seq``."""
        cmid = self.next_cmid() if cmid is None else cmid
        waiter = self._expect("ack", conv, cmid)
        self._write(encode_frame(int(Kind.SEND), body, conv, 0, cmid))
        return int(self._wait(waiter, "SEND"))

    def sync(self, cursors: dict[int, int] | None = None) -> dict[int, int]:
        """SYNC from ``cursors`` (default: ``self.cursors``); waits for SYNCED, after which
        every replayed message has gone through ``on_deliver``."""
        wanted = self.cursors if cursors is None else cursors
        waiter = self._expect("synced")
        body = json.dumps({str(c): s for c, s in wanted.items()}).encode()
        self._write(encode_frame(int(Kind.SYNC), body))
        done = self._wait(waiter, "SYNC")
        return {int(c): int(s) for c, s in done.items()}

    def create_direct(self, peer: str) -> int:
        """The direct conversation with ``peer``; returns its id."""
        return self._request(Kind.CREATE_DIRECT, {"peer": peer})

    def create_group(self, title: str, members: list[str]) -> int:
        """A new group owned by this user with ``members``; returns its id."""
        return self._request(Kind.CREATE_GROUP, {"title": title, "members": members})

    def presence(self, users: list[str]) -> dict[str, str]:
        """``{user: status}`` of ``users``."""
        rid = self.next_cmid()
        waiter = self._expect("presence", 0, rid)
        body = json.dumps({"users": users}).encode()
        self._write(encode_frame(int(Kind.PRESENCE), body, 0, 0, rid))
        d = self._wait(waiter, "PRESENCE")
        return {str(e["user"]): str(e["status"]) for e in d.get("users", [])}

    def _request(self, kind: Kind, args: dict[str, Any]) -> int:
        rid = self.next_cmid()
        waiter = self._expect("conversation", 0, rid)
        self._write(encode_frame(int(kind), json.dumps(args).encode(), 0, 0, rid))
        return int(self._wait(waiter, kind.name)["conv"])

    # -- internals -----------------------------------------------------------------

    def _expect(self, what: str, conv: int = 0, cmid: int = 0) -> _Waiter:
        waiter = _Waiter()
        self._waiters[(what, conv, cmid)] = waiter
        return waiter

    def _wait(self, waiter: _Waiter, command: str) -> Any:
        if not waiter.done.wait(self.timeout):
            raise LoadClientError(f"{command}: no reply within {self.timeout:g} s")
        if waiter.error is not None:
            raise LoadClientError(f"{command}: {waiter.error}")
        return waiter.value

    def _write(self, frame: bytes) -> None:
        self._write_raw(encode_ws_frame(_OP_BINARY, frame, mask=os.urandom(4)))

    def _write_raw(self, data: bytes) -> None:
        sock = self._sock
        if sock is None or not self._alive:
            raise LoadClientError(f"not connected (close code {self.close_code})")
        with self._write_lock:
            sock.sendall(data)

    def _resolve(
        self, key: tuple[str, int, int], value: Any = None, error: str | None = None
    ) -> bool:
        waiter = self._waiters.pop(key, None)
        if waiter is None:
            return False
        waiter.value, waiter.error = value, error
        waiter.done.set()
        return True

    def _fail_all(self, reason: str) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.error = reason
            waiter.done.set()

    def _read_loop(self, sock: socket.socket, pending: bytes) -> None:
        decoder = WsDecoder("client", _MAX, _MAX)
        reason = "connection closed by the node"
        try:
            data = pending
            while True:
                for opcode, payload in decoder.feed(data) if data else ():
                    if opcode == _OP_CLOSE:
                        if len(payload) >= 2:
                            (self.close_code,) = struct.unpack("!H", payload[:2])
                        reason = f"closed by the node ({self.close_code})"
                        return
                    if opcode == _OP_PING:
                        self._write_raw(encode_ws_frame(_OP_PONG, payload, mask=os.urandom(4)))
                    elif opcode == _OP_BINARY:
                        for kind, _flags, conv, seq, cmid, body in decode_frames(payload, _MAX):
                            self._dispatch(kind, conv, seq, cmid, body)
                data = sock.recv(65536)
                if not data:
                    return
        except (OSError, ValueError) as exc:
            reason = f"connection lost: {exc}"
        finally:
            self._alive = False
            self._fail_all(reason)

    def _dispatch(self, kind: int, conv: int, seq: int, cmid: int, body: bytes) -> None:
        if kind == Kind.DELIVER:
            sender, device, text = decode_envelope(body)
            if seq > self.cursors.get(conv, 0):
                self.cursors[conv] = seq
            if self.on_deliver is not None:
                self.on_deliver(Delivery(conv, seq, cmid, sender, device, text))
        elif kind == Kind.ACK:
            self._resolve(("ack", conv, cmid), seq)
        elif kind == Kind.WELCOME:
            self._resolve(("welcome", 0, 0), json.loads(body))
        elif kind == Kind.SYNCED:
            self._resolve(("synced", 0, 0), json.loads(body) if body else {})
        elif kind == Kind.CONVERSATION:
            if cmid:
                self._resolve(("conversation", 0, cmid), {**json.loads(body), "conv": conv})
        elif kind == Kind.PRESENCE:
            if cmid:
                self._resolve(("presence", 0, cmid), json.loads(body))
        elif kind == Kind.ERROR:
            d = json.loads(body) if body else {}
            error = f"ERROR {d.get('name', d.get('code'))}: {d.get('message', '')}"
            command = d.get("command", "")
            keys = {
                "send": ("ack", conv, cmid),
                "hello": ("welcome", 0, 0),
                "sync": ("synced", 0, 0),
                "presence": ("presence", 0, cmid),
            }
            self._resolve(keys.get(command, ("conversation", 0, cmid)), error=error)
