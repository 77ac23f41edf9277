"""The command line every asyncio peer server shares: --host, --port, --loop."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any


def serve_main(
    serve: Callable[[str, int], Coroutine[Any, Any, None]],
    doc: str | None,
    default_port: int,
    argv: Sequence[str] | None = None,
) -> int:
    """Parses the arguments, then runs ``serve(host, port)`` on the chosen event loop."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"0: any free port (default {default_port})"
    )
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))
    return 0
