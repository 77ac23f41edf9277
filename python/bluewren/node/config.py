"""The node's configuration: one frozen, validated object.

``NodeConfig`` is checked once, when it is built; a bad value raises
:class:`NodeConfigError` naming the field. The token secret comes from the config, else
from the environment (``BLUEWREN_TOKEN_SECRET``), else from a random secret created
once in the data directory, so ``bluewren serve`` and ``bluewren token`` agree with no
setup at all.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from bluewren.breaker import BreakerConfig
from bluewren.errors import BlueWrenError

__all__ = [
    "DEFAULT_PORT",
    "MIN_GC_THRESHOLD",
    "MIN_OPEN_FILES",
    "SECRET_ENV",
    "SECRET_FILE",
    "NodeConfig",
    "NodeConfigError",
    "resolve_token_secret",
]

SECRET_ENV: Final = "BLUEWREN_TOKEN_SECRET"
"""Environment variable holding the token secret (at least 32 characters)."""

DEFAULT_PORT: Final = 8470
"""The port a node listens on unless told otherwise."""

MIN_OPEN_FILES: Final = 64
"""The smallest ``max_open_files`` accepted (the store, listeners and logs need some)."""

MIN_GC_THRESHOLD: Final = 700
"""The smallest non-zero ``gc_threshold`` accepted (Python's own default)."""

SECRET_FILE: Final = "token_secret"
"""File in the data directory holding the generated token secret."""


class NodeConfigError(BlueWrenError, ValueError):
    """A configuration value is invalid; ``field`` names it."""

    field: str

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")

    def __reduce__(self) -> tuple[type[NodeConfigError], tuple[str, str]]:
        return (type(self), (self.field, str(self).split(": ", 1)[1]))


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Settings of one node.

    ``port`` 0 picks a free port (read it back from ``Node.port``). ``token_secret``
    None means: use :func:`resolve_token_secret`. ``max_message_bytes`` bounds a SEND
    body; a WebSocket message may be up to ``max_message_bytes + 64 KiB`` (room for
    headers, envelopes and several frames), past which the connection closes with 1009.
    ``hello_timeout`` is how long a connection may stay unauthenticated (seconds).
    ``outbox_*`` are the per-connection fan-out limits in bytes; a connection whose
    outbox would exceed ``outbox_max_bytes`` is closed with 4008. ``shutdown_timeout``
    bounds a graceful stop: commands in flight get that long to commit and be
    acknowledged before every connection is closed (1001) and the store is closed.
    ``tcp_port`` opens the raw TCP listener (bare BlueWren frames, see
    ``bluewren.node.tcp``) on that port of ``host``; None leaves it off, 0 picks a port.

    Limits (docs/protocol.md, "Limits", says what a client sees at each edge):
    ``send_rate`` / ``send_burst``: a token bucket per connection for SEND (messages per
    second, and how many may come at once); past it ERROR ``RATE_LIMITED`` with
    ``retry_after``. ``max_typing_per_second``: TYPING commands per connection and second
    (a bucket of that rate and burst). ``max_connections``: connections of the node; the
    next one is closed with 1013 and a retry hint of ``overload_retry_after`` seconds.
    ``max_devices_per_user``: distinct devices of one user connected at once; the next
    HELLO gets ``LIMIT_EXCEEDED`` and close 1008. ``max_groups_per_user`` and
    ``max_group_members`` bound CREATE_GROUP and ADD_MEMBERS (``LIMIT_EXCEEDED``).
    ``max_history_page`` caps the ``limit`` of HISTORY; ``max_presence_query`` the users
    of one PRESENCE query. ``receipts_max_members``: RECEIPT events are pushed to the
    members of conversations with at most this many members (none above it).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("bluewren-data")
    token_secret: str | None = None
    max_message_bytes: int = 256 * 1024
    hello_timeout: float = 10.0
    outbox_low_water: int = 64 * 1024
    outbox_high_water: int = 1024 * 1024
    outbox_max_bytes: int = 8 * 1024 * 1024
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    store_wal_checkpoint_pages: int = 1000
    store_batch_max: int = 1024
    store_message_log: bool = True
    store_log_backlog_max: int = 10_000
    store_log_segment_bytes: int = 64 * 1024 * 1024
    store_log_cache_entries: int = 100_000
    shutdown_timeout: float = 10.0
    tcp_port: int | None = None
    send_rate: float = 50.0
    send_burst: int = 100
    max_typing_per_second: int = 3
    max_connections: int = 100_000
    listen_backlog: int = 4096
    """Accept queue of each listener (``listen(2)``'s backlog; the kernel caps it at
    net.core.somaxconn). asyncio's default, 100, resets bursts of connects."""
    overload_retry_after: float = 5.0
    max_devices_per_user: int = 10
    max_groups_per_user: int = 1_000
    max_group_members: int = 20_000
    max_history_page: int = 200
    max_presence_query: int = 500
    receipts_max_members: int = 256
    shed_loop_lag: float = 0.5
    """Event-loop lag (s) at which new connections are refused with 1013 (admission.py)."""
    shed_rss_bytes: int | None = None
    """Process RSS (bytes) at which new connections are refused with 1013; None: off."""
    load_check_interval: float = 0.1
    """Seconds between two readings of event-loop lag and RSS."""
    connect_rate: float = 200.0
    """New connections per second and source IP address (a token bucket)."""
    connect_burst: int = 2000
    """New connections one source IP address may open at once."""
    login_rate: float = 200.0
    """HELLO attempts (failed ones included) per second and source IP address."""
    login_burst: int = 2000
    """HELLO attempts one source IP address may make at once."""
    breakers: Mapping[str, BreakerConfig] = field(default_factory=dict)
    """Circuit breaker per dependency (store.read, store.write, hook.on_connect,
    hook.on_message, hook.after_store); replaces that entry of resilience.DEFAULT_BREAKERS."""
    metrics_port: int | None = None
    """HTTP port of /metrics, /healthz and /readyz; None: off, 0: any free (observability.py)."""
    admin_token: str | None = None
    """Bearer token of the admin API on metrics_port (admin.py); None: the API is off."""
    log_level: str = "INFO"
    """Level of the bluewren loggers: DEBUG, INFO, WARNING, ERROR (reloaded on SIGHUP)."""
    tls_cert: Path | None = None
    """PEM certificate (chain) file. With tls_key the node serves wss:// and https:// on
    metrics_port (the raw TCP listener stays plain); None (both unset): no TLS."""
    tls_key: Path | None = None
    """PEM private key file of tls_cert, unencrypted (set both or neither)."""
    disabled_refresh_interval: float = 5.0
    """Seconds between two readings of the disabled users by a running node. A user
    disabled with ``bluewren users disable`` is refused, and their connections closed
    with 4001, within this time."""
    max_open_files: int | None = None
    """Soft open-file limit (RLIMIT_NOFILE) set at start, at most the hard limit; None:
    raise the soft limit to the hard limit."""
    gc_threshold: int = 50_000
    """``bluewren serve`` only: allocations between two young-generation passes of
    Python's cyclic garbage collector (Python's default is 700); the objects alive at
    start are frozen out of every pass. Fewer, cheaper passes: about 20% more durable
    acks/s and a quarter off the half-rate p99 (benchmarks/results/node.md). 0: leave
    the collector as Python sets it."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise NodeConfigError("host", f"must be a non-empty address, got {self.host!r}")
        if not _is_int(self.port) or not 0 <= self.port <= 65535:
            raise NodeConfigError("port", f"must be an integer in 0..65535, got {self.port!r}")
        if not isinstance(self.data_dir, Path):
            if not isinstance(self.data_dir, str) or not self.data_dir:
                raise NodeConfigError(
                    "data_dir", f"must be a directory path, got {self.data_dir!r}"
                )
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.token_secret is not None and (
            not isinstance(self.token_secret, str) or len(self.token_secret) < 32
        ):
            raise NodeConfigError(
                "token_secret", "must be a string of at least 32 random characters (or None)"
            )
        if not _is_int(self.max_message_bytes) or not 1 <= self.max_message_bytes <= 1 << 20:
            raise NodeConfigError(
                "max_message_bytes",
                f"must be an integer in 1..1048576 (the frame limit), got "
                f"{self.max_message_bytes!r}",
            )
        if (
            not isinstance(self.hello_timeout, int | float)
            or isinstance(self.hello_timeout, bool)
            or not 0 < self.hello_timeout <= 3600
        ):
            raise NodeConfigError(
                "hello_timeout",
                f"must be a number of seconds in (0, 3600], got {self.hello_timeout!r}",
            )
        for name in ("outbox_low_water", "outbox_high_water", "outbox_max_bytes"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise NodeConfigError(name, f"must be an integer >= 0, got {value!r}")
        if not self.outbox_low_water <= self.outbox_high_water <= self.outbox_max_bytes:
            raise NodeConfigError(
                "outbox_high_water",
                "outbox limits must satisfy outbox_low_water <= outbox_high_water <= "
                f"outbox_max_bytes, got {self.outbox_low_water}, {self.outbox_high_water}, "
                f"{self.outbox_max_bytes}",
            )
        if self.outbox_max_bytes < self.max_message_bytes + 4096:
            raise NodeConfigError(
                "outbox_max_bytes",
                f"must hold at least one largest message (max_message_bytes + 4096 = "
                f"{self.max_message_bytes + 4096}), got {self.outbox_max_bytes}",
            )
        if (
            not isinstance(self.shutdown_timeout, int | float)
            or isinstance(self.shutdown_timeout, bool)
            or not 0 < self.shutdown_timeout <= 3600
        ):
            raise NodeConfigError(
                "shutdown_timeout",
                f"must be a number of seconds in (0, 3600], got {self.shutdown_timeout!r}",
            )
        if self.tcp_port is not None and (
            not _is_int(self.tcp_port) or not 0 <= self.tcp_port <= 65535
        ):
            raise NodeConfigError(
                "tcp_port", f"must be None (off) or an integer in 0..65535, got {self.tcp_port!r}"
            )
        if self.sqlite_synchronous not in ("NORMAL", "FULL"):
            raise NodeConfigError(
                "sqlite_synchronous",
                f"must be 'NORMAL' or 'FULL', got {self.sqlite_synchronous!r}",
            )
        if self.metrics_port is not None and (
            not _is_int(self.metrics_port) or not 0 <= self.metrics_port <= 65535
        ):
            raise NodeConfigError(
                "metrics_port",
                f"must be None (off) or an integer in 0..65535, got {self.metrics_port!r}",
            )
        if self.admin_token is not None and (
            not isinstance(self.admin_token, str) or len(self.admin_token) < 16
        ):
            raise NodeConfigError(
                "admin_token", "must be a string of at least 16 random characters (or None)"
            )
        if not isinstance(self.log_level, str) or self.log_level.upper() not in (
            "DEBUG",
            "INFO",
            "WARNING",
            "ERROR",
            "CRITICAL",
        ):
            raise NodeConfigError(
                "log_level",
                f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {self.log_level!r}",
            )
        self._check_limits()
        _check_resilience(self)
        self._check_files()

    def _check_files(self) -> None:
        for name in ("tls_cert", "tls_key"):
            value = getattr(self, name)
            if isinstance(value, str) and value:
                object.__setattr__(self, name, Path(value))
            elif value is not None and not isinstance(value, Path):
                raise NodeConfigError(name, f"must be a file path (or unset), got {value!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (
                ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            )
            raise NodeConfigError(
                given, f"TLS needs both tls_cert and tls_key: {missing} is not set"
            )
        if not _is_int(self.gc_threshold) or not (
            self.gc_threshold == 0 or self.gc_threshold >= MIN_GC_THRESHOLD
        ):
            raise NodeConfigError(
                "gc_threshold",
                f"must be 0 (Python's default) or an integer >= {MIN_GC_THRESHOLD}, "
                f"got {self.gc_threshold!r}",
            )
        if self.max_open_files is not None and (
            not _is_int(self.max_open_files) or self.max_open_files < MIN_OPEN_FILES
        ):
            raise NodeConfigError(
                "max_open_files",
                f"must be unset or an integer >= {MIN_OPEN_FILES}, got {self.max_open_files!r}",
            )

    def _check_limits(self) -> None:
        for name in ("send_rate", "overload_retry_after"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not 0 < value <= 1_000_000
            ):
                raise NodeConfigError(name, f"must be a number in (0, 1000000], got {value!r}")
        for name in (
            "send_burst",
            "max_typing_per_second",
            "max_connections",
            "listen_backlog",
            "max_devices_per_user",
            "max_groups_per_user",
            "max_group_members",
            "max_history_page",
            "max_presence_query",
            "receipts_max_members",
            "store_wal_checkpoint_pages",
            "store_batch_max",
            "store_log_backlog_max",
            "store_log_cache_entries",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise NodeConfigError(name, f"must be an integer >= 1, got {value!r}")
        if not isinstance(self.store_message_log, bool):
            raise NodeConfigError(
                "store_message_log", f"must be true or false, got {self.store_message_log!r}"
            )
        if not _is_int(self.store_log_segment_bytes) or self.store_log_segment_bytes < 4096:
            raise NodeConfigError(
                "store_log_segment_bytes",
                f"must be an integer >= 4096, got {self.store_log_segment_bytes!r}",
            )
        if self.max_group_members < 2:
            raise NodeConfigError(
                "max_group_members", f"must allow at least 2 members, got {self.max_group_members}"
            )

    @property
    def max_ws_message_bytes(self) -> int:
        """The largest WebSocket message accepted (larger ones close with 1009)."""
        return self.max_message_bytes + 64 * 1024

    @property
    def tls(self) -> bool:
        """True when the node serves TLS (tls_cert and tls_key are set)."""
        return self.tls_cert is not None

    @property
    def database_path(self) -> Path:
        """The SQLite file in the data directory."""
        return self.data_dir / "bluewren.db"


def _check_resilience(c: NodeConfig) -> None:
    for name in (
        "shed_loop_lag",
        "load_check_interval",
        "connect_rate",
        "login_rate",
        "disabled_refresh_interval",
    ):
        value = getattr(c, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1e6:
            raise NodeConfigError(name, f"must be a number in (0, 1000000], got {value!r}")
    for name in ("connect_burst", "login_burst"):
        value = getattr(c, name)
        if not _is_int(value) or value < 1:
            raise NodeConfigError(name, f"must be an integer >= 1, got {value!r}")
    if c.shed_rss_bytes is not None and (not _is_int(c.shed_rss_bytes) or c.shed_rss_bytes < 1):
        raise NodeConfigError(
            "shed_rss_bytes", f"must be None (off) or bytes >= 1, got {c.shed_rss_bytes!r}"
        )
    if not isinstance(c.breakers, Mapping):
        raise NodeConfigError("breakers", f"must map names to BreakerConfig, got {c.breakers!r}")
    for name, value in c.breakers.items():
        if not isinstance(value, BreakerConfig):
            raise NodeConfigError(
                f"breakers.{name}", f"must be a BreakerConfig, got {type(value).__name__}"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_token_secret(data_dir: Path, configured: str | None = None) -> str:
    """The token secret: ``configured``, else ``$BLUEWREN_TOKEN_SECRET``, else the file
    ``data_dir/token_secret`` (created with a random secret, mode 0600, on first use)."""
    if configured is not None:
        return configured
    env = os.environ.get(SECRET_ENV)
    if env:
        if len(env) < 32:
            raise NodeConfigError(SECRET_ENV, "must hold at least 32 random characters")
        return env
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if len(secret) < 32:
            raise NodeConfigError(
                "token_secret", f"{path} holds fewer than 32 characters: delete it"
            ) from None
        return secret
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret
