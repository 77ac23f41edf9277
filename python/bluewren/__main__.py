"""Command line: ``bluewren serve``, ``token``, ``check-config``, ``config``, ``version``.

    bluewren serve --config bluewren.toml --port 8470
    bluewren token alice --device phone --ttl 3600
    bluewren check-config bluewren.toml
    bluewren config --print-defaults > bluewren.toml
    bluewren backup /backup/bluewren-2026-01-31.db --config bluewren.toml
    bluewren version

(``python -m bluewren ...`` is the same.) Settings come from the TOML file of
``--config``, then ``BLUEWREN_<FIELD>`` environment variables, then the flags, each layer
overriding the one before (``bluewren.node.settings``). ``serve`` and ``token`` take the
token secret from the config, ``$BLUEWREN_TOKEN_SECRET`` or ``<data_dir>/token_secret``
(created on first use), so they agree with no setup.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from bluewren.auth import TokenIssuer
from bluewren.errors import BlueWrenError
from bluewren.node import resolve_token_secret
from bluewren.node.lifecycle import config_overrides, serve
from bluewren.node.logs import configure_logging
from bluewren.node.settings import defaults_toml, load_config

EXIT_BAD_CONFIG = 2
"""Exit status for an invalid configuration (or command line)."""

# Flags that set a NodeConfig field: (flag, field, type, help). Unset flags leave the
# field to the lower layers.
_FIELD_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--host", "host", str, "address to bind (127.0.0.1)"),
    ("--port", "port", int, "port (8470; 0: any free)"),
    ("--data-dir", "data_dir", str, "store and secret directory (bluewren-data)"),
    ("--tcp-port", "tcp_port", int, "raw TCP listener port (off; 0: any free)"),
    ("--metrics-port", "metrics_port", int, "/metrics, /healthz, /readyz port (off; 0: any)"),
    ("--shutdown-timeout", "shutdown_timeout", float, "graceful stop bound, seconds (10)"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bluewren", description="BlueWren IM node")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run a node")
    p_serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    for flag, field, kind, text in _FIELD_FLAGS:
        p_serve.add_argument(flag, dest=field, type=kind, default=None, help=text)
    p_serve.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p_serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING... (INFO)")
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
    p_token.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p_token.add_argument("--data-dir", dest="data_dir", default=None, help="where the secret is")
    p_check = sub.add_parser(
        "check-config", help="validate a configuration file (with BLUEWREN_* applied)"
    )
    p_check.add_argument("file")
    p_config = sub.add_parser("config", help="configuration tools")
    p_config.add_argument(
        "--print-defaults",
        action="store_true",
        help="write an annotated TOML file with every field at its default",
    )
    p_backup = sub.add_parser("backup", help="copy the store to a new file (safe while running)")
    p_backup.add_argument("dest", help="the new database file")
    p_backup.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p_backup.add_argument("--data-dir", dest="data_dir", default=None, help="the node's data")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bluewren`` and ``python -m bluewren``."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "version":
            from bluewren import __version__

            print(f"bluewren {__version__}")
            return 0
        if args.command == "config":
            if not args.print_defaults:
                parser.error("config: say what to do, e.g. --print-defaults")
            sys.stdout.write(defaults_toml())
            return 0
        if args.command == "check-config":
            load_config(args.file)
            print("ok")
            return 0
        if args.command in ("token", "backup"):
            given = {"data_dir": args.data_dir} if args.data_dir is not None else {}
            config = load_config(args.config, cli=given)
        if args.command == "backup":
            from bluewren.store.backup import BackupError, backup_database

            try:
                size = backup_database(config.database_path, args.dest)
            except BackupError as exc:
                print(f"bluewren: {exc}", file=sys.stderr)
                return 1
            print(f"backed up {config.database_path} to {args.dest} ({size} bytes)")
            return 0
        if args.command == "token":
            secret = resolve_token_secret(config.data_dir, config.token_secret)
            print(TokenIssuer(secret).mint(args.user, args.device, ttl=args.ttl))
            return 0
        cli: dict[str, Any] = {
            field: getattr(args, field)
            for _, field, _, _ in _FIELD_FLAGS
            if getattr(args, field) is not None
        }
        cli.update(config_overrides(args.set))
        config = load_config(args.config, cli=cli)
        configure_logging(args.log_level)
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(serve(config))
        return asyncio.run(serve(config))
    except BlueWrenError as exc:
        print(f"bluewren: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except (OSError, ValueError) as exc:
        print(f"bluewren: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
