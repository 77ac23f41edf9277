"""The durable store's interface and the values it hands out.

A :class:`Store` keeps everything a node must not lose: conversations and their members,
every message with its per-conversation sequence number, each device's delivery cursor
and each member's read mark. :class:`~bluewren.store.sqlite.SQLiteStore` implements it
on an embedded SQLite file; a PostgreSQL store implements the same interface for a
cluster. The contract every implementation keeps:

* **Sequence numbers.** ``append`` gives a message the next sequence number of its
  conversation: 1, 2, 3, ... without gaps, assigned inside the transaction that stores
  it. The store refuses a second message with an existing (conversation, seq) pair; that
  uniqueness fences a node that still writes after ownership of the conversation moved
  (:class:`~bluewren.errors.SequenceConflictError`).
* **Idempotent sends.** A message carries its sender's client message id (``cmid``, an
  unsigned 64-bit integer; 0 means "none" and disables deduplication). Appending again
  with the same (conversation, sender, cmid) writes nothing and returns the original
  message with ``duplicate=True``.
* **Durable acknowledgement.** The awaitable of a write completes only after the
  transaction holding it has committed, so a node that acks a send after ``append``
  returns acks only stored messages. (:meth:`SQLiteStore.append_each_nowait
  <bluewren.store.sqlite.SQLiteStore.append_each_nowait>` may answer once its message
  log holds a message, which the store replays into the database if it stops before
  indexing it; every read started after the answer sees the message.)
* **Monotonic marks.** Device cursors and read marks never move backwards; an older
  value is ignored.
* **Erasure keeps sequences.** ``erase_user`` empties the bodies of the user's messages
  but keeps them as tombstones (``kind == ERASED_KIND``), so every conversation's
  sequence stays gap-free for everyone else.

The store enforces integrity, not policy: whether a user may post to, rename or manage a
conversation is the node's decision, made before it calls the store.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar, cast

from bluewren.errors import StoreArgumentError

__all__ = [
    "CMID_MAX",
    "DEFAULT_KIND",
    "ERASED_KIND",
    "ROLES",
    "AppendResult",
    "Conversation",
    "ConversationKind",
    "ErasureResult",
    "Member",
    "NewMessage",
    "Role",
    "Store",
    "StoreStats",
    "StoredMessage",
]

ConversationKind = Literal["direct", "group"]
"""A conversation is between exactly two users (``direct``) or has managed members."""

Role = Literal["owner", "admin", "member"]
"""A member's role in a group; members of a direct conversation are all ``member``."""

ROLES: Final[frozenset[str]] = frozenset({"owner", "admin", "member"})
"""Every valid :data:`Role`."""

DEFAULT_KIND: Final = "text"
"""The message kind ``append`` uses when none is given."""

ERASED_KIND: Final = "erased"
"""The kind of a tombstone left by ``erase_user``; reserved, ``append`` refuses it."""

CMID_MAX: Final = (1 << 64) - 1
"""The largest client message id (they are unsigned 64-bit, as in the frame header)."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored: its place in the conversation and what was sent.

    ``cmid`` is 0 when the message had no client message id. ``created_at`` is the
    commit time in seconds since the epoch. A tombstone has ``kind == ERASED_KIND``,
    an empty body and an empty device.
    """

    conv: int
    seq: int
    sender: str
    device: str
    cmid: int
    body: bytes
    kind: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation: ``direct`` between two users, or a ``group`` with a title."""

    id: int
    kind: ConversationKind
    title: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Member:
    """A user's membership of a conversation.

    ``joined_seq`` is the conversation's last sequence number when the user joined: the
    messages they were there for start at ``joined_seq + 1``.
    """

    conv: int
    user: str
    role: Role
    joined_seq: int


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The outcome of one append.

    ``duplicate`` is True when a message with the same (conversation, sender, cmid) was
    already stored: ``message`` is then that original message and nothing was written.
    """

    message: StoredMessage
    duplicate: bool


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message waiting to be appended (the items of ``append_many``)."""

    conv: int
    sender: str
    device: str
    cmid: int
    body: bytes
    kind: str = DEFAULT_KIND

    def validated(self) -> NewMessage:
        """Returns ``self`` after checking every field, or raises StoreArgumentError."""
        conv, cmid = self.conv, self.cmid
        if (
            type(conv) is int
            and 0 < conv < _ID_LIMIT
            and type(cmid) is int
            and 0 <= cmid <= CMID_MAX
            and type(self.sender) is str
            and self.sender
            and type(self.device) is str
            and type(self.body) is bytes
            and self.kind == DEFAULT_KIND
        ):  # every append's case, in one test: exact types and the default kind
            return self
        check_id("conv", self.conv)
        check_user("sender", self.sender)
        if not isinstance(self.device, str):
            raise StoreArgumentError("device", f"device must be a str, got {self.device!r:.60}")
        if not isinstance(self.cmid, int) or not 0 <= self.cmid <= CMID_MAX:
            raise StoreArgumentError(
                "cmid",
                f"cmid must be an unsigned 64-bit integer (0 for none), got {self.cmid!r:.60}",
            )
        if not isinstance(self.body, bytes):
            raise StoreArgumentError(
                "body", f"body must be bytes, got {type(self.body).__name__}: pass bytes(body)"
            )
        if not isinstance(self.kind, str) or not self.kind:
            raise StoreArgumentError("kind", f"kind must be a non-empty str, got {self.kind!r}")
        if self.kind == ERASED_KIND:
            raise StoreArgumentError(
                "kind", f"kind {ERASED_KIND!r} is reserved for erased messages: use another"
            )
        return self


_D = TypeVar("_D")


def positional_constructor(cls: type[_D]) -> Callable[..., _D]:
    """A constructor of the frozen, slotted dataclass ``cls`` that takes every field by
    position and makes the object ``cls(*values)`` makes, for hot paths.

    A frozen dataclass's ``__init__`` goes through ``object.__setattr__`` once per field
    (the class's own ``__setattr__`` refuses); this stores through each slot's
    descriptor instead, about twice as fast (benchmarks/results/node.md). There are no
    defaults and no ``__post_init__``: callers pass every field."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    setters = {f"_set{i}": getattr(cls, name).__set__ for i, name in enumerate(names)}
    stores = "".join(f"\n    _set{i}(obj, {name})" for i, name in enumerate(names))
    source = (
        f"def make({', '.join(names)}, *, _new=_new, _cls=_cls, "
        f"{', '.join(f'{key}={key}' for key in setters)}):\n"
        f"    obj = _new(_cls){stores}\n    return obj\n"
    )
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    exec(source, namespace)  # the same technique dataclasses uses for __init__
    make = namespace["make"]
    make.__qualname__ = f"{cls.__qualname__}.<positional>"
    return cast(Callable[..., _D], make)


new_stored_message: Final = cast(
    Callable[[int, int, str, str, int, bytes, str, float], StoredMessage],
    positional_constructor(StoredMessage),
)
"""``StoredMessage(conv, seq, sender, device, cmid, body, kind, created_at)``, faster."""

new_append_result: Final = cast(
    Callable[[StoredMessage, bool], AppendResult], positional_constructor(AppendResult)
)
"""``AppendResult(message, duplicate)``, faster."""

new_message: Final = cast(
    Callable[[int, str, str, int, bytes, str], NewMessage], positional_constructor(NewMessage)
)
"""``NewMessage(conv, sender, device, cmid, body, kind)``, faster (not validated)."""


@dataclass(frozen=True, slots=True)
class ErasureResult:
    """What ``erase_user`` changed: rows emptied (messages) or deleted (the rest)."""

    messages: int
    memberships: int
    cursors: int
    read_marks: int


@dataclass(slots=True)
class StoreStats:
    """Counters a store keeps about its own work (for metrics and tests).

    ``commits`` counts committed write transactions; with group commit it grows far
    slower than ``appended``. ``last_batch_started`` / ``last_batch_finished`` are
    ``time.monotonic()`` readings around the last write transaction (0.0 before any).
    ``checkpoints`` counts write-ahead log checkpoints the store ran itself.
    """

    commits: int = 0
    rollbacks: int = 0
    appended: int = 0
    duplicates: int = 0
    largest_batch: int = 0
    last_batch_started: float = 0.0
    last_batch_finished: float = 0.0
    checkpoints: int = 0


_ID_LIMIT: Final = 1 << 63
"""Ids (and sequence numbers) are below this: SQLite's signed 64-bit integers."""


def check_id(field: str, value: int) -> int:
    """Returns ``value`` if it is a positive id (conversation ids start at 1)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < _ID_LIMIT:
        raise StoreArgumentError(field, f"{field} must be a positive integer id, got {value!r}")
    return value


def check_seq(field: str, value: int) -> int:
    """Returns ``value`` if it is a sequence number or 0 (none yet)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _ID_LIMIT:
        raise StoreArgumentError(
            field, f"{field} must be a sequence number (an integer >= 0), got {value!r}"
        )
    return value


def check_limit(value: int) -> int:
    """Returns ``value`` if it is a usable page size."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise StoreArgumentError("limit", f"limit must be an integer >= 1, got {value!r}")
    return value


def check_user(field: str, value: str) -> str:
    """Returns ``value`` if it is a usable user id (a non-empty str)."""
    if not isinstance(value, str) or not value:
        raise StoreArgumentError(field, f"{field} must be a non-empty user id str, got {value!r}")
    return value


def check_role(value: str) -> Role:
    """Returns ``value`` as a :data:`Role`, or raises StoreArgumentError."""
    if value in ROLES:
        return cast(Role, value)
    raise StoreArgumentError(
        "role", f"role must be one of 'owner', 'admin', 'member', got {value!r}"
    )


class Store(abc.ABC):
    """The durable store: conversations, messages, cursors, read marks.

    Every method is a coroutine and every write is durable (committed) when it returns.
    Call ``open()`` before anything else and ``close()`` at the end, or use the store as
    an async context manager. Ids of users and devices are strings; ids of conversations,
    sequence numbers and client message ids are integers.
    """

    stats: StoreStats

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- life cycle -------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connects, brings the schema up to date and starts serving calls."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finishes the writes already submitted, then releases every resource.

        Calls made after ``close()`` began raise :class:`~bluewren.errors.StoreClosedError`.
        """

    # -- messages ---------------------------------------------------------------------

    @abc.abstractmethod
    async def append(
        self,
        conv: int,
        sender: str,
        device: str,
        cmid: int,
        body: bytes,
        kind: str = DEFAULT_KIND,
    ) -> AppendResult:
        """Stores a message under the conversation's next sequence number.

        Returns once the message is committed. A retry with the same (conv, sender,
        cmid) returns the original message with ``duplicate=True`` and writes nothing.
        Raises ConversationNotFoundError for an unknown ``conv``.
        """

    @abc.abstractmethod
    async def append_many(self, messages: Sequence[NewMessage]) -> list[AppendResult]:
        """Appends several messages in one transaction: all are stored, or none.

        Results come in the order of ``messages``; duplicates (of stored messages or of
        an earlier item of the same call) are reported as in ``append``.
        """

    @abc.abstractmethod
    async def history(self, conv: int, after_seq: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` messages with ``seq > after_seq``, oldest first."""

    @abc.abstractmethod
    async def history_before(self, conv: int, before_seq: int, limit: int) -> list[StoredMessage]:
        """The ``limit`` newest messages with ``seq < before_seq``, returned oldest first."""

    @abc.abstractmethod
    async def last_seq(self, conv: int) -> int:
        """The conversation's newest sequence number (0 while it has no message)."""

    # -- conversations ----------------------------------------------------------------

    @abc.abstractmethod
    async def conversation(self, conv: int) -> Conversation:
        """The conversation ``conv``; raises ConversationNotFoundError if there is none."""

    @abc.abstractmethod
    async def create_direct(self, user_a: str, user_b: str) -> Conversation:
        """The direct conversation of two users, created on first use.

        Idempotent: the same pair, in either order, always gets the same conversation.
        """

    @abc.abstractmethod
    async def create_group(self, owner: str, title: str, members: Iterable[str]) -> Conversation:
        """Creates a group with ``owner`` as its owner and ``members`` as members."""

    @abc.abstractmethod
    async def rename(self, conv: int, title: str) -> Conversation:
        """Sets a group's title."""

    @abc.abstractmethod
    async def add_members(
        self, conv: int, users: Iterable[str], role: Role = "member"
    ) -> list[Member]:
        """Adds users to a group; returns the memberships created.

        Users who are members already keep their role and are left out of the result.
        """

    @abc.abstractmethod
    async def remove_member(self, conv: int, user: str) -> None:
        """Removes a user from a group; raises NotAMemberError if they are not in it."""

    @abc.abstractmethod
    async def set_role(self, conv: int, user: str, role: Role) -> Member:
        """Changes a group member's role; returns the updated membership."""

    @abc.abstractmethod
    async def members(self, conv: int) -> list[Member]:
        """The conversation's members, ordered by user id."""

    @abc.abstractmethod
    async def conversations_of(self, user: str) -> list[int]:
        """The ids of the conversations ``user`` is a member of, ascending."""

    @abc.abstractmethod
    async def count_groups_of(self, user: str) -> int:
        """How many group conversations ``user`` is a member of."""

    # -- cursors and read marks -------------------------------------------------------

    @abc.abstractmethod
    async def set_cursor(self, user: str, device: str, conv: int, seq: int) -> int:
        """Moves a device's delivery cursor forward; returns the cursor now stored.

        A ``seq`` below the stored cursor is ignored (cursors never move back); a ``seq``
        past the conversation's last message raises StoreArgumentError.
        """

    @abc.abstractmethod
    async def cursors(self, user: str, device: str) -> dict[int, int]:
        """The device's cursors: conversation id -> last delivered sequence number."""

    @abc.abstractmethod
    async def mark_read(self, conv: int, user: str, seq: int) -> int:
        """Moves a user's read mark forward; returns the mark now stored (monotonic)."""

    @abc.abstractmethod
    async def read_seq(self, conv: int, user: str) -> int:
        """The user's read mark in the conversation (0 if they have read nothing)."""

    # -- users' data ------------------------------------------------------------------

    @abc.abstractmethod
    async def export_user(self, user: str) -> dict[str, Any]:
        """Everything stored about ``user``, as JSON-ready values (bodies in base64)."""

    async def disabled_users(self) -> dict[str, str]:
        """The disabled users (their tokens are refused at HELLO), each with the reason
        given. A store without the notion has none: this default returns ``{}``."""
        return {}

    async def set_user_disabled(self, user: str, disabled: bool, reason: str = "") -> bool:
        """Disables ``user`` (with ``reason``) or enables them again; True when that
        changed anything. The default raises NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} cannot disable users")

    @abc.abstractmethod
    async def erase_user(self, user: str) -> ErasureResult:
        """Erases a user's data; returns how many rows it changed.

        Their memberships, cursors and read marks are deleted, and their messages become
        tombstones (empty body and device, ``kind == ERASED_KIND``) that keep their
        sender, client message id and place, so sequence numbers stay gap-free and a late
        retry of an erased send is still recognised as a duplicate.
        """
