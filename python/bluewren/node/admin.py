"""The operators' admin API, served by the observability HTTP server (``metrics_port``).

Every ``/admin/...`` request needs ``Authorization: Bearer <NodeConfig.admin_token>``;
the token is compared in constant time. With no ``admin_token`` configured the API is
off (404 for every ``/admin/`` path). Answers are JSON; errors are
``{"error": CODE, "message": TEXT}`` with:

- 401 ``unauthorized``: no bearer token was sent;
- 403 ``forbidden``: a token was sent and it is wrong;
- 404 ``not_found``, 405 ``method_not_allowed``, 400 ``bad_request``, 409 ``conflict``.

Endpoints:

- ``GET /admin/connections``: ``{"connections": [{"id", "user", "device",
  "subprotocol", "remote", "connected_since", "outbox_bytes"}, ...]}``
  (``user``/``device`` are null before HELLO; ``connected_since`` is UNIX seconds).
- ``POST /admin/connections/{id}/kick``: closes that connection with
  :data:`KICK_CLOSE_CODE` (4003) and the reason "closed by an operator".
- ``POST /admin/system-message`` with ``{"conv": int, "body": str}``: stores the text in
  the conversation as sent by :data:`SYSTEM_SENDER` (device ``admin``) and delivers it to
  the members online, like any message; answers ``{"conv", "seq", "sender"}``.
- ``POST /admin/users/{user}/disable`` (optional body ``{"reason": str}``) and
  ``POST /admin/users/{user}/enable``: a disabled user's tokens are refused at HELLO
  (ERROR ``AUTH_FAILED``, close 4001) and their open connections are closed with 4001
  at once; answers ``{"user", "disabled", "changed", "closed"}`` (``bluewren.node.users``).
- ``POST /admin/drain``: stops accepting connections, closes every connection with 1001
  ("node draining: reconnect to another node") and turns ``/readyz`` to 503 for good.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from bluewren.errors import BlueWrenError
from bluewren.node.commands import CloseCode

if TYPE_CHECKING:
    from bluewren.node.server import Node

__all__ = [
    "DRAIN_CLOSE_CODE",
    "DRAIN_REASON",
    "KICK_CLOSE_CODE",
    "SYSTEM_SENDER",
    "AdminResponse",
    "drain",
    "handle_admin",
]

KICK_CLOSE_CODE: Final = CloseCode.KICKED
"""WebSocket close code of a connection an operator kicked (4003, do not reconnect blindly)."""
KICK_REASON: Final = "closed by an operator"
DRAIN_CLOSE_CODE: Final = 1001
"""RFC 6455 "going away": the node drains; reconnect (to another node) and SYNC."""
DRAIN_REASON: Final = "node draining: reconnect to another node"
SYSTEM_SENDER: Final = "system"
"""The sender of messages posted through ``/admin/system-message``."""
SYSTEM_DEVICE: Final = "admin"
MAX_SYSTEM_MESSAGE: Final = 64 * 1024

JSON_TYPE: Final = "application/json"

log = logging.getLogger("bluewren.node.admin")


@dataclass(frozen=True, slots=True)
class AdminResponse:
    """One HTTP answer: status, content type, body."""

    status: int
    content_type: str
    body: str


def _json(status: int, obj: object) -> AdminResponse:
    return AdminResponse(status, JSON_TYPE, json.dumps(obj) + "\n")


def _error(status: int, code: str, message: str) -> AdminResponse:
    return _json(status, {"error": code, "message": message})


def _authorized(node: Node, headers: dict[str, str]) -> AdminResponse | None:
    """None when the request carries the admin token, else the 401/403 answer."""
    expected = getattr(node.config, "admin_token", None)
    auth = headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _error(
            401, "unauthorized", "send the admin token as 'Authorization: Bearer <token>'"
        )
    if expected is None or not hmac.compare_digest(given.strip().encode(), str(expected).encode()):
        return _error(403, "forbidden", "the admin token is wrong")
    return None


def connections(node: Node) -> list[dict[str, Any]]:
    """What ``GET /admin/connections`` lists, one dict per open connection."""
    out: list[dict[str, Any]] = []
    for session in list(node._sessions.values()):
        identity = session.identity
        transport = session.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else None
        framing = getattr(session, "framing", "ws")
        out.append(
            {
                "id": session.conn_id,
                "user": identity.user if identity is not None else None,
                "device": identity.device if identity is not None else None,
                "subprotocol": "tcp" if framing == "tcp" else session.codec.name,
                "remote": remote,
                "connected_since": getattr(session, "connected_at", None),
                "outbox_bytes": node.fanout.queued_bytes(session.conn_id)
                if session.conn_id in node.fanout
                else 0,
            }
        )
    return out


def drain(node: Node) -> int:
    """Stops accepting connections and closes every open one with 1001; returns how
    many were told to reconnect elsewhere. ``/readyz`` answers 503 from now on."""
    node.draining = True  # type: ignore[attr-defined]
    for server in (node._server, node._tcp_server):
        if server is not None:
            server.close()
    sessions = list(node._sessions.values())
    for session in sessions:
        session.shut(DRAIN_CLOSE_CODE, DRAIN_REASON)
    log.warning("draining: %d connections told to reconnect elsewhere", len(sessions))
    return len(sessions)


async def _system_message(node: Node, body: bytes) -> AdminResponse:
    try:
        obj = json.loads(body or b"null")
    except ValueError:
        return _error(400, "bad_request", 'the body must be JSON: {"conv": 1, "body": "..."}')
    if not isinstance(obj, dict):
        return _error(400, "bad_request", 'the body must be a JSON object {"conv", "body"}')
    conv, text = obj.get("conv"), obj.get("body")
    if not isinstance(conv, int) or isinstance(conv, bool) or conv < 1:
        return _error(400, "bad_request", "conv must be a conversation id (integer >= 1)")
    if not isinstance(text, str) or not text:
        return _error(400, "bad_request", "body must be a non-empty string")
    data = text.encode()
    if len(data) > min(MAX_SYSTEM_MESSAGE, node.config.max_message_bytes):
        return _error(400, "bad_request", "body is too long")
    try:
        members = await node.members_of(conv)
        result = await node.store.append(
            conv, SYSTEM_SENDER, SYSTEM_DEVICE, secrets.randbits(63) | 1, data
        )
    except BlueWrenError as exc:
        name = type(exc).__name__
        if "NotFound" in name or "NoSuch" in name:
            return _error(404, "not_found", str(exc))
        return _error(409, "conflict", f"{name}: {exc}")
    message = result.message
    node._publish(message, None, members)
    node._after_store(message)
    log.info("system message posted", extra={"conv": conv, "seq": message.seq})
    return _json(200, {"conv": conv, "seq": message.seq, "sender": SYSTEM_SENDER})


async def _set_disabled(node: Node, user: str, disabled: bool, body: bytes) -> AdminResponse:
    reason = ""
    if disabled and body.strip():
        try:
            obj = json.loads(body)
        except ValueError:
            return _error(400, "bad_request", 'the body must be JSON: {"reason": "..."}')
        if not isinstance(obj, dict) or not isinstance(obj.get("reason", ""), str):
            return _error(400, "bad_request", 'the body must be {"reason": "text"}')
        reason = obj.get("reason", "")
    if not user:
        return _error(400, "bad_request", "name the user: /admin/users/{user}/disable")
    try:
        changed, closed = await node.disabled.set(user, disabled, reason)
    except NotImplementedError as exc:
        return _error(409, "conflict", str(exc))
    except BlueWrenError as exc:
        return _error(409, "conflict", f"{type(exc).__name__}: {exc}")
    log.warning("user %s by an operator", "disabled" if disabled else "enabled")
    return _json(200, {"user": user, "disabled": disabled, "changed": changed, "closed": closed})


async def handle_admin(
    node: Node, method: str, path: str, headers: dict[str, str], body: bytes
) -> AdminResponse:
    """The answer to one ``/admin/...`` request."""
    if getattr(node.config, "admin_token", None) is None:
        return _error(404, "not_found", "the admin API is off (set admin_token to enable it)")
    denied = _authorized(node, headers)
    if denied is not None:
        return denied
    parts = [p for p in path.split("/") if p][1:]  # drop "admin"
    if parts == ["connections"]:
        if method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "GET /admin/connections")
        return _json(200, {"connections": connections(node), "at": time.time()})
    if method != "POST":
        if parts in (["drain"], ["system-message"]) or parts[:1] in (["connections"], ["users"]):
            return _error(405, "method_not_allowed", f"POST {path}")
        return _error(404, "not_found", f"no admin endpoint {path}")
    if len(parts) == 3 and parts[0] == "connections" and parts[2] == "kick":
        try:
            conn_id = int(parts[1])
        except ValueError:
            return _error(400, "bad_request", f"not a connection id: {parts[1]!r}")
        session = node._sessions.get(conn_id)
        if session is None:
            return _error(404, "not_found", f"no open connection {conn_id}")
        session.shut(KICK_CLOSE_CODE, KICK_REASON)
        log.warning("connection kicked by an operator", extra={"conn_id": conn_id})
        return _json(200, {"kicked": conn_id, "code": int(KICK_CLOSE_CODE)})
    if len(parts) == 3 and parts[0] == "users" and parts[2] in ("disable", "enable"):
        return await _set_disabled(node, unquote(parts[1]), parts[2] == "disable", body)
    if parts == ["system-message"]:
        return await _system_message(node, body)
    if parts == ["drain"]:
        if getattr(node, "draining", False) is True:
            return _error(409, "conflict", "the node is already draining")
        return _json(200, {"draining": True, "closed": drain(node)})
    return _error(404, "not_found", f"no admin endpoint {path}")
