"""Room broadcast server on socketify (uWebSockets pub/sub: a topic per room).

    python benchmarks/peers/socketify_room.py --port 9013

Speaks the room protocol of the end-to-end benchmarks (benchmarks/e2e/): a client joins
the room named in the query string (``ws://HOST:PORT/?room=NAME``); every binary message
it sends goes, unchanged, to every other connection of that room. Text is ignored.
Written the way socketify documents broadcasting: each connection ``subscribe``s to its
room's topic and a message is published to the topic. uWebSockets' own per-socket
publish skips the publishing socket; socketify 0.0.31's ``WebSocket.publish`` wraps
``App.publish`` instead (which also reaches the sender), so this calls the bundled
library's ``uws_ws_publish_with_options`` (the uWebSockets ``ws.publish``) directly.
Needs libuv (Debian: ``libuv1``). Runs on socketify's own libuv loop. Prints
``READY <port>`` once listening; serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import Any

from _cli import cli_parser, room_of
from socketify import App, OpCode  # type: ignore[import-not-found,import-untyped,unused-ignore]
from socketify.native import lib  # type: ignore[import-not-found,import-untyped,unused-ignore]


def upgrade(res: Any, req: Any, socket_context: Any) -> None:
    room = room_of(req.get_full_url())
    res.upgrade(
        req.get_header("sec-websocket-key"),
        req.get_header("sec-websocket-protocol"),
        req.get_header("sec-websocket-extensions"),
        socket_context,
        room,
    )


def on_open(ws: Any) -> None:
    ws.subscribe(ws.get_user_data())


def on_message(ws: Any, message: Any, opcode: Any) -> None:
    if opcode != OpCode.BINARY:
        return
    topic = ws.get_user_data().encode()
    data = bytes(message)
    # uWebSockets' ws.publish: every subscriber of the topic except this socket.
    lib.uws_ws_publish_with_options(
        ws.app.SSL, ws.ws, topic, len(topic), data, len(data), int(OpCode.BINARY), False
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = cli_parser(__doc__, 9013).parse_args(argv)
    app = App()
    app.ws(
        "/*",
        {
            "compression": 0,
            "max_payload_length": 1 << 24,
            "idle_timeout": 0,
            # Queue up to 64 MiB per slow receiver instead of dropping (the default is 64 KiB).
            "max_backpressure": 1 << 26,
            "upgrade": upgrade,
            "open": on_open,
            "message": on_message,
        },
    )

    def listening(config: Any) -> None:
        print(f"READY {config.port}", flush=True)

    app.listen({"port": args.port, "host": args.host}, listening)

    def stop(_sig: int, _frame: object) -> None:
        app.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
