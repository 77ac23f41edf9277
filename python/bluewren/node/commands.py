"""The node's commands, events, error codes and close codes.

A *command* goes from a client to the node, an *event* from the node to a client. Both
travel as BlueWren frames (binary subprotocol ``bluewren.v1``) or as JSON objects (text
subprotocol ``bluewren.json.v1``) whose ``"kind"`` is the lower-case name of the kind.
docs/protocol.md ("Commands and events") is the contract; this module is its code.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

__all__ = [
    "BINARY_SUBPROTOCOL",
    "COMMANDS",
    "JSON_SUBPROTOCOL",
    "CloseCode",
    "ErrorCode",
    "Kind",
    "decode_envelope",
    "encode_envelope",
]

BINARY_SUBPROTOCOL: Final = "bluewren.v1"
"""WebSocket subprotocol: binary messages carrying one or more BlueWren frames."""

JSON_SUBPROTOCOL: Final = "bluewren.json.v1"
"""WebSocket subprotocol: text messages carrying one JSON object each."""


class Kind(IntEnum):
    """The ``kind`` byte of a frame (JSON: ``"kind": name.lower()``)."""

    HELLO = 0x01
    """Command. Body: the access token (UTF-8). Must be the first command."""
    WELCOME = 0x02
    """Event. Body: JSON ``{user, device, session, expires_at, max_message_bytes}``."""

    SEND = 0x10
    """Command. ``conv``, ``cmid`` (non-zero, unique per sender and conversation), body."""
    ACK = 0x11
    """Event. ``conv``, ``seq``, ``cmid`` of a send, sent only after the durable write."""
    DELIVER = 0x12
    """Event. ``conv``, ``seq``, ``cmid``; body: sender envelope + message body."""

    SYNC = 0x20
    """Command. Body: JSON ``{"<conv>": cursor}`` (may be empty). Replays what was missed."""
    SYNCED = 0x21
    """Event. Ends a sync; body: JSON ``{"<conv>": last seq replayed or cursor}``."""

    CREATE_DIRECT = 0x30
    """Command. Body: JSON ``{"peer": user}``. Reply: CONVERSATION."""
    CREATE_GROUP = 0x31
    """Command. Body: JSON ``{"title": str, "members": [user, ...]}``. Reply: CONVERSATION."""
    ADD_MEMBERS = 0x32
    """Command. ``conv``; body: JSON ``{"users": [user, ...]}`` (owner/admin only)."""
    REMOVE_MEMBER = 0x33
    """Command. ``conv``; body: JSON ``{"user": user}`` (owner/admin only)."""
    LEAVE = 0x34
    """Command. ``conv``: the caller leaves the group (the last owner must hand over first)."""
    RENAME = 0x35
    """Command. ``conv``, ``cmid``; body: JSON ``{"title": str}`` (owner/admin only)."""
    SET_ROLE = 0x36
    """Command. ``conv``, ``cmid``; body: JSON ``{"user": user, "role": role}``."""
    CONVERSATION = 0x38
    """Event. ``conv``, ``cmid`` of the request (0 if pushed); body: JSON description."""

    CURSOR = 0x40
    """Command. ``conv``, ``seq``: this device has everything up to ``seq``. No reply."""
    RECEIPT = 0x41
    """Command: ``conv``, ``seq``, ``cmid``: the user has read up to ``seq``. Event: ``conv``,
    ``seq``, ``cmid`` (of the request, else 0); body: JSON ``{user, type}``, ``type`` being
    ``"read"`` or ``"delivered"``."""
    TYPING = 0x42
    """Command: ``conv``. Event: ``conv``; body: JSON ``{user, device}``. Never stored."""
    PRESENCE = 0x44
    """Command: ``cmid``; body: JSON ``{"users": [user, ...]}``. Event: ``cmid`` (of the
    query, else 0); body: JSON ``{"users": [{user, status, last_seen}, ...]}``."""
    HISTORY = 0x48
    """Command: ``conv``, ``cmid``; body: JSON ``{before_seq?, after_seq?, limit?}``. Event:
    ``conv``, ``cmid``; body: JSON ``{"messages": [...], "more": bool}``."""

    ERROR = 0x7F
    """Event. ``conv``, ``cmid`` of the failed command; body: JSON ``{code, name, ...}``."""


COMMANDS: Final = frozenset(
    {
        Kind.HELLO,
        Kind.SEND,
        Kind.SYNC,
        Kind.CREATE_DIRECT,
        Kind.CREATE_GROUP,
        Kind.ADD_MEMBERS,
        Kind.REMOVE_MEMBER,
        Kind.LEAVE,
        Kind.RENAME,
        Kind.SET_ROLE,
        Kind.CURSOR,
        Kind.RECEIPT,
        Kind.TYPING,
        Kind.PRESENCE,
        Kind.HISTORY,
    }
)
"""The kinds a client may send; anything else gets ``ErrorCode.UNKNOWN_KIND``."""


class ErrorCode(IntEnum):
    """The ``code`` of an ERROR event. Unless said otherwise the connection stays usable."""

    BAD_FRAME = 1
    """A binary message did not decode as BlueWren frames (or a JSON message as an object).
    Frames before the bad one were handled; nothing after it."""
    UNKNOWN_KIND = 2
    """The kind is not a command (unknown, or an event kind)."""
    BAD_REQUEST = 3
    """A field is missing or out of range (e.g. ``cmid`` 0 on SEND, bad JSON body)."""
    NOT_AUTHENTICATED = 4
    """A command other than HELLO came before a successful HELLO."""
    AUTH_FAILED = 5
    """The token of HELLO was refused; the node then closes with ``CloseCode.UNAUTHORIZED``."""
    ALREADY_AUTHENTICATED = 6
    """A second HELLO on an authenticated connection."""
    TOO_LARGE = 7
    """A SEND body is larger than the node's ``max_message_bytes``."""
    NO_SUCH_CONVERSATION = 8
    """The conversation does not exist."""
    NOT_MEMBER = 9
    """The caller (or the user named) is not a member of the conversation."""
    FORBIDDEN = 10
    """The caller's role does not allow the change (only owners and admins manage groups)."""
    UNAVAILABLE = 11
    """The store cannot serve the command now; retry after ``retry_after`` seconds (a retried
    SEND with the same ``cmid`` is never stored twice)."""
    INTERNAL = 12
    """An unexpected failure in the node; the command may or may not have taken effect."""
    RATE_LIMITED = 13
    """The connection sent faster than its rate limit; nothing was done. Retry after
    ``retry_after`` seconds (a retried SEND with the same ``cmid`` is never stored twice)."""
    LIMIT_EXCEEDED = 14
    """The command would pass a configured size limit; ``limit`` names the NodeConfig field
    and ``max`` its value. Nothing was changed."""


class CloseCode(IntEnum):
    """WebSocket close codes the node uses besides the RFC 6455 ones (1000, 1001, 1009)."""

    UNAUTHORIZED = 4001
    """The token was refused, or it expired during the connection: reconnect with a new one."""
    HELLO_TIMEOUT = 4002
    """No HELLO arrived within the node's ``hello_timeout``."""
    KICKED = 4003
    """An operator closed the connection (admin API kick): do not reconnect blindly; the
    reason is "closed by an operator"."""
    SLOW_CONSUMER = 4008
    """The client read too slowly and its outbox filled up: reconnect and SYNC."""
    TRY_AGAIN_LATER = 1013
    """RFC 6455 "try again later": the node is at ``max_connections``; the reason says
    after how many seconds to retry."""
    POLICY_VIOLATION = 1008
    """RFC 6455 "policy violation": the user is at ``max_devices_per_user``."""


_LEN: Final = struct.Struct(">H")


def encode_envelope(sender: str, device: str, body: bytes) -> bytes:
    """The DELIVER body: u16 sender length, sender, u16 device length, device, body."""
    s = sender.encode()
    d = device.encode()
    return b"".join((_LEN.pack(len(s)), s, _LEN.pack(len(d)), d, body))


def decode_envelope(data: bytes) -> tuple[str, str, bytes]:
    """``(sender, device, body)`` of a DELIVER body; ValueError if it is malformed."""
    try:
        (n,) = _LEN.unpack_from(data, 0)
        off = 2 + n
        (m,) = _LEN.unpack_from(data, off)
        end = off + 2 + m
        if end > len(data):
            raise ValueError("device id runs past the end")
        return data[2:off].decode(), data[off + 2 : end].decode(), data[end:]
    except (struct.error, ValueError) as exc:
        raise ValueError(f"malformed DELIVER envelope: {exc}") from None
