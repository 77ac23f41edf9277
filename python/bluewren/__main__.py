"""Command line: ``bluewren serve``, ``token``, ``check-config``, ``config``, ``backup``,
``export``, ``import``, ``erase``, ``users``, ``groups``, ``version``.

    bluewren serve --config bluewren.toml --port 8470
    bluewren token alice --device phone --ttl 3600
    bluewren check-config bluewren.toml
    bluewren config --print-defaults > bluewren.toml
    bluewren backup /backup/bluewren-2026-01-31.db --config bluewren.toml
    bluewren export alice --out alice.json --config bluewren.toml
    bluewren import alice.json --data-dir /var/lib/bluewren-new
    bluewren erase alice --yes --config bluewren.toml
    bluewren users list
    bluewren users show alice
    bluewren users disable mallory --reason "abuse report 1234"
    bluewren users enable mallory
    bluewren groups list
    bluewren groups show 42
    bluewren groups create "ops team" --owner alice --member bob --member carol
    bluewren groups add 42 dave erin
    bluewren groups remove 42 erin
    bluewren groups rename 42 "ops and on-call"
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
from bluewren.node.lifecycle import EXIT_CONFIG, config_overrides, serve
from bluewren.node.logs import configure_logging
from bluewren.node.settings import defaults_toml, load_config

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
        "check-config",
        help="validate a configuration file (with BLUEWREN_* applied, TLS files loaded)",
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
    "exit status: 0 done, 1 store missing or unreadable (or a file not readable or "
    "writable), 2 bad arguments, configuration or import file, 4 no such user or "
    "conversation, 5 the import does not fit the store (nothing written)"
)
_OFFLINE = (
    " Run it on a stopped node: a running node keeps memberships and sequence numbers "
    "in memory and would not see the change until it restarts."
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
    p = sub.add_parser(
        "import",
        help="restore a user's data from an export file",
        description="Reads FILE (written by 'bluewren export') and restores that user's "
        "memberships, messages, cursors and read marks into the store (created if "
        "missing), in one transaction, with a progress bar on stderr. Importing twice "
        "changes nothing: a message already stored (same conversation, sender and cmid) "
        "is skipped. Messages keep their sequence numbers while those are free in the "
        "conversation; from the first taken one on, they are appended after its end, in "
        "order. See docs/operations.md." + _OFFLINE,
        epilog=_DATA_EPILOG,
    )
    p.add_argument("file", metavar="FILE", help="an export file (format bluewren-user-export/1)")
    _store_args(p)
    p = sub.add_parser(
        "users",
        help="users the store knows: list, show, disable, enable",
        description="'list' and 'show' read; 'disable' and 'enable' are safe while the "
        "node runs: it reads the list every disabled_refresh_interval seconds, then refuses "
        "the user's tokens at HELLO (close 4001) and closes their connections.",
        epilog=_DATA_EPILOG,
    )
    users = p.add_subparsers(dest="action", required=True)
    p = users.add_parser("list", help="one line per user: name, conversations, messages sent")
    _store_args(p)
    p = users.add_parser("show", help="one user as JSON", epilog=_DATA_EPILOG)
    p.add_argument("user")
    _store_args(p)
    p = users.add_parser(
        "disable", help="refuse the user's tokens and close their connections", epilog=_DATA_EPILOG
    )
    p.add_argument("user")
    p.add_argument("--reason", default="", help="kept with the flag (shown by 'users show')")
    p.add_argument(
        "--force", action="store_true", help="disable an id the store knows nothing about yet"
    )
    _store_args(p)
    p = users.add_parser("enable", help="accept the user's tokens again", epilog=_DATA_EPILOG)
    p.add_argument("user")
    _store_args(p)
    p = sub.add_parser(
        "groups",
        help="group conversations: list, show, create, add, remove, rename",
        description="'list' and 'show' read and are safe while the node runs; 'create', "
        "'add', 'remove' and 'rename' change the store." + _OFFLINE,
        epilog=_DATA_EPILOG,
    )
    groups = p.add_subparsers(dest="action", required=True)
    p = groups.add_parser("list", help="one line per group: id, members, last seq, title")
    _store_args(p)
    p = groups.add_parser("show", help="one conversation and its members, as JSON")
    p.add_argument("conv", type=int, help="conversation id")
    _store_args(p)
    p = groups.add_parser(
        "create", help="create a group; prints it as JSON", epilog=_DATA_EPILOG + "." + _OFFLINE
    )
    p.add_argument("title", help="the group's title")
    p.add_argument("--owner", required=True, help="the owner's user id")
    p.add_argument(
        "--member", action="append", default=[], metavar="USER", help="a member (repeatable)"
    )
    _store_args(p)
    p = groups.add_parser(
        "add", help="add members to a group", epilog=_DATA_EPILOG + "." + _OFFLINE
    )
    p.add_argument("conv", type=int, help="conversation id")
    p.add_argument("users", nargs="+", metavar="USER")
    p.add_argument("--role", choices=("member", "admin", "owner"), default="member")
    _store_args(p)
    p = groups.add_parser(
        "remove",
        help="remove members from a group (all or none)",
        epilog=_DATA_EPILOG + "." + _OFFLINE,
    )
    p.add_argument("conv", type=int, help="conversation id")
    p.add_argument("users", nargs="+", metavar="USER")
    _store_args(p)
    p = groups.add_parser(
        "rename", help="set a group's title", epilog=_DATA_EPILOG + "." + _OFFLINE
    )
    p.add_argument("conv", type=int, help="conversation id")
    p.add_argument("title", help="the new title")
    _store_args(p)


def _data_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bluewren import ops

    given = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    config = load_config(args.config, cli=given)
    database = config.database_path
    try:
        if args.command == "import":
            result = ops.import_user(database, Path(args.file))
            print(result.summary())
            if result.skipped_convs:
                print(
                    f"bluewren: skipped {result.skipped} messages in conversations the "
                    f"store does not have and {result.user} is no longer a member of "
                    f"({', '.join(map(str, result.skipped_convs))}): import a member's "
                    "export first, then this one again",
                    file=sys.stderr,
                )
        elif args.command == "users":
            _users_command(args, database)
        elif args.command == "groups":
            _groups_command(args, database, config.max_group_members)
        elif args.command == "export":
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
    except ops.OpsError as exc:
        print(f"bluewren: {exc}", file=sys.stderr)
        return exc.status
    return ops.EXIT_OK


def _users_command(args: argparse.Namespace, database: Any) -> None:
    """``users ACTION`` (OpsError to the caller)."""
    import json

    from bluewren import ops

    if args.action == "list":
        for user, convs, sent, disabled in ops.users_list(database):
            flag = "\tdisabled" if disabled else ""
            print(f"{user}\t{convs} conversations\t{sent} messages{flag}")
    elif args.action == "show":
        print(json.dumps(ops.users_show(database, args.user), indent=2))
    elif args.action == "disable":
        changed = ops.users_set_disabled(database, args.user, True, args.reason, force=args.force)
        print(f"disabled {args.user}" if changed else f"{args.user} was already disabled")
    else:
        changed = ops.users_set_disabled(database, args.user, False)
        print(f"enabled {args.user}" if changed else f"{args.user} was not disabled")


def _groups_command(args: argparse.Namespace, database: Any, max_members: int) -> None:
    """``groups ACTION`` (OpsError to the caller)."""
    import json

    from bluewren import ops

    if args.action == "list":
        for conv, title, members, last in ops.groups_list(database):
            print(f"{conv}\t{members} members\tseq {last}\t{title}")
    elif args.action == "show":
        print(json.dumps(ops.groups_show(database, args.conv), indent=2))
    elif args.action == "create":
        group = ops.groups_create(database, args.title, args.owner, args.member, max_members)
        print(json.dumps(group, indent=2))
    elif args.action == "add":
        added, present = ops.groups_add(database, args.conv, args.users, args.role, max_members)
        print(f"group {args.conv}: added {len(added)} ({', '.join(added) or '-'})")
        if present:
            print(f"already members: {', '.join(present)}")
    elif args.action == "remove":
        removed = ops.groups_remove(database, args.conv, args.users)
        print(f"group {args.conv}: removed {len(removed)} ({', '.join(removed)})")
    else:
        old = ops.groups_rename(database, args.conv, args.title)
        print(f"group {args.conv}: renamed from {old!r} to {args.title!r}")


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
            from bluewren.node.lifecycle import tls_context

            tls_context(load_config(args.file))  # the TLS files too, as serve would
            print("ok")
            return 0
        if args.command in ("export", "import", "erase", "users", "groups"):
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
        return EXIT_CONFIG
    except (OSError, ValueError) as exc:
        print(f"bluewren: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
