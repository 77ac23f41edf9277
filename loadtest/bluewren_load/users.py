"""Locust users for a BlueWren node: the base class and the scenarios.

Every request event has ``request_type`` = the scenario (``direct``, ``group100``,
``group1000``, ``storm``, ``presence``) and one of these names:

``send->ack``       SEND until its ACK (the node stored it), measured by the sender.
``send->deliver``   SEND until a receiving connection got the DELIVER; the body carries
                    the send time (wall clock, so it also works across ``--processes``).
``connect``         TCP + upgrade + HELLO + WELCOME + SYNC/SYNCED of one connection.
``resume``          reconnect + SYNC from the cursor until every message sent while the
                    connection was down (and after) arrived; failure if one is missing.
``resume-order``    a failure recorded on a gap or a duplicate in a resumed stream.
``presence``        a PRESENCE query.

Options (``locust --help``; each also ``LOCUST_<OPTION>``): ``--bluewren-secret`` or
``--bluewren-data-dir`` (else ``$BLUEWREN_TOKEN_SECRET``) to mint tokens,
``--bluewren-pace`` (seconds between two tasks of one user), ``--bluewren-body-bytes``,
``--bluewren-members-per-user`` (group connections per Locust user).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from locust import User, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.exception import StopUser

from bluewren.auth import TokenIssuer
from bluewren_load.client import Delivery, LoadClientError, SyncClient

__all__ = [
    "BlueWrenUser",
    "DirectChatUser",
    "Group100User",
    "Group1000User",
    "GroupChatUser",
    "PresenceChurnUser",
    "ReconnectStormUser",
]

SECRET_ENV = "BLUEWREN_TOKEN_SECRET"
_PREFIXES: dict[int, str] = {}


def run_prefix() -> str:
    """Prefix of every user id of this process: fresh per run and per process (Locust's
    ``--processes`` forks after importing the locustfile, so it cannot be a constant)."""
    pid = os.getpid()
    if pid not in _PREFIXES:
        _PREFIXES[pid] = f"lt{pid}x{os.urandom(3).hex()}"
    return _PREFIXES[pid]


def _add_options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("bluewren")
    group.add_argument("--bluewren-secret", default="", help="token secret of the node")
    group.add_argument(
        "--bluewren-data-dir", default="", help="data dir of the node (its token_secret file)"
    )
    group.add_argument(
        "--bluewren-pace", type=float, default=0.1, help="seconds per task and user (0.1)"
    )
    group.add_argument("--bluewren-body-bytes", type=int, default=64, help="message body size (64)")
    group.add_argument(
        "--bluewren-members-per-user",
        type=int,
        default=10,
        help="group member connections per Locust user (10)",
    )


def _secret(options: Any) -> str:
    secret = str(getattr(options, "bluewren_secret", "") or "")
    data_dir = str(getattr(options, "bluewren_data_dir", "") or "")
    if not secret and data_dir:
        secret = (Path(data_dir) / "token_secret").read_text().strip()
    secret = secret or os.environ.get(SECRET_ENV, "")
    if not secret:
        raise StopUser(
            f"no token secret: pass --bluewren-secret, --bluewren-data-dir or ${SECRET_ENV}"
        )
    return secret


def stamp(size: int) -> bytes:
    """A message body starting with the current wall-clock time, padded to ``size``."""
    head = b"t=%.6f;" % time.time()
    return head + b"x" * max(0, size - len(head))


def stamped_at(body: bytes) -> float | None:
    """The send time :func:`stamp` put in ``body`` (None if it has none)."""
    if not body.startswith(b"t="):
        return None
    end = body.find(b";")
    try:
        return float(body[2:end])
    except ValueError:
        return None


class BlueWrenUser(User):
    """Base: connections, timed sends, deliver latency, request events.

    Subclasses set ``scenario`` (the request type) and open connections in
    ``on_start`` with :meth:`open`; :meth:`on_stop` closes them all.
    """

    abstract = True
    scenario: ClassVar[str] = "bluewren"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        url = urlsplit(self.host or "ws://127.0.0.1:8470/")
        if url.scheme != "ws" or url.hostname is None:
            raise ValueError(f"--host must look like ws://127.0.0.1:PORT/, got {self.host!r}")
        self.node_host: str = url.hostname
        self.node_port: int = url.port or 80
        options = environment.parsed_options
        self.pace: float = float(getattr(options, "bluewren_pace", 0.1))
        self.body_bytes: int = int(getattr(options, "bluewren_body_bytes", 64))
        self.clients: list[SyncClient] = []
        self._issuer: TokenIssuer | None = None
        self._options = options

    def wait_time(self) -> float:
        return self.pace

    # -- helpers -------------------------------------------------------------------

    def record(
        self,
        name: str,
        elapsed_ms: float,
        length: int = 0,
        exception: BaseException | None = None,
    ) -> None:
        """Fires one Locust request event."""
        self.environment.events.request.fire(
            request_type=self.scenario,
            name=name,
            response_time=elapsed_ms,
            response_length=length,
            exception=exception,
            context={},
        )

    def token(self, user: str, device: str) -> str:
        if self._issuer is None:
            self._issuer = TokenIssuer(_secret(self._options))
        return self._issuer.mint(user, device, ttl=24 * 3600)

    def on_deliver(self) -> Callable[[Delivery], None]:
        """A DELIVER handler recording ``send->deliver`` from the body's stamp."""

        def handle(d: Delivery) -> None:
            sent = stamped_at(d.body)
            if sent is not None:
                self.record("send->deliver", (time.time() - sent) * 1000.0, len(d.body))

        return handle

    def open(
        self,
        user: str,
        device: str = "load",
        on_deliver: Callable[[Delivery], None] | None = None,
        cursors: dict[int, int] | None = None,
        *,
        keep: bool = True,
    ) -> SyncClient:
        """A connected client (HELLO, SYNC from ``cursors``); records ``connect``."""
        client = SyncClient(
            self.node_host,
            self.node_port,
            self.token(user, device),
            on_deliver=self.on_deliver() if on_deliver is None else on_deliver,
        )
        if cursors:
            client.cursors.update(cursors)
        start = time.perf_counter()
        try:
            client.connect()
        except (OSError, LoadClientError) as exc:
            self.record("connect", (time.perf_counter() - start) * 1000.0, 0, exc)
            raise
        self.record("connect", (time.perf_counter() - start) * 1000.0)
        if keep:
            self.clients.append(client)
        return client

    def timed_send(self, client: SyncClient, conv: int) -> int | None:
        """Sends a stamped body; records ``send->ack``; returns the seq (None: failed)."""
        body = stamp(self.body_bytes)
        start = time.perf_counter()
        try:
            seq = client.send(conv, body)
        except (OSError, LoadClientError) as exc:
            self.record("send->ack", (time.perf_counter() - start) * 1000.0, len(body), exc)
            return None
        self.record("send->ack", (time.perf_counter() - start) * 1000.0, len(body))
        return seq

    def start_or_stop(self, setup: Callable[[], None]) -> None:
        """Runs ``setup``; a failure there is recorded (by :meth:`open`) and stops this user."""
        try:
            setup()
        except (OSError, LoadClientError) as exc:
            self.on_stop()
            raise StopUser(str(exc)) from exc

    def on_stop(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


class DirectChatUser(BlueWrenUser):
    """1:1 chat: each Locust user is a pair of users (two connections) in one direct
    conversation, taking turns to send; the other one records ``send->deliver``."""

    scenario = "direct"
    _ids = itertools.count()

    def on_start(self) -> None:
        n = next(self._ids)
        a, b = f"{run_prefix()}-d{n}a", f"{run_prefix()}-d{n}b"

        def setup() -> None:
            self.a = self.open(a)
            self.b = self.open(b)
            self.conv = self.a.create_direct(b)

        self.start_or_stop(setup)
        self.turn = 0

    @task
    def chat(self) -> None:
        self.turn ^= 1
        self.timed_send(self.a if self.turn else self.b, self.conv)


class GroupChatUser(BlueWrenUser):
    """Group chat with fan-out ``group_size``: a group's members are spread over
    ``ceil(group_size / members_per_user)`` Locust users, each holding
    ``--bluewren-members-per-user`` member connections and sending from its first.
    Every member connection records ``send->deliver``. With fewer Locust users than a
    group needs, the rest of its members are offline (stored for, not delivered to)."""

    abstract = True
    group_size: ClassVar[int] = 100
    _ids: ClassVar[itertools.count[int]]
    _groups: ClassVar[dict[int, int]]
    _lock: ClassVar[threading.Lock]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._ids = itertools.count()
        cls._groups = {}
        cls._lock = threading.Lock()

    def on_start(self) -> None:
        per_user = max(1, int(getattr(self._options, "bluewren_members_per_user", 10)))
        per_user = min(per_user, self.group_size)
        users_per_group = -(-self.group_size // per_user)
        n = next(self._ids)
        index = n // users_per_group
        first = (n % users_per_group) * per_user
        names = [f"{run_prefix()}-{self.scenario}-g{index}-m{j}" for j in range(self.group_size)]
        mine = names[first : first + per_user]

        def setup() -> None:
            self.members = [self.open(name) for name in mine]
            with self._lock:  # the first user of a group creates it
                conv = self._groups.get(index)
                if conv is None:
                    owner = self.members[0]
                    others = [m for m in names if m != owner.user]
                    conv = owner.create_group(f"load {index}", others)
                    self._groups[index] = conv
            self.conv = conv

        self.start_or_stop(setup)

    @task
    def post(self) -> None:
        self.timed_send(self.members[0], self.conv)


class Group100User(GroupChatUser):
    """Group chat, fan-out 100 (full fan-out from ``-u 10`` with 10 members per user)."""

    scenario = "group100"
    group_size = 100


class Group1000User(GroupChatUser):
    """Group chat, fan-out 1,000 (full fan-out from ``-u 100`` with 10 members per user)."""

    scenario = "group1000"
    group_size = 1000


class ReconnectStormUser(BlueWrenUser):
    """Reconnect storm with resume. Each Locust user is a writer and a reader in one
    direct conversation. A task: the writer sends 3 messages live; the reader's TCP
    connection is dropped (RST, no close handshake); the writer sends 3 more; the reader
    reconnects and SYNCs from its cursor; the writer sends 3 more live. The reader must
    then hold every seq exactly once and in order: ``resume`` times reconnect until the
    last one arrived (failure if any is missing), ``resume-order`` records every gap or
    duplicate as a failure."""

    scenario = "storm"
    batch = 3
    _ids = itertools.count()

    def on_start(self) -> None:
        n = next(self._ids)
        self.writer_id, self.reader_id = f"{run_prefix()}-s{n}w", f"{run_prefix()}-s{n}r"
        self.last_seen: int | None = None
        self.arrived = threading.Event()
        self.expect_up_to = 0

        def setup() -> None:
            self.writer = self.open(self.writer_id)
            self.reader = self.open(self.reader_id, on_deliver=self.check_order, keep=False)
            self.conv = self.writer.create_direct(self.reader_id)

        self.start_or_stop(setup)

    def check_order(self, d: Delivery) -> None:
        if d.conv != getattr(self, "conv", d.conv):
            return
        last = self.last_seen
        if last is not None and d.seq != last + 1:
            what = "duplicate" if d.seq <= last else f"gap of {d.seq - last - 1}"
            self.record("resume-order", 0.0, 0, LoadClientError(f"{what} at seq {d.seq}"))
        if last is None or d.seq > last:
            self.last_seen = d.seq
        if self.last_seen is not None and self.last_seen >= self.expect_up_to:
            self.arrived.set()
        sent = stamped_at(d.body)
        if sent is not None:
            self.record("send->deliver", (time.time() - sent) * 1000.0, len(d.body))

    def _send_batch(self) -> bool:
        for _ in range(self.batch):
            seq = self.timed_send(self.writer, self.conv)
            if seq is None:
                return False
            self.expect_up_to = max(self.expect_up_to, seq)
        return True

    @task
    def storm(self) -> None:
        if not self._send_batch():
            return
        cursors = dict(self.reader.cursors)
        self.reader.abort()
        if not self._send_batch():
            return
        start = time.perf_counter()
        try:
            self.reader = self.open(
                self.reader_id, on_deliver=self.check_order, cursors=cursors, keep=False
            )
        except (OSError, LoadClientError):
            raise StopUser("the reader could not reconnect") from None
        if not self._send_batch():
            return
        self.arrived.clear()
        if self.last_seen is not None and self.last_seen >= self.expect_up_to:
            self.arrived.set()
        ok = self.arrived.wait(self.reader.timeout)
        elapsed = (time.perf_counter() - start) * 1000.0
        if ok:
            self.record("resume", elapsed)
        else:
            missing = LoadClientError(
                f"reader has seq {self.last_seen}, writer got ACK up to {self.expect_up_to}"
            )
            self.record("resume", elapsed, 0, missing)

    def on_stop(self) -> None:
        super().on_stop()
        if getattr(self, "reader", None) is not None:
            self.reader.close()


class PresenceChurnUser(BlueWrenUser):
    """Presence churn: each Locust user is one user who connects (``connect``), asks the
    presence of its neighbours (``presence``) and disconnects, in a loop; every other
    disconnect is abrupt (RST)."""

    scenario = "presence"
    _ids = itertools.count()

    def on_start(self) -> None:
        self.n = next(self._ids)
        self.cycle = 0

    @task
    def churn(self) -> None:
        self.cycle += 1
        try:
            client = self.open(f"{run_prefix()}-p{self.n}", keep=False)
        except (OSError, LoadClientError):
            return
        peers = [f"{run_prefix()}-p{max(0, self.n + k)}" for k in (-2, -1, 1, 2)]
        start = time.perf_counter()
        try:
            client.presence(peers)
            self.record("presence", (time.perf_counter() - start) * 1000.0)
        except (OSError, LoadClientError) as exc:
            self.record("presence", (time.perf_counter() - start) * 1000.0, 0, exc)
        if self.cycle % 2:
            client.abort()
        else:
            client.close()


events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
