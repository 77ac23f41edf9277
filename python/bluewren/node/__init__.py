"""The BlueWren node: WebSocket sessions, policy, durable sends and fan-out.

    from bluewren.node import Node, NodeConfig

    async with Node(NodeConfig(port=0, data_dir=path)) as node:
        token = node.issuer.mint("alice", "phone")
        ...  # clients connect to node.url

``commands`` defines the wire kinds and codes, ``wire`` the two encodings, ``session``
one connection, ``server`` the node itself, ``config`` its settings; ``presence``,
``receipts``, ``history`` and ``groups`` the conversation features, ``limits`` the rate
limits and ``hooks`` the embedding hooks (docs/embedding.md).
"""

from bluewren.node.commands import (
    BINARY_SUBPROTOCOL,
    JSON_SUBPROTOCOL,
    CloseCode,
    ErrorCode,
    Kind,
    decode_envelope,
    encode_envelope,
)
from bluewren.node.config import NodeConfig, NodeConfigError, resolve_token_secret
from bluewren.node.hooks import MessageContext, Reject, Rewrite
from bluewren.node.server import Node
from bluewren.node.session import Session

__all__ = [
    "BINARY_SUBPROTOCOL",
    "JSON_SUBPROTOCOL",
    "CloseCode",
    "ErrorCode",
    "Kind",
    "MessageContext",
    "Node",
    "NodeConfig",
    "NodeConfigError",
    "Reject",
    "Rewrite",
    "Session",
    "decode_envelope",
    "encode_envelope",
    "resolve_token_secret",
]
