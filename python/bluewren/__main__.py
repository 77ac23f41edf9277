"""Command line: ``python -m bluewren serve`` and ``python -m bluewren token``.

    python -m bluewren serve --port 8470 --data-dir ./bluewren-data
    python -m bluewren token alice --device phone --ttl 3600

Both take the token secret from ``$BLUEWREN_TOKEN_SECRET`` or, when it is unset, from
``<data-dir>/token_secret`` (created on first use), so they agree with no setup.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from bluewren.auth import TokenIssuer
from bluewren.errors import BlueWrenError
from bluewren.node import NodeConfig, resolve_token_secret
from bluewren.node.config import DEFAULT_PORT
from bluewren.node.lifecycle import config_overrides, serve

DEFAULT_DATA_DIR = "bluewren-data"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bluewren``."""
    parser = argparse.ArgumentParser(prog="python -m bluewren", description="BlueWren IM node")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run a node")
    p_serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    p_serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free)")
    p_serve.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="store and secret directory")
    p_serve.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p_serve.add_argument(
        "--tcp-port", type=int, default=None, help="raw TCP listener port (off; 0: any free)"
    )
    p_serve.add_argument(
        "--shutdown-timeout", type=float, default=10.0, help="graceful stop bound, seconds (10)"
    )
    p_serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other NodeConfig field, e.g. --set send_rate=1000 (repeatable)",
    )
    p_token = sub.add_parser("token", help="print an access token")
    p_token.add_argument("user")
    p_token.add_argument("--device", default="default")
    p_token.add_argument("--ttl", type=float, default=3600.0, help="seconds (3600)")
    p_token.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where the secret lives")
    args = parser.parse_args(argv)
    try:
        if args.command == "token":
            secret = resolve_token_secret(Path(args.data_dir))
            print(TokenIssuer(secret).mint(args.user, args.device, ttl=args.ttl))
            return 0
        config = NodeConfig(
            host=args.host,
            port=args.port,
            data_dir=Path(args.data_dir),
            tcp_port=args.tcp_port,
            shutdown_timeout=args.shutdown_timeout,
            **config_overrides(args.set),
        )
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(serve(config))
        return asyncio.run(serve(config))
    except BlueWrenError as exc:
        print(f"bluewren: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bluewren: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
