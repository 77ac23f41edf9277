"""The event loop's side of a WebSocket connection (Cython, linked into the native module).

``BufferedWebSocketProtocol`` reads the socket straight into the engine's buffer;
the Rust decoder sees the bytes without a Python call; everything a read pass
produces leaves in one write. Subclass it and override ``request_received``
(accept/reject the upgrade, pick a subprotocol) and ``message_received``.
``EchoProtocol`` echoes every message without creating a Python object.
"""

from bluewren import _native  # noqa: F401  (initialises bluewren._protocol)
from bluewren._protocol import (
    OP_BINARY,
    OP_TEXT,
    BufferedWebSocketProtocol,
    EchoProtocol,
    WebSocketProtocol,
)

__all__ = [
    "OP_BINARY",
    "OP_TEXT",
    "BufferedWebSocketProtocol",
    "EchoProtocol",
    "WebSocketProtocol",
]
