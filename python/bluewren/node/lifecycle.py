"""Running a node as a process: start-up checks, signals and a bounded graceful stop.

:func:`serve` is what ``python -m bluewren serve`` runs. It refuses to start with one
clear line on stderr (and a non-zero exit status) when the data directory cannot be
written or a port is taken, prints ``bluewren node listening on ws://HOST:PORT/`` (and
``bluewren node listening on tcp://HOST:PORT`` for the raw TCP listener) once it
accepts connections (having tuned Python's cyclic garbage collector: ``gc_threshold``,
:func:`tune_gc`), and on SIGTERM or SIGINT stops gracefully:

1. stop accepting connections and reading commands;
2. let commands in flight commit and send their ACKs;
3. close every connection with 1001 ("node stopping: reconnect and SYNC");
4. flush and close the store; exit status 0.

All of it within ``NodeConfig.shutdown_timeout``; a second signal exits at once
(status 130): what was committed stays committed, since the store is crash-safe.

On SIGHUP, when :func:`serve` was given ``reload`` (``bluewren serve`` passes one that
re-reads the config file, the environment and the same flags), the new configuration is
applied to the running node as far as it can be (``bluewren.node.reload``): one line on
stdout says what changed, another what needs a restart; an invalid file changes nothing
and says why on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import json
import os
import signal
import ssl
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

from bluewren.errors import BlueWrenError
from bluewren.node.config import NodeConfig, NodeConfigError
from bluewren.node.server import Node

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FORCED",
    "EXIT_PORT_IN_USE",
    "EXIT_STARTUP",
    "FD_HEADROOM",
    "StartupError",
    "config_overrides",
    "raise_fd_limit",
    "serve",
    "tls_context",
]

EXIT_STARTUP: Final = 1
"""Exit status when the node could not start (unwritable data directory, bad store)."""
EXIT_CONFIG: Final = 2
"""Exit status when a configured file or limit is unusable at start (TLS files,
``max_open_files`` above the hard limit); the same status as an invalid configuration."""
EXIT_PORT_IN_USE: Final = 3
"""Exit status when a port to listen on is taken."""
EXIT_FORCED: Final = 130
"""Exit status when a second signal cut the graceful stop short."""
FD_HEADROOM: Final = 256
"""File descriptors counted besides one per connection (store, listeners, logs, the
metrics endpoint) when checking ``max_connections`` against the open-file limit."""
NO_HARD_LIMIT_CAP: Final = 1 << 20
"""The soft open-file limit aimed at when the hard limit is unlimited (Linux nr_open)."""


class StartupError(BlueWrenError):
    """The node cannot start; ``exit_status`` is the process exit status to use."""

    def __init__(self, message: str, exit_status: int = EXIT_STARTUP) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def config_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings as NodeConfig keyword arguments; VALUE is read as JSON
    (``1000``, ``2.5``, ``null``, ``"text"``) and kept as a string when it is not JSON.
    NodeConfigError for an unknown field (the config itself checks the values)."""
    known = {f.name for f in dataclasses.fields(NodeConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in known:
            raise NodeConfigError(
                name or item, f"--set takes FIELD=VALUE with a NodeConfig field, got {item!r}"
            )
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = raw
    return out


def check_data_dir(config: NodeConfig) -> None:
    """Creates the data directory and proves it is writable (StartupError if not)."""
    path = config.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(f"data directory {path} is not writable: {reason}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"data directory {path} is not writable")


def raise_fd_limit(config: NodeConfig) -> list[str]:
    """Sets the soft RLIMIT_NOFILE to ``config.max_open_files``, or to the hard limit when
    that is None, and checks that ``max_connections`` plus :data:`FD_HEADROOM` fits.
    StartupError (:data:`EXIT_CONFIG`) if ``max_open_files`` is above the hard limit.
    Returns the lines to report, what changed first, then what the operator should fix:
    :func:`serve` prints them on stderr once the node listens (a start that fails stays
    one line)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    if config.max_open_files is not None:
        target = config.max_open_files
        if not unlimited and target > hard:
            raise StartupError(
                f"max_open_files {target} is above the hard open-file limit {hard}: raise "
                "the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower max_open_files",
                EXIT_CONFIG,
            )
    else:
        target = NO_HARD_LIMIT_CAP if unlimited else hard
        target = max(target, soft) if soft != resource.RLIM_INFINITY else soft
    shown_hard = "unlimited" if unlimited else str(hard)
    notes: list[str] = []
    warnings: list[str] = []
    if target == soft:
        notes.append(f"bluewren: open-file limit {soft} (hard {shown_hard})")
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            warnings.append(
                f"bluewren: warning: cannot set the open-file limit to {target} "
                f"(soft {soft}, hard {shown_hard}): {exc}"
            )
        else:
            notes.append(
                f"bluewren: open-file limit set from {soft} to {target} (hard {shown_hard})"
            )
            soft = target
    needed = config.max_connections + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and needed > soft:
        warnings.append(
            f"bluewren: warning: max_connections {config.max_connections} + {FD_HEADROOM} "
            f"other files needs {needed} open files but the limit is {soft}: connections "
            f"past about {max(0, soft - FD_HEADROOM)} will fail (too many open files); "
            "raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower max_connections"
        )
    return notes + warnings


def tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The server's TLS context from the configured files, loaded once before anything
    starts (None without TLS); StartupError (EXIT_CONFIG) naming a bad file."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    from bluewren.node.tls import TlsError, server_context

    try:
        return server_context(config.tls_cert, config.tls_key)
    except TlsError as exc:
        raise StartupError(str(exc), EXIT_CONFIG) from None


async def start_node(config: NodeConfig, tls: ssl.SSLContext | None = None) -> Node:
    """A started node, serving TLS with ``tls`` (from :func:`tls_context`); StartupError
    with a one-line reason if it cannot start."""
    check_data_dir(config)
    node = Node(config, tls=tls)
    try:
        await node.start()
    except OSError as exc:
        with contextlib.suppress(Exception):
            await node.stop()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"cannot listen on {config.host}: a port ({config.port}"
                + (f" or TCP {config.tcp_port}" if config.tcp_port is not None else "")
                + ") is already in use; stop the other process or pick another --port",
                EXIT_PORT_IN_USE,
            ) from None
        raise StartupError(f"cannot start: {exc.strerror or exc}") from None
    except BlueWrenError as exc:
        with contextlib.suppress(Exception):
            await node.stop()
        raise StartupError(f"cannot start: {exc}") from None
    return node


GC_OLDER_THRESHOLDS: Final = (20, 100)
"""Python's gc thresholds for the two older generations under ``gc_threshold``: a
middle pass every 20 young ones, a full pass every 100 middle ones."""


def tune_gc(threshold: int) -> Callable[[], None]:
    """Sets the young-generation threshold of Python's cyclic collector to ``threshold``
    (0: changes nothing) and freezes the objects alive now (modules, configuration, the
    started node) out of every later pass. Returns what undoes both."""
    if not threshold:
        return lambda: None
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, *GC_OLDER_THRESHOLDS)

    def restore() -> None:
        gc.set_threshold(*before)
        gc.unfreeze()

    return restore


async def serve(
    config: NodeConfig,
    stop: asyncio.Event | None = None,
    reload: Callable[[], NodeConfig] | None = None,
) -> int:
    """Runs a node until SIGINT/SIGTERM (or ``stop``); returns the exit status. With
    ``reload``, SIGHUP applies the configuration it returns (see the module docstring)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            print("bluewren: second signal: exiting without waiting", file=sys.stderr)
            sys.stderr.flush()
            os._exit(EXIT_FORCED)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    try:
        tls = tls_context(config)  # a configuration error first, before anything is touched
        fd_lines = raise_fd_limit(config)
        node = await start_node(config, tls)
    except StartupError as exc:
        print(f"bluewren: {exc}", file=sys.stderr, flush=True)
        return exc.exit_status
    restore_gc = tune_gc(config.gc_threshold)
    if reload is not None:

        def on_hup() -> None:
            reload_node(node, reload)

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        for line in fd_lines:
            print(line, file=sys.stderr, flush=True)
        print(f"bluewren node listening on {node.url}", flush=True)
        if config.tcp_port is not None:
            print(f"bluewren node listening on tcp://{config.host}:{node.tcp_port}", flush=True)
        await stop.wait()
        print("bluewren: stopping", file=sys.stderr, flush=True)
    finally:
        if reload is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
        await node.stop()
        restore_gc()
    return 0


def reload_node(node: Node, reload: Callable[[], NodeConfig]) -> None:
    """Re-reads the configuration with ``reload`` and applies it to ``node``, printing
    what changed; an invalid configuration changes nothing."""
    from bluewren.node.reload import apply_config

    try:
        new = reload()
    except (BlueWrenError, OSError, ValueError) as exc:
        print(
            f"bluewren: reload failed, keeping the running configuration: {exc}",
            file=sys.stderr,
            flush=True,
        )
        return
    for line in apply_config(node, new).lines():
        print(line, flush=True)
