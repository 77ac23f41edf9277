"""A tiny HTTP/1.1 server for operators: ``/metrics``, ``/healthz`` and ``/readyz``.

It listens on ``NodeConfig.metrics_port`` (of ``NodeConfig.host``), apart from the
client port, so a scrape or a probe never queues behind client traffic and the port can
be firewalled separately. Each request is answered and the connection closed; only GET
and HEAD are served.

- ``/healthz``: 200 while the process runs its event loop (liveness).
- ``/readyz``: 200 while the node accepts connections, is not draining and its store is
  open; 503 with the reason otherwise (readiness: take the node out of the balancer).
- ``/metrics``: the Prometheus text format (``bluewren.node.metrics``).
- ``/dashboard``: one HTML page that polls ``/metrics`` every second (``dashboard.py``).
- ``/admin/...``: the admin API, behind ``admin_token`` (``bluewren.node.admin``); it also
  takes POST, with a body of at most ``MAX_BODY`` bytes.

The event-loop lag and RSS it reports are sampled by the node's admission monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from bluewren.node.admin import handle_admin
from bluewren.node.dashboard import DASHBOARD_HTML
from bluewren.node.metrics import CONTENT_TYPE, render

if TYPE_CHECKING:
    from ssl import SSLContext

    from bluewren.node.server import Node

__all__ = ["ObservabilityServer", "readiness"]

REQUEST_TIMEOUT: Final = 5.0
"""Seconds a client has to send its request head."""

MAX_HEAD: Final = 8192
"""Largest request head accepted (bytes)."""

MAX_BODY: Final = 256 * 1024
"""Largest request body accepted (bytes; admin POSTs only)."""

log = logging.getLogger("bluewren.node.observability")

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    503: "Service Unavailable",
}


def readiness(node: Node) -> str | None:
    """None when ``node`` is ready for traffic, else why not."""
    if getattr(node, "draining", False) is True:
        return "draining"
    if not node.serving:
        return "not accepting connections"
    try:
        store = node.store
    except RuntimeError:
        return "store not open"
    inner = getattr(store, "inner", store)  # a GuardedStore wraps the real one
    state = getattr(inner, "_state", "open")
    if state != "open":
        return f"store {state}"
    return None


class ObservabilityServer:
    """The operators' HTTP endpoint of one node; :meth:`start` it, :meth:`close` it."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the real one when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics endpoint is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, ssl: SSLContext | None = None) -> None:
        """Listens on ``host:port`` (HTTPS with ``ssl``)."""
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_address=True, ssl=ssl
        )

    async def close(self) -> None:
        """Stops listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def _answer(self, method: str, target: str) -> tuple[int, str, str]:
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", "only GET and HEAD\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE, render(self._node)
        if path == "/dashboard":
            return 200, "text/html; charset=utf-8", DASHBOARD_HTML
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", "ok\n"
        if path == "/readyz":
            reason = readiness(self._node)
            if reason is None:
                return 200, "text/plain; charset=utf-8", "ready\n"
            return 503, "text/plain; charset=utf-8", f"not ready: {reason}\n"
        return 404, "text/plain; charset=utf-8", "try /metrics, /healthz or /readyz\n"

    async def _admin(
        self, reader: asyncio.StreamReader, method: str, target: str, headers: dict[str, str]
    ) -> tuple[int, str, str]:
        try:
            length = int(headers.get("content-length", "0") or "0")
        except ValueError:
            return 400, "application/json", '{"error": "bad_request"}\n'
        if length < 0 or length > MAX_BODY:
            return 413, "application/json", '{"error": "body_too_large"}\n'
        try:
            data = await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, TimeoutError):
            return 400, "application/json", '{"error": "bad_request"}\n'
        try:
            answer = await handle_admin(self._node, method, target.split("?", 1)[0], headers, data)
        except Exception:
            log.exception("admin request %s failed", target)
            return 503, "application/json", '{"error": "internal"}\n'
        return answer.status, answer.content_type, answer.body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > MAX_HEAD:
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, ctype, body = 400, "text/plain; charset=utf-8", "bad request\n"
                method = "GET"
            elif parts[1].split("?", 1)[0].startswith("/admin/"):
                method = parts[0]
                status, ctype, body = await self._admin(reader, method, parts[1], headers)
            else:
                method = parts[0]
                try:
                    status, ctype, body = self._answer(method, parts[1])
                except Exception:
                    log.exception("observability request %s failed", parts[1])
                    status, ctype, body = 503, "text/plain; charset=utf-8", "internal error\n"
            data = body.encode()
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                    "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                ).encode()
                + (b"" if method == "HEAD" else data)
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
