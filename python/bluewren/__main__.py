"""Command line: ``bluewren serve``, ``token``, ``check-config``, ``config``, ``backup``,
``export``, ``erase``, ``users``, ``groups``, ``version``.

    bluewren serve --config bluewren.toml --port 8470
    bluewren token alice --device phone --ttl 3600
    bluewren check-config bluewren.toml
    bluewren config --print-defaults > bluewren.toml
    bluewren backup /backup/bluewren-2026-01-31.db --config bluewren.toml
    bluewren export alice --out alice.json --config bluewren.toml
    bluewren erase alice --yes --config bluewren.toml
    bluewren users list
    bluewren groups list
    bluewren groups show 42
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
from bluewren.node.config import NodeConfig
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
    p_serve.add_argument(
        "--log-level",
        dest="log_level",
        default=None,
        help="DEBUG, INFO, WARNING... (the config's log_level, INFO)",
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
    _data_parsers(sub)
    sub.add_parser("version", help="print the version")
    return parser


_DATA_EPILOG = (
    "exit status: 0 done, 1 store missing or unreadable (or output not writable), "
    "2 bad arguments or configuration, 4 no such user or conversation"
)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--data-dir", dest="data_dir", default=None, help="the node's data directory")


def _data_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a user's data as JSON",
        description="Writes everything stored about USER (memberships, the messages they "
        "sent, cursors, read marks) as JSON, with a progress bar on stderr.",
        epilog=_DATA_EPILOG,
    )
    p.add_argument("user", help="the user id, as in their tokens")
    p.add_argument("--out", metavar="FILE", help="write here (atomically) instead of stdout")
    _store_args(p)
    p = sub.add_parser(
        "erase",
        help="erase a user's data (needs --yes)",
        description="Deletes USER's memberships, cursors and read marks and empties the "
        "messages they sent (tombstones keep their place). Best run on a stopped node. "
        "Export first if the data must be handed over.",
        epilog=_DATA_EPILOG,
    )
    p.add_argument("user", help="the user id, as in their tokens")
    p.add_argument("--yes", action="store_true", help="really erase (there is no undo)")
    _store_args(p)
    p = sub.add_parser("users", help="users the store knows", epilog=_DATA_EPILOG)
    users = p.add_subparsers(dest="action", required=True)
    p = users.add_parser("list", help="one line per user: name, conversations, messages sent")
    _store_args(p)
    p = sub.add_parser("groups", help="group conversations in the store", epilog=_DATA_EPILOG)
    groups = p.add_subparsers(dest="action", required=True)
    p = groups.add_parser("list", help="one line per group: id, members, last seq, title")
    _store_args(p)
    p = groups.add_parser("show", help="one conversation and its members, as JSON")
    p.add_argument("conv", type=int, help="conversation id")
    _store_args(p)


def _data_command(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from bluewren import ops

    given = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    database = load_config(args.config, cli=given).database_path
    try:
        if args.command == "export":
            out = Path(args.out) if args.out is not None else None
            n = ops.export(database, args.user, out)
            if out is not None:
                print(f"exported {args.user} ({n} messages) to {out}", file=sys.stderr)
        elif args.command == "erase":
            if not args.yes:
                print(
                    f"bluewren: erase {args.user}: add --yes to erase (there is no undo)",
                    file=sys.stderr,
                )
                return ops.EXIT_USAGE
            counts = ops.erase(database, args.user)
            print(f"erased {args.user}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        elif args.command == "users":
            for user, convs, sent in ops.users_list(database):
                print(f"{user}\t{convs} conversations\t{sent} messages")
        elif args.action == "list":
            for conv, title, members, last in ops.groups_list(database):
                print(f"{conv}\t{members} members\tseq {last}\t{title}")
        else:
            print(json.dumps(ops.groups_show(database, args.conv), indent=2))
    except ops.OpsError as exc:
        print(f"bluewren: {exc}", file=sys.stderr)
        return exc.status
    return ops.EXIT_OK


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
        if args.command in ("export", "erase", "users", "groups"):
            return _data_command(args)
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
        if args.log_level is not None:
            cli["log_level"] = args.log_level
        cli.update(config_overrides(args.set))
        config = load_config(args.config, cli=cli)
        configure_logging(config.log_level)

        def reload() -> NodeConfig:  # on SIGHUP: the same layers, read again
            return load_config(args.config, cli=cli)

        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(serve(config, reload=reload))
        return asyncio.run(serve(config, reload=reload))
    except BlueWrenError as exc:
        print(f"bluewren: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except (OSError, ValueError) as exc:
        print(f"bluewren: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
