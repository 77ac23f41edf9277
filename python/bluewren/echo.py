"""A WebSocket echo server on BlueWren's Cython protocol.

    python -m bluewren.echo --port 9001

It exists so the WebSocket layer can be tested against independent peers
(Autobahn|Testsuite, the ``websockets`` and ``wsproto`` clients) and measured
against other servers. Every message is echoed from the engine's read buffer to
its write buffer without a Python object in between.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from bluewren.protocol import EchoProtocol

DEFAULT_PORT = 9001
DEFAULT_MAX_MESSAGE = 16 << 20


async def serve(
    host: str,
    port: int,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE,
    backlog: int = 1024,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or forever)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: EchoProtocol(max_frame_size=max_message_size, max_message_size=max_message_size),
        host,
        port,
        backlog=backlog,
        reuse_address=True,
    )
    stop = stop or asyncio.Event()
    # Handlers first: whoever waits for the "listening" line may signal at once.
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    bound = ", ".join(f"ws://{s.getsockname()[0]}:{s.getsockname()[1]}/" for s in server.sockets)
    print(f"bluewren.echo listening on {bound}", flush=True)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m bluewren.echo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=DEFAULT_MAX_MESSAGE,
        help="largest frame and message in bytes; larger ones close with 1009 (default 16 MiB)",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop (default uvloop)",
    )
    args = parser.parse_args(argv)
    coro = serve(args.host, args.port, max_message_size=args.max_message_size)
    try:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)
    except OSError as exc:
        print(
            f"bluewren.echo: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
