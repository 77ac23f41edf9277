"""Pass/fail thresholds for a Locust run, checked when Locust quits.

Command-line options (each also read from ``LOCUST_<OPTION>``, e.g.
``LOCUST_THRESHOLD_P99``, like every Locust option):

``--threshold-fail-ratio R``  the run fails if more than R (0..1) of all requests failed.
``--threshold-p99 NAME=MS,...``  the run fails if the 99th percentile response time of
    the requests named NAME is above MS milliseconds. NAME ``*`` means every name,
    ``Aggregated`` all requests together.
``--threshold-min-rps NAME=RPS,...``  the run fails if requests named NAME came at fewer
    than RPS per second (over the run), or not at all. Same NAMEs as above.

A missed threshold sets the exit code to 1 and logs one line per miss. Under
``--processes`` / distributed runs only the master (which has every worker's stats)
checks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from locust import events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import RequestStats, StatsEntry

__all__ = ["Limits", "check", "parse_pairs"]

log = logging.getLogger("bluewren.loadtest")

AGGREGATED = "Aggregated"


def parse_pairs(text: str | None, option: str) -> dict[str, float]:
    """``"a=1,b=2.5"`` as ``{"a": 1.0, "b": 2.5}``; ValueError names ``option``."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"{option}: expected NAME=NUMBER, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{option}: {value!r} is not a number (in {item!r})") from None
    return out


class Limits:
    """The thresholds of one run."""

    def __init__(
        self,
        fail_ratio: float | None = None,
        p99_ms: dict[str, float] | None = None,
        min_rps: dict[str, float] | None = None,
    ) -> None:
        self.fail_ratio = fail_ratio
        self.p99_ms = p99_ms or {}
        self.min_rps = min_rps or {}

    @classmethod
    def from_options(cls, options: Any) -> Limits:
        return cls(
            getattr(options, "threshold_fail_ratio", None),
            parse_pairs(getattr(options, "threshold_p99", ""), "--threshold-p99"),
            parse_pairs(getattr(options, "threshold_min_rps", ""), "--threshold-min-rps"),
        )

    def __bool__(self) -> bool:
        return self.fail_ratio is not None or bool(self.p99_ms) or bool(self.min_rps)


def _entries(stats: RequestStats, name: str) -> Iterable[StatsEntry]:
    if name == AGGREGATED:
        return [stats.total]
    if name == "*":
        return list(stats.entries.values())
    return [e for e in stats.entries.values() if e.name == name]


def _label(entry: StatsEntry) -> str:
    return AGGREGATED if entry.name == AGGREGATED else f"{entry.method} {entry.name}"


def check(stats: RequestStats, limits: Limits) -> list[str]:
    """What ``stats`` missed of ``limits``: one sentence per miss (empty: all met)."""
    misses: list[str] = []
    total = stats.total
    if limits.fail_ratio is not None and total.fail_ratio > limits.fail_ratio:
        misses.append(
            f"failure ratio {total.fail_ratio:.4f} ({total.num_failures} of "
            f"{total.num_requests}) is above --threshold-fail-ratio {limits.fail_ratio:g}"
        )
    for name, limit in limits.p99_ms.items():
        found = [e for e in _entries(stats, name) if e.num_requests]
        if not found:
            misses.append(f"p99 of {name!r}: no requests of that name were recorded")
        for entry in found:
            p99 = entry.get_response_time_percentile(0.99)
            if p99 is not None and p99 > limit:
                misses.append(
                    f"p99 of {_label(entry)} is {p99:g} ms, above --threshold-p99 {limit:g} ms"
                )
    for name, limit in limits.min_rps.items():
        found = [e for e in _entries(stats, name) if e.num_requests]
        if not found:
            misses.append(f"rate of {name!r}: no requests of that name were recorded")
        for entry in found:
            if entry.total_rps < limit:
                misses.append(
                    f"rate of {_label(entry)} is {entry.total_rps:.1f}/s, below "
                    f"--threshold-min-rps {limit:g}/s"
                )
    return misses


def _add_options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("thresholds (fail the run, exit code 1)")
    group.add_argument(
        "--threshold-fail-ratio",
        type=float,
        default=None,
        help="highest share of failed requests, 0..1 (e.g. 0.0)",
    )
    group.add_argument(
        "--threshold-p99",
        default="",
        help="NAME=MS[,NAME=MS...]: highest p99 per request name ('*': each, 'Aggregated')",
    )
    group.add_argument(
        "--threshold-min-rps",
        default="",
        help="NAME=RPS[,...]: lowest request rate per request name over the run",
    )


def _validate(environment: Environment, **_kwargs: Any) -> None:
    if environment.parsed_options is not None:
        Limits.from_options(environment.parsed_options)  # bad syntax fails early


def _enforce(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    try:
        limits = Limits.from_options(environment.parsed_options)
    except ValueError as exc:
        log.error("threshold options are invalid: %s", exc)
        environment.process_exit_code = 1
        return
    if not limits:
        return
    misses = check(environment.stats, limits)
    if misses:
        log.error("THRESHOLDS MISSED (%d):\n  %s", len(misses), "\n  ".join(misses))
        environment.process_exit_code = 1
    else:
        log.info("thresholds met")


events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_validate)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_enforce)  # type: ignore[no-untyped-call]
