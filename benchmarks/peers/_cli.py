"""What the peer servers share: the command line (--host, --port, --loop), the room named
in a connection's query string, and stopping on SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit


def cli_parser(doc: str | None, default_port: int) -> argparse.ArgumentParser:
    """--host and --port, with the description taken from ``doc``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"0: any free port (default {default_port})"
    )
    return parser


def serve_main(
    serve: Callable[[str, int], Coroutine[Any, Any, None]],
    doc: str | None,
    default_port: int,
    argv: Sequence[str] | None = None,
) -> int:
    """Parses the arguments, then runs ``serve(host, port)`` on the chosen event loop."""
    parser = cli_parser(doc, default_port)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))
    return 0


def room_of(target: str) -> str:
    """The room a client joins: ``NAME`` of ``/?room=NAME`` (a path or a full URL)."""
    return parse_qs(urlsplit(target).query).get("room", [""])[0]


def stop_on_signals() -> asyncio.Future[None]:
    """A future of the running loop that SIGTERM or SIGINT completes."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done)
    return stop
