"""Applying a re-read configuration to a running node (``bluewren serve`` on SIGHUP).

The node's :class:`~bluewren.node.config.NodeConfig` is frozen; a reload builds a new
one equal to the running one except for the fields of :data:`LIVE_FIELDS`, which take
effect at once, and swaps it in. Every other field that differs (ports, ``data_dir``,
``token_secret``, breakers, ``max_message_bytes``...) is reported as needing a restart
and keeps its running value.

What "at once" means per field:

- limits read per command (``max_group_members``, ``max_history_page``...): the next
  command;
- ``max_connections``, ``overload_retry_after``, ``shed_loop_lag``, ``hello_timeout`` and
  the ``outbox_*`` limits: the next connection;
- ``send_rate``/``send_burst``, ``connect_*``, ``login_*`` and ``max_typing_per_second``:
  the rate buckets are rebuilt, so every key starts again with a full bucket;
- ``log_level``: the ``bluewren`` loggers, at once;
- ``admin_token``: the next admin request.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from bluewren.node.admission import KeyedBuckets

if TYPE_CHECKING:
    from bluewren.node.config import NodeConfig
    from bluewren.node.server import Node

__all__ = ["LIVE_FIELDS", "ReloadResult", "apply_config", "diff_configs"]

LIVE_FIELDS: Final = frozenset(
    {
        "hello_timeout",
        "outbox_low_water",
        "outbox_high_water",
        "outbox_max_bytes",
        "send_rate",
        "send_burst",
        "max_typing_per_second",
        "max_connections",
        "overload_retry_after",
        "max_devices_per_user",
        "max_groups_per_user",
        "max_group_members",
        "max_history_page",
        "max_presence_query",
        "receipts_max_members",
        "shed_loop_lag",
        "connect_rate",
        "connect_burst",
        "login_rate",
        "login_burst",
        "admin_token",
        "log_level",
    }
)
"""NodeConfig fields a reload applies to the running node."""

_SECRET: Final = frozenset({"token_secret", "admin_token"})

log = logging.getLogger("bluewren.node.reload")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: ``applied`` and ``restart_needed`` map each changed field to
    ``(old, new)`` (secrets shown as ``"***"``); ``config`` is the config now in force."""

    applied: dict[str, tuple[object, object]]
    restart_needed: dict[str, tuple[object, object]]
    config: NodeConfig

    def lines(self) -> list[str]:
        """One line per kind of change, for the operator's terminal."""
        if not self.applied and not self.restart_needed:
            return ["bluewren: reloaded: nothing changed"]
        out = []
        if self.applied:
            out.append("bluewren: reloaded: " + _describe(self.applied))
        if self.restart_needed:
            out.append(
                "bluewren: not reloaded (restart to apply): " + _describe(self.restart_needed)
            )
        return out


def _describe(changes: dict[str, tuple[object, object]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in sorted(changes.items()))


def diff_configs(
    old: NodeConfig, new: NodeConfig
) -> tuple[dict[str, tuple[object, object]], dict[str, tuple[object, object]]]:
    """(live changes, changes that need a restart) from ``old`` to ``new``."""
    live: dict[str, tuple[object, object]] = {}
    frozen: dict[str, tuple[object, object]] = {}
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        shown = ("***", "***") if f.name in _SECRET else (a, b)
        (live if f.name in LIVE_FIELDS else frozen)[f.name] = shown
    return live, frozen


def apply_config(node: Node, new: NodeConfig) -> ReloadResult:
    """Swaps the live fields of ``new`` into ``node``; see the module docstring."""
    old = node.config
    live, frozen = diff_configs(old, new)
    if not live:
        return ReloadResult({}, frozen, old)
    merged = dataclasses.replace(old, **{name: getattr(new, name) for name in live})
    # The node's config is Final for its own code; a reload is the one place that swaps it.
    setattr(node, "config", merged)  # noqa: B010
    admission = node.admission
    admission.config = merged
    clock = admission.sends._clock
    if {"send_rate", "send_burst"} & live.keys():
        admission.sends = KeyedBuckets(merged.send_rate, merged.send_burst, clock)
    if {"connect_rate", "connect_burst"} & live.keys():
        admission.connects = KeyedBuckets(merged.connect_rate, merged.connect_burst, clock)
    if {"login_rate", "login_burst"} & live.keys():
        admission.logins = KeyedBuckets(merged.login_rate, merged.login_burst, clock)
    limits = node.limits
    setattr(limits, "_config", merged)  # noqa: B010
    if "max_typing_per_second" in live:
        limits._typing.clear()
    if "log_level" in live:
        logging.getLogger("bluewren").setLevel(merged.log_level.upper())
    result = ReloadResult(live, frozen, merged)
    log.warning(
        "configuration reloaded",
        extra={"applied": _describe(live), "restart_needed": _describe(frozen)},
    )
    return result
