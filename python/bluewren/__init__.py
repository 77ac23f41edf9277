"""BlueWren: a high-performance instant-messaging engine.

The native primitives (Rust, through PyO3) are re-exported here:

- ``HashRing`` / ``BoundedLoad``: consistent-hash routing (xxh3, virtual nodes).
- ``encode_frame`` / ``encode_frames`` / ``decode_frames`` / ``FrameDecoder``:
  the BlueWren binary frame codec.
- ``WsDecoder`` / ``encode_ws_frame`` / ``encode_ws_close`` and the handshake
  helpers: the RFC 6455 codec.
- ``Outbox`` / ``FanOut``: per-connection outboxes and encode-once fan-out.
- ``Compressor`` / ``Decompressor`` / ``train_dictionary``: zstd with a bounded
  output size.

The event-loop side lives in ``bluewren.protocol`` (Cython); the IM node in
``bluewren.node`` (``Node``, ``NodeConfig``); the asyncio client in
``bluewren.client`` (``Client``, ``connect``).
"""

from bluewren._native import (
    FLAG_COMPRESSED,
    FLAG_DICT,
    FRAME_HEADER_LEN,
    FRAME_VERSION,
    PUSH_ABOVE_HIGH,
    PUSH_OVERFLOW,
    PUSH_QUEUED,
    BoundedLoad,
    CompressionError,
    Compressor,
    Decompressor,
    FanOut,
    FrameDecoder,
    FrameError,
    HandshakeError,
    HashRing,
    Outbox,
    RingError,
    WebSocketError,
    WsDecoder,
    __version__,
    accept_key,
    client_handshake,
    decode_frames,
    encode_frame,
    encode_frames,
    encode_ws_close,
    encode_ws_frame,
    key_hash,
    parse_handshake_request,
    parse_handshake_response,
    train_dictionary,
)

# After the native names: the node and client import them from this package.
from bluewren.client import Client, connect
from bluewren.node import Node, NodeConfig

__all__ = [
    "FLAG_COMPRESSED",
    "FLAG_DICT",
    "FRAME_HEADER_LEN",
    "FRAME_VERSION",
    "PUSH_ABOVE_HIGH",
    "PUSH_OVERFLOW",
    "PUSH_QUEUED",
    "BoundedLoad",
    "Client",
    "CompressionError",
    "Compressor",
    "Decompressor",
    "FanOut",
    "FrameDecoder",
    "FrameError",
    "HandshakeError",
    "HashRing",
    "Node",
    "NodeConfig",
    "Outbox",
    "RingError",
    "WebSocketError",
    "WsDecoder",
    "__version__",
    "accept_key",
    "client_handshake",
    "connect",
    "decode_frames",
    "encode_frame",
    "encode_frames",
    "encode_ws_close",
    "encode_ws_frame",
    "key_hash",
    "parse_handshake_request",
    "parse_handshake_response",
    "train_dictionary",
]
