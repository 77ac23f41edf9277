"""An asyncio client for a BlueWren node.

    import bluewren.client

    async with bluewren.client.Client(url, token) as client:
        chat = await client.create_direct("bob")
        ack = await client.send(chat.conv, "hi")     # returns once the node has stored it
        async for event in client.events():
            print(event.conv, event.seq, event.sender, event.body)

The client speaks ``bluewren.v1`` (binary frames) by default or ``bluewren.json.v1``
(``protocol="json"``). It keeps, per conversation, the last sequence number it received
(``cursors``); when the connection drops it reconnects, SYNCs from those cursors (so it
receives exactly what it missed) and retries unacknowledged sends with their original
client message id, so a retry never creates a second message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ssl import SSLContext, SSLError
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import urlsplit

from bluewren import (
    FLAG_COMPRESSED,
    FLAG_DICT,
    Decompressor,
    WsDecoder,
    client_handshake,
    decode_frames,
    encode_frame,
    encode_ws_close,
    encode_ws_frame,
    parse_handshake_response,
)
from bluewren.errors import BlueWrenError
from bluewren.node.commands import (
    BINARY_SUBPROTOCOL,
    JSON_SUBPROTOCOL,
    ErrorCode,
    Kind,
    decode_envelope,
)
from bluewren.node.compression import CAP_ZSTD, load_dictionary

__all__ = [
    "Ack",
    "Client",
    "ClientError",
    "ConnectionLost",
    "Conversation",
    "Event",
    "HistoryPage",
    "Presence",
    "connect",
]

_OP_TEXT: Final = 1
_OP_BINARY: Final = 2
_OP_CLOSE: Final = 8
_OP_PING: Final = 9
_OP_PONG: Final = 10


class ClientError(BlueWrenError):
    """The node answered a command with ERROR; ``code`` is an :class:`ErrorCode`."""

    def __init__(self, code: int, message: str, retry_after: float | None = None) -> None:
        try:
            self.code: ErrorCode | int = ErrorCode(code)
        except ValueError:
            self.code = code
        self.retry_after = retry_after
        name = self.code.name if isinstance(self.code, ErrorCode) else str(code)
        super().__init__(f"{name}: {message}")


class ConnectionLost(BlueWrenError, ConnectionError):
    """The connection closed; ``close_code`` is the node's close code (None if unknown)."""

    def __init__(self, close_code: int | None, reason: str = "") -> None:
        self.close_code = close_code
        self.reason = reason
        super().__init__(f"connection closed (code {close_code}): {reason}")


@dataclass(frozen=True, slots=True)
class Ack:
    """A stored send: its conversation, sequence number and client message id."""

    conv: int
    seq: int
    cmid: int


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation as the node describes it (CONVERSATION event)."""

    conv: int
    type: str
    title: str
    members: dict[str, str]
    change: str


@dataclass(frozen=True, slots=True)
class Presence:
    """A user's presence: ``status`` ``"online"`` or ``"offline"``; ``last_seen`` is when
    their last device disconnected (seconds since the epoch; None if unknown or online)."""

    user: str
    status: str
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class Event:
    """Something the node pushed: ``kind`` is ``"deliver"``, ``"conversation"``,
    ``"presence"``, ``"typing"``, ``"receipt"`` or ``"error"``. For deliveries ``sender``,
    ``device`` and ``body`` are set; for typing ``sender`` and ``device``; for receipts
    ``sender`` (whose mark moved), ``seq`` (the mark) and ``data["type"]`` (``"read"`` or
    ``"delivered"``); for presence ``data["users"]``. ``data`` holds the event's JSON."""

    kind: str
    conv: int
    seq: int = 0
    cmid: int = 0
    sender: str = ""
    device: str = ""
    body: bytes = b""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One HISTORY page: ``messages`` (``"deliver"`` events, oldest first) and whether
    ``more`` exist in the direction asked."""

    conv: int
    messages: list[Event]
    more: bool


TokenSource = str | Callable[[], str]


class Client:
    """One client connection with automatic reconnect; see the module docstring.

    ``token`` is a token or a function returning a fresh one (called on every connect).
    ``retries`` bounds the reconnect attempts of one ``send``. ``compression=True`` asks
    the node (binary protocol only) for zstd with the shipped dictionary on what it
    sends; ``self.compression`` then holds what the node agreed (``"zstd-dict"`` or None).
    A ``wss://`` url connects over TLS: with ``ssl`` None the node's certificate is
    verified with the system's certificate authorities, with an ``ssl.SSLContext`` as
    that context says (e.g. one that trusts a private CA); ``ssl`` is refused with a
    ``ws://`` url.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        protocol: Literal["binary", "json"] = "binary",
        reconnect: bool = True,
        retries: int = 5,
        timeout: float = 10.0,
        compression: bool = False,
        ssl: SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"url must look like ws://host:port/ or wss://host:port/, got {url!r}")
        if ssl is not None and parts.scheme != "wss":
            raise ValueError(f"ssl= needs a wss:// url, got {url!r}")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "wss" else 80)
        self._ssl: SSLContext | bool | None = (
            (True if ssl is None else ssl) if parts.scheme == "wss" else None
        )
        """TLS for wss:// (True: the default context, the system's CAs); None for ws://."""
        self._path = parts.path or "/"
        self._token = token
        self.protocol: Final = protocol
        self.reconnect = reconnect
        self.retries = retries
        self.timeout = timeout
        self.compression: str | None = None
        """The compression the node agreed to in WELCOME (None: none)."""
        self._want_zstd = compression and protocol == "binary"
        self._unzstd: Decompressor | None = None
        self.cursors: dict[int, int] = {}
        """Per conversation, the highest sequence number received."""
        self.user = ""
        self.device = ""
        self.close_code: int | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._waiters: dict[tuple[str, int, int], asyncio.Future[Any]] = {}
        self._cmid = secrets.randbits(62)
        self._connect_lock = asyncio.Lock()
        self._connected = False
        self._closing = False

    # -- life cycle ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while the connection is up and authenticated."""
        return self._connected

    async def connect(self) -> None:
        """Connects, says HELLO and SYNCs from ``cursors``; raises on refusal."""
        async with self._connect_lock:
            if not self._connected:
                await asyncio.wait_for(self._open(), self.timeout)

    async def _open(self) -> None:
        self.close_code = None
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        key = base64.b64encode(os.urandom(16)).decode()
        proto = BINARY_SUBPROTOCOL if self.protocol == "binary" else JSON_SUBPROTOCOL
        writer.write(client_handshake(f"{self._host}:{self._port}", self._path, key, [proto]))
        buf = b""
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                writer.close()
                raise ConnectionLost(None, "closed during the upgrade")
            buf += chunk
            parsed = parse_handshake_response(buf, key)
            if parsed is not None:
                break
        status, chosen, used = parsed
        if status != 101 or chosen != proto:
            writer.close()
            raise ClientError(0, f"upgrade refused (HTTP {status}, subprotocol {chosen!r})")
        self._reader, self._writer = reader, writer
        decoder = WsDecoder("client", 1 << 24, 1 << 24)
        self._read_task = asyncio.ensure_future(self._read_loop(reader, decoder, buf[used:]))
        welcome = self._expect("welcome")
        token = self._token() if callable(self._token) else self._token
        caps = CAP_ZSTD if self._want_zstd else 0
        self._command(Kind.HELLO, seq=caps, body=token.encode(), obj={"token": token})
        info = await welcome
        self.user, self.device = info["user"], info["device"]
        self.compression = info.get("compression")
        self._connected = True
        await self.sync()

    async def close(self) -> None:
        """Closes the connection (1000) and stops reconnecting."""
        self._closing = True
        self._connected = False
        writer = self._writer
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(ConnectionError):
                writer.write(encode_ws_close(1000, "", mask=os.urandom(4)))
            writer.close()
            # TLS: the node's close frame may cross our close_notify; nothing is lost.
            with contextlib.suppress(ConnectionError, SSLError):
                await writer.wait_closed()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
        self._fail_all(ConnectionLost(1000, "closed by the client"))
        self._events.put_nowait(None)

    async def wait_closed(self) -> int | None:
        """Waits until the node closes the connection; returns its close code."""
        if self._read_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
        return self.close_code

    async def drop(self) -> None:
        """Breaks the TCP connection without a close handshake (the next call reconnects).

        For tests of resumption; real clients lose connections without asking."""
        self._connected = False
        if self._writer is not None:
            self._writer.transport.abort()
        if self._read_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task

    # -- commands --------------------------------------------------------------------

    def next_cmid(self) -> int:
        """A fresh client message id."""
        self._cmid += 1
        return self._cmid

    async def send(self, conv: int, body: bytes | str, *, cmid: int | None = None) -> Ack:
        """Sends a message; returns once the node has stored it.

        On a lost connection the client reconnects and retries with the same ``cmid``
        (up to ``retries`` times): the node stores it at most once.
        """
        data = body.encode() if isinstance(body, str) else body
        cmid = self.next_cmid() if cmid is None else cmid
        attempt = 0
        while True:
            try:
                await self._ensure_connected()
                waiter = self._expect("ack", conv, cmid)
                obj: dict[str, Any] = {"conv": conv, "cmid": cmid}
                try:
                    obj["body"] = data.decode()
                except UnicodeDecodeError:
                    obj["body_b64"] = base64.b64encode(data).decode()
                self._command(Kind.SEND, conv=conv, cmid=cmid, body=data, obj=obj)
                ack = await waiter
                return Ack(conv, ack["seq"], cmid)
            except OSError:  # ConnectionLost, a refused or timed-out reconnect
                attempt += 1
                if not self.reconnect or self._closing or attempt > self.retries:
                    raise
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            except ClientError as exc:
                # The store was unavailable: nothing was written, the same cmid is safe.
                attempt += 1
                if exc.code != ErrorCode.UNAVAILABLE or attempt > self.retries:
                    raise
                await asyncio.sleep(exc.retry_after or 1.0)

    async def sync(self, cursors: dict[int, int] | None = None) -> dict[int, int]:
        """Asks for every message after ``cursors`` (default: the client's own); the
        replayed messages arrive as events, in order. Returns the node's SYNCED map."""
        wanted = dict(self.cursors if cursors is None else cursors)
        body = {str(c): s for c, s in wanted.items()}
        waiter = self._expect("synced")
        self._command(Kind.SYNC, body=json.dumps(body).encode(), obj={"cursors": body})
        done = await waiter
        return {int(c): int(s) for c, s in done.items()}

    async def confirm(self, conv: int, seq: int) -> None:
        """Tells the node this device has everything of ``conv`` up to ``seq`` (CURSOR)."""
        self._command(Kind.CURSOR, conv=conv, seq=seq, obj={"conv": conv, "seq": seq})
        await self._flush()

    async def create_direct(self, peer: str) -> Conversation:
        """The direct conversation with ``peer`` (created on first use)."""
        return await self._request(Kind.CREATE_DIRECT, 0, {"peer": peer})

    async def create_group(self, title: str, members: list[str]) -> Conversation:
        """Creates a group owned by this user with ``members``."""
        return await self._request(Kind.CREATE_GROUP, 0, {"title": title, "members": members})

    async def add_members(self, conv: int, users: list[str]) -> Conversation:
        """Adds ``users`` to the group ``conv`` (owner/admin only)."""
        return await self._request(Kind.ADD_MEMBERS, conv, {"users": users})

    async def remove_member(self, conv: int, user: str) -> Conversation:
        """Removes ``user`` from the group ``conv`` (owner/admin, or oneself)."""
        return await self._request(Kind.REMOVE_MEMBER, conv, {"user": user})

    async def leave(self, conv: int) -> Conversation:
        """Leaves the group ``conv``."""
        return await self._request(Kind.LEAVE, conv, {})

    async def rename(self, conv: int, title: str) -> Conversation:
        """Sets the title of the group ``conv`` (owner/admin only)."""
        return await self._request(Kind.RENAME, conv, {"title": title})

    async def set_role(self, conv: int, user: str, role: str) -> Conversation:
        """Gives ``user`` the ``role`` (``owner``, ``admin`` or ``member``) in ``conv``."""
        return await self._request(Kind.SET_ROLE, conv, {"user": user, "role": role})

    async def typing(self, conv: int) -> None:
        """Tells the other online members of ``conv`` that this user is typing."""
        await self._ensure_connected()
        self._command(Kind.TYPING, conv=conv, obj={"conv": conv})
        await self._flush()

    async def mark_read(self, conv: int, seq: int) -> int:
        """Marks ``conv`` read up to ``seq``; returns the user's read mark (never lower)."""
        await self._ensure_connected()
        rid = self.next_cmid()
        waiter = self._expect("receipt", 0, rid)
        self._command(
            Kind.RECEIPT, conv=conv, seq=seq, cmid=rid, obj={"conv": conv, "seq": seq, "cmid": rid}
        )
        d = await waiter
        return int(d["seq"])

    async def history(
        self,
        conv: int,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
    ) -> HistoryPage:
        """One page of ``conv``'s stored messages: the newest before ``before_seq``, the
        oldest after ``after_seq``, or (neither given) the newest."""
        args: dict[str, Any] = {}
        if before_seq is not None:
            args["before_seq"] = before_seq
        if after_seq is not None:
            args["after_seq"] = after_seq
        if limit is not None:
            args["limit"] = limit
        d = await self._query(Kind.HISTORY, "history", conv, args)
        messages = [
            Event(
                "deliver",
                conv,
                int(m["seq"]),
                int(m["cmid"]),
                m["sender"],
                m["device"],
                m["body"].encode() if "body" in m else base64.b64decode(m["body_b64"]),
            )
            for m in d.get("messages", [])
        ]
        return HistoryPage(conv, messages, bool(d.get("more", False)))

    async def presence(self, users: list[str]) -> dict[str, Presence]:
        """The presence of each of ``users``."""
        d = await self._query(Kind.PRESENCE, "presence", 0, {"users": users})
        return {e["user"]: _presence(e) for e in d.get("users", [])}

    async def _query(self, kind: Kind, what: str, conv: int, args: dict[str, Any]) -> Any:
        await self._ensure_connected()
        rid = self.next_cmid()
        waiter = self._expect(what, 0, rid)
        self._command(
            kind,
            conv=conv,
            cmid=rid,
            body=json.dumps(args).encode(),
            obj={"conv": conv, **args, "cmid": rid},
        )
        return await waiter

    async def raw(
        self,
        kind: int,
        *,
        conv: int = 0,
        seq: int = 0,
        cmid: int = 0,
        body: bytes = b"",
        flags: int = 0,
    ) -> None:
        """Sends one frame as is (binary protocol only): for tests and tools."""
        self._write(encode_frame(kind, body, conv, seq, cmid, flags), _OP_BINARY)
        await self._flush()

    async def raw_message(self, opcode: int, payload: bytes) -> None:
        """Sends one WebSocket message as is: for tests and tools."""
        self._write(payload, opcode)
        await self._flush()

    # -- events ----------------------------------------------------------------------

    async def next_event(self, wait: float | None = None) -> Event:
        """The next pushed event, waiting at most ``wait`` seconds (default ``timeout``);
        ConnectionLost once the client is closed."""
        event = await asyncio.wait_for(self._events.get(), wait or self.timeout)
        if event is None:
            self._events.put_nowait(None)
            raise ConnectionLost(self.close_code, "client closed")
        return event

    async def events(self) -> AsyncIterator[Event]:
        """Pushed events until the client is closed."""
        while True:
            event = await self._events.get()
            if event is None:
                self._events.put_nowait(None)
                return
            yield event

    # -- internals -------------------------------------------------------------------

    async def _ensure_connected(self) -> None:
        if self._closing:
            raise ConnectionLost(self.close_code, "client closed")
        if not self._connected:
            await self.connect()

    async def _request(self, kind: Kind, conv: int, args: dict[str, Any]) -> Conversation:
        await self._ensure_connected()
        rid = self.next_cmid()
        waiter = self._expect("conversation", 0, rid)
        self._command(
            kind,
            conv=conv,
            cmid=rid,
            body=json.dumps(args).encode(),
            obj={"conv": conv, **args, "cmid": rid},
        )
        d = await waiter
        return _conversation(d)

    def _expect(self, what: str, conv: int = 0, cmid: int = 0) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[(what, conv, cmid)] = future
        return future

    def _command(
        self,
        kind: Kind,
        *,
        conv: int = 0,
        seq: int = 0,
        cmid: int = 0,
        body: bytes = b"",
        obj: dict[str, Any] | None = None,
    ) -> None:
        if self.protocol == "binary":
            self._write(encode_frame(int(kind), body, conv, seq, cmid), _OP_BINARY)
        else:
            message = {"kind": kind.name.lower(), **(obj or {})}
            self._write(json.dumps(message).encode(), _OP_TEXT)

    def _write(self, payload: bytes, opcode: int) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionLost(self.close_code, "not connected")
        writer.write(encode_ws_frame(opcode, payload, mask=os.urandom(4)))

    async def _flush(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    async def _read_loop(
        self, reader: asyncio.StreamReader, decoder: WsDecoder, pending: bytes
    ) -> None:
        reason = ""
        try:
            data = pending
            while True:
                for opcode, payload in decoder.feed(data) if data else ():
                    if opcode == _OP_CLOSE:
                        if len(payload) >= 2:
                            (self.close_code,) = struct.unpack("!H", payload[:2])
                            reason = payload[2:].decode("utf-8", "replace")
                        return
                    if opcode == _OP_PING:
                        self._write(payload, _OP_PONG)
                    elif opcode in (_OP_TEXT, _OP_BINARY):
                        self._dispatch(opcode, payload)
                data = await reader.read(65536)
                if not data:
                    return
        except (ConnectionError, SSLError, ValueError) as exc:
            reason = str(exc)
        finally:
            self._connected = False
            if self._writer is not None:
                self._writer.close()
            self._fail_all(ConnectionLost(self.close_code, reason))

    def _fail_all(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        for future in waiters.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()  # a waiter nobody awaits must not warn

    def _dispatch(self, opcode: int, payload: bytes) -> None:
        if opcode == _OP_BINARY:
            for kind, flags, conv, seq, cmid, body in decode_frames(payload, 1 << 24):
                if flags & FLAG_COMPRESSED:
                    body = self._decompress(flags, body)
                self._event(kind, conv, seq, cmid, body, None)
        else:
            obj = json.loads(payload)
            kind = Kind[obj["kind"].upper()]
            self._event(kind, obj.get("conv", 0), obj.get("seq", 0), obj.get("cmid", 0), b"", obj)

    def _decompress(self, flags: int, body: bytes) -> bytes:
        if not flags & FLAG_DICT:
            return Decompressor(max_output=1 << 24).decompress(body)
        if self._unzstd is None:
            self._unzstd = Decompressor(load_dictionary(), max_output=1 << 24)
        return self._unzstd.decompress(body)

    def _event(
        self, kind: int, conv: int, seq: int, cmid: int, body: bytes, obj: dict[str, Any] | None
    ) -> None:
        def data() -> dict[str, Any]:
            if obj is not None:
                return obj
            value = json.loads(body) if body else {}
            assert isinstance(value, dict)
            return value

        if kind == Kind.DELIVER:
            if obj is None:
                sender, device, text = decode_envelope(body)
            else:
                sender, device = obj["sender"], obj["device"]
                text = obj["body"].encode() if "body" in obj else base64.b64decode(obj["body_b64"])
            if seq > self.cursors.get(conv, 0):
                self.cursors[conv] = seq
            self._events.put_nowait(Event("deliver", conv, seq, cmid, sender, device, text))
        elif kind == Kind.ACK:
            self._resolve(("ack", conv, cmid), {"seq": seq})
        elif kind == Kind.WELCOME:
            self._resolve(("welcome", 0, 0), data())
        elif kind == Kind.SYNCED:
            d = data()
            self._resolve(("synced", 0, 0), d.get("cursors", d) if obj is not None else d)
        elif kind == Kind.CONVERSATION:
            d = {**data(), "conv": conv}
            if not self._resolve(("conversation", 0, cmid), d) or cmid == 0:
                self._events.put_nowait(Event("conversation", conv, 0, cmid, data=d))
        elif kind == Kind.PRESENCE:
            d = data()
            if not cmid or not self._resolve(("presence", 0, cmid), d):
                self._events.put_nowait(Event("presence", conv, 0, cmid, data=d))
        elif kind == Kind.TYPING:
            d = data()
            self._events.put_nowait(
                Event("typing", conv, 0, 0, d.get("user", ""), d.get("device", ""), data=d)
            )
        elif kind == Kind.RECEIPT:
            d = {**data(), "seq": seq}
            if not cmid or not self._resolve(("receipt", 0, cmid), d):
                self._events.put_nowait(
                    Event("receipt", conv, seq, cmid, d.get("user", ""), data=d)
                )
        elif kind == Kind.HISTORY:
            self._resolve(("history", 0, cmid), data())
        elif kind == Kind.ERROR:
            d = data()
            err = ClientError(d.get("code", 0), d.get("message", ""), d.get("retry_after"))
            command = d.get("command", "")
            keys = {
                "send": ("ack", conv, cmid),
                "hello": ("welcome", 0, 0),
                "sync": ("synced", 0, 0),
                "receipt": ("receipt", 0, cmid),
                "history": ("history", 0, cmid),
                "presence": ("presence", 0, cmid),
            }
            key = keys.get(command, ("conversation", 0, cmid))
            future = self._waiters.pop(key, None)
            if future is not None and not future.done():
                future.set_exception(err)
            else:
                self._events.put_nowait(Event("error", conv, 0, cmid, data=d))

    def _resolve(self, key: tuple[str, int, int], value: Any) -> bool:
        future = self._waiters.pop(key, None)
        if future is None or future.done():
            return False
        future.set_result(value)
        return True


def _presence(e: dict[str, Any]) -> Presence:
    seen = e.get("last_seen")
    return Presence(str(e["user"]), str(e["status"]), None if seen is None else float(seen))


def _conversation(d: dict[str, Any]) -> Conversation:
    return Conversation(
        conv=int(d["conv"]),
        type=str(d.get("type", "")),
        title=str(d.get("title", "")),
        members={m["user"]: m["role"] for m in d.get("members", [])},
        change=str(d.get("change", "")),
    )


async def connect(url: str, token: TokenSource, **options: Any) -> Client:
    """A connected :class:`Client` (HELLO done, missed messages replayed)."""
    client = Client(url, token, **options)
    await client.connect()
    return client
