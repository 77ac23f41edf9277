"""Loading the node's configuration from three layers into the one ``NodeConfig``.

Precedence, highest first::

    command-line flags (--port, --set FIELD=VALUE)
    environment variables BLUEWREN_<FIELD> (upper case, e.g. BLUEWREN_SEND_RATE=200)
    the TOML file (--config bluewren.toml: top-level keys named like the fields)
    the NodeConfig defaults

Everything is merged first and validated once, by ``NodeConfig`` itself. A bad value
raises :class:`ConfigError` naming the key, the value, where it came from and why; an
unknown key in the file is an error with a "did you mean" suggestion. Environment
variables with the prefix that name no field are ignored (other tools share the prefix).

:func:`defaults_toml` writes every field with its default and a one-line comment; the
comment is the attribute docstring in ``config.py`` when there is one, else
:data:`FIELD_HELP`. ``examples/bluewren.toml`` is that text (a test keeps it so).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final

from bluewren.breaker import BreakerConfig
from bluewren.errors import BreakerConfigError
from bluewren.node.config import NodeConfig, NodeConfigError

__all__ = [
    "ENV_PREFIX",
    "FIELD_HELP",
    "ConfigError",
    "defaults_toml",
    "field_help",
    "from_env",
    "load_config",
    "read_toml",
]

ENV_PREFIX: Final = "BLUEWREN_"
"""Prefix of the environment variables that set NodeConfig fields."""

FIELD_HELP: Final[Mapping[str, str]] = {
    "host": "Address to listen on (0.0.0.0 for every interface).",
    "port": "WebSocket port; 0 picks a free one.",
    "data_dir": "Directory of the SQLite store and the generated token secret.",
    "token_secret": "Token signing secret (>= 32 chars); unset: BLUEWREN_TOKEN_SECRET or "
    "data_dir/token_secret.",
    "max_message_bytes": "Largest SEND body in bytes (1..1048576).",
    "hello_timeout": "Seconds a connection may stay unauthenticated before close 4002.",
    "outbox_low_water": "Outbox bytes below which a paused connection resumes.",
    "outbox_high_water": "Outbox bytes above which writes to a connection pause.",
    "outbox_max_bytes": "Outbox bytes past which a slow consumer is closed with 4008.",
    "sqlite_synchronous": "SQLite synchronous mode: NORMAL (WAL, fast) or FULL.",
    "store_wal_checkpoint_pages": "Write-ahead log pages at which the store checkpoints "
    "(between commits, off the commit path).",
    "store_batch_max": "Most messages the store commits in one transaction (group commit).",
    "store_message_log": "Acknowledge a message once the message log holds it, and index it "
    "into SQLite after (NORMAL only; false: acknowledge after the SQLite commit).",
    "store_log_backlog_max": "Messages the message log may hold that SQLite has not indexed "
    "yet; past it, new ones wait for SQLite.",
    "store_log_segment_bytes": "Bytes past which the message log starts a new segment file "
    "(>= 4096).",
    "store_log_cache_entries": "Conversations, and (sender, conversation) pairs, whose last "
    "seq and client message id the store keeps in memory for the message log.",
    "shutdown_timeout": "Seconds a graceful stop may take before connections are cut.",
    "tcp_port": "Raw TCP listener port; unset: off, 0 picks a free one.",
    "send_rate": "SEND messages per second per connection (token bucket rate).",
    "send_burst": "SEND messages a connection may send at once (token bucket size).",
    "max_typing_per_second": "TYPING commands per connection and second.",
    "max_connections": "Connections of the node; the next is closed with 1013.",
    "overload_retry_after": "Retry hint in seconds sent to refused connections.",
    "max_devices_per_user": "Devices of one user connected at once.",
    "max_groups_per_user": "Groups one user may belong to.",
    "max_group_members": "Members of one group (>= 2).",
    "max_history_page": "Largest page of one HISTORY query.",
    "max_presence_query": "Users in one PRESENCE query.",
    "receipts_max_members": "Read receipts are pushed in conversations up to this size.",
    "metrics_port": "HTTP port of /metrics, /healthz and /readyz; unset: off, 0 picks one.",
}
"""One-line help per field, used where the field has no attribute docstring."""


class ConfigError(NodeConfigError):
    """A configuration key is unknown or its value invalid.

    ``field`` names the key, ``value`` is the offending value, ``source`` where it came
    from (the file, ``env BLUEWREN_X``, ``--set``, ``defaults``), ``reason`` why."""

    def __init__(
        self, field: str, reason: str, *, value: object = None, source: str = "defaults"
    ) -> None:
        super().__init__(field, reason)
        self.reason = reason
        self.value = value
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {self.field} = {_show(self.value)}: {self.reason}"

    def __reduce__(self) -> Any:
        return (
            _rebuild,
            (type(self), self.field, self.reason, self.value, self.source),
        )


def _rebuild(
    cls: type[ConfigError], field: str, reason: str, value: object, source: str
) -> ConfigError:
    return cls(field, reason, value=value, source=source)


def _show(value: object) -> str:
    if isinstance(value, Path):
        value = str(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(NodeConfig)}


def _unknown(name: str, value: object, source: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(_fields()), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(name, f"unknown key{hint}", value=value, source=source)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The top-level keys of a TOML config file, checked against the fields.

    ConfigError for an unreadable or malformed file and for an unknown key (with the
    closest field name as a suggestion); the values themselves are checked later."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(
            "config", f"cannot read the file: {exc.strerror or exc}", value=source, source=source
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"not valid TOML: {exc}", value=source, source=source) from None
    known = _fields()
    for key, value in table.items():
        if key not in known:
            raise _unknown(key, value, source)
    if isinstance(table.get("breakers"), dict):
        table["breakers"] = _breakers(table["breakers"], source)
    return table


def _breakers(table: dict[str, Any], source: str) -> dict[str, Any]:
    """``[breakers.NAME]`` tables as BreakerConfigs, each over the default of NAME."""
    from bluewren.node.resilience import DEFAULT_BREAKERS

    out: dict[str, Any] = {}
    for name, values in table.items():
        if name not in DEFAULT_BREAKERS:
            close = difflib.get_close_matches(name, list(DEFAULT_BREAKERS), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"breakers.{name}", f"unknown breaker{hint}", value=values, source=source
            )
        if not isinstance(values, dict):
            raise ConfigError(
                f"breakers.{name}",
                "must be a table of breaker settings",
                value=values,
                source=source,
            )
        try:
            out[name] = BreakerConfig.from_mapping(
                values, base=DEFAULT_BREAKERS[name], section=f"breakers.{name}"
            )
        except BreakerConfigError as exc:
            key = str(exc.field)
            leaf = key.rsplit(".", 1)[-1]
            reason = str(exc).split("] ", 1)[-1]
            raise ConfigError(key, reason, value=values.get(leaf), source=source) from None
    return out


@cache
def _types() -> dict[str, Any]:
    return typing.get_type_hints(NodeConfig)


def _coerce(name: str, raw: str) -> object:
    """An environment string as a value of the field's type (kept as the string when it
    does not convert, so the field's own check names it)."""
    hint = _types()[name]
    args = typing.get_args(hint)
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = args if is_union else (hint,)
    if type(None) in options and raw.strip().lower() in ("", "none", "null", "off"):
        return None
    for option in options:
        if option is bool:
            word = raw.strip().lower()
            if word in ("true", "1", "yes", "on"):
                return True
            if word in ("false", "0", "no", "off"):
                return False
            continue
        if option is int:
            try:
                return int(raw)
            except ValueError:
                continue
        if option is float:
            try:
                return float(raw)
            except ValueError:
                continue
        if option is Path:
            return Path(raw)
    return raw


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, tuple[object, str]]:
    """``BLUEWREN_<FIELD>`` variables as ``{field: (value, source)}``."""
    env = os.environ if environ is None else environ
    out: dict[str, tuple[object, str]] = {}
    for name in _fields():
        var = ENV_PREFIX + name.upper()
        if var in env:
            out[name] = (_coerce(name, env[var]), f"env {var}")
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, object] | None = None,
    cli_source: str = "command line",
) -> NodeConfig:
    """The one validated NodeConfig from the file, the environment and CLI overrides.

    ``environ`` defaults to ``os.environ``; ``cli`` maps field names to values given on
    the command line. ConfigError names the bad key, its value, its source and why."""
    layers: dict[str, tuple[object, str]] = {}
    if path is not None:
        source = str(path)
        layers.update({k: (v, source) for k, v in read_toml(path).items()})
    layers.update(from_env(environ))
    known = _fields()
    for name, value in (cli or {}).items():
        if name not in known:
            raise _unknown(name, value, cli_source)
        layers[name] = (value, cli_source)
    try:
        kwargs: dict[str, Any] = {k: v for k, (v, _) in layers.items()}
        return NodeConfig(**kwargs)
    except ConfigError:
        raise
    except NodeConfigError as exc:
        reason = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
        if exc.field in layers:
            value, source = layers[exc.field]
        else:
            field = known.get(exc.field)
            value = field.default if field is not None else None
            source = "defaults"
        raise ConfigError(exc.field, reason, value=value, source=source) from None
    except TypeError as exc:  # a value of a kind no field check anticipated
        raise ConfigError("config", str(exc), value=None, source="config") from None


@cache
def _attribute_docs() -> dict[str, str]:
    """Attribute docstrings of NodeConfig fields (a string right after the field)."""
    try:
        source = inspect.getsource(NodeConfig)
    except (OSError, TypeError):
        return {}
    cls = ast.parse(inspect.cleandoc("\n" + source)).body[0]
    assert isinstance(cls, ast.ClassDef)
    out: dict[str, str] = {}
    body = cls.body
    for stmt, nxt in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            out[stmt.target.id] = " ".join(nxt.value.value.split())
    return out


def field_help(name: str) -> str:
    """The one-line help of a field ("" when it has none)."""
    doc = _attribute_docs().get(name) or FIELD_HELP.get(name, "")
    return doc.split(". ")[0].rstrip(".") + "." if doc else ""


def _toml_value(value: object) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"no TOML form for {value!r}")


def defaults_toml() -> str:
    """An annotated TOML file with every NodeConfig field at its default.

    Fields whose default is unset (None) are written commented out."""
    lines = [
        "# BlueWren node configuration: every field at its default.",
        "# Precedence: command-line flags > BLUEWREN_<FIELD> environment variables",
        "# > this file > defaults. Check a file with: bluewren check-config FILE",
        "# Generated by: bluewren config --print-defaults",
        "",
    ]
    tables: list[str] = []
    for f in dataclasses.fields(NodeConfig):
        if f.default is not dataclasses.MISSING:
            default: object = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # pragma: no cover - every field has a default
            continue
        if isinstance(default, Mapping):  # a table: after every top-level key
            tables += [f"# {field_help(f.name)}", f"[{f.name}]", ""]
            continue
        lines.append(f"# {field_help(f.name)}")
        if default is None:
            lines.append(f"# {f.name} =  (unset)")
        else:
            lines.append(f"{f.name} = {_toml_value(default)}")
        lines.append("")
    return "\n".join(lines + tables)
