"""Exception types raised by BlueWren.

Every error the package raises on purpose derives from :class:`BlueWrenError`, so an
embedding application can catch them all in one place. Messages say what went wrong
and, where the caller can do something about it, what to change.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthError",
    "BlueWrenError",
    "BreakerConfigError",
    "CallTimeoutError",
    "CircuitOpenError",
    "ConversationKindError",
    "ConversationNotFoundError",
    "NotAMemberError",
    "SchemaVersionError",
    "SequenceConflictError",
    "StoreArgumentError",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreError",
    "StoreUnavailableError",
]


class BlueWrenError(Exception):
    """Base class of every exception BlueWren raises on purpose."""


class CircuitOpenError(BlueWrenError):
    """A circuit breaker refused a call without making it.

    Raised when the breaker is open, forced open, or half-open with all of its trial
    permits taken. ``retry_after`` is a hint in seconds (always positive) for when a
    retry may be permitted; ``name`` is the breaker's name and ``state`` its state.
    """

    name: str
    retry_after: float
    state: str

    def __init__(self, name: str, retry_after: float, state: str) -> None:
        self.name = name
        self.retry_after = retry_after
        self.state = state
        super().__init__(
            f"circuit breaker {name!r} is {state}: call not permitted, "
            f"retry after {retry_after:.3f}s"
        )

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float, str]]:
        return (type(self), (self.name, self.retry_after, self.state))


class CallTimeoutError(BlueWrenError, TimeoutError):
    """A call through a circuit breaker ran past the breaker's timeout.

    The breaker counts the call as a failure. It is also a :class:`TimeoutError`, so
    code that already handles timeouts keeps working.
    """

    name: str
    timeout: float

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        super().__init__(
            f"call through circuit breaker {name!r} timed out after {timeout:g}s and was "
            f"counted as a failure; raise the breaker's timeout if the dependency is "
            f"slow but healthy"
        )

    def __reduce__(self) -> tuple[type[CallTimeoutError], tuple[str, float]]:
        return (type(self), (self.name, self.timeout))


class BreakerConfigError(BlueWrenError, ValueError):
    """A circuit breaker configuration value is invalid.

    ``field`` names the offending setting (prefixed with its config section when the
    configuration came from a file, e.g. ``breakers.store.minimum_calls``); the message
    says what to change.
    """

    field: str

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)

    def __reduce__(self) -> tuple[type[BreakerConfigError], tuple[str, str]]:
        return (type(self), (self.field, str(self)))


class StoreError(BlueWrenError):
    """Base class of the errors the durable store (:mod:`bluewren.store`) raises.

    ``retryable`` says whether the same call may succeed later without any change by the
    caller; only :class:`StoreUnavailableError` and its subclasses set it.
    """

    retryable: ClassVar[bool] = False


class StoreUnavailableError(StoreError):
    """The store cannot serve the call right now; the call may succeed if retried later.

    Raised when the disk is full, the database stayed locked past the busy timeout, an
    I/O error occurred, or the store is closed. Nothing of the failed call was written
    (a retried append is deduplicated by its client message id, so retrying is safe even
    when the outcome is unknown).
    """

    retryable: ClassVar[bool] = True


class StoreClosedError(StoreUnavailableError):
    """The store was used before ``open()`` or after ``close()``."""

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "the store is not open: await store.open() (or use 'async with store') before "
            "calling it, and stop calling it once close() has begun"
        )


class StoreCorruptError(StoreError):
    """The database file is damaged or is not a BlueWren store; retrying will not help."""


class SchemaVersionError(StoreError):
    """The database file was written by a newer BlueWren with a schema this one does not know.

    ``found`` is the file's schema version, ``known`` the newest this code can apply.
    """

    path: str
    found: int
    known: int

    def __init__(self, path: str, found: int, known: int) -> None:
        self.path = path
        self.found = found
        self.known = known
        super().__init__(
            f"store {path!r} has schema version {found}, but this BlueWren knows versions "
            f"up to {known} only: upgrade BlueWren to a release that knows version {found}, "
            f"or point the store at another file"
        )

    def __reduce__(self) -> tuple[type[SchemaVersionError], tuple[str, int, int]]:
        return (type(self), (self.path, self.found, self.known))


class StoreArgumentError(StoreError, ValueError):
    """An argument of a store call is out of range; ``field`` names it."""

    field: str

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)

    def __reduce__(self) -> tuple[type[StoreArgumentError], tuple[str, str]]:
        return (type(self), (self.field, str(self)))


class ConversationNotFoundError(StoreError, LookupError):
    """No conversation has the id ``conv``."""

    conv: int

    def __init__(self, conv: int) -> None:
        self.conv = conv
        super().__init__(
            f"conversation {conv} does not exist: create it with create_direct() or "
            f"create_group() and use the id they return"
        )

    def __reduce__(self) -> tuple[type[ConversationNotFoundError], tuple[int]]:
        return (type(self), (self.conv,))


class NotAMemberError(StoreError, LookupError):
    """``user`` is not a member of conversation ``conv``."""

    conv: int
    user: str

    def __init__(self, conv: int, user: str) -> None:
        self.conv = conv
        self.user = user
        super().__init__(
            f"user {user!r} is not a member of conversation {conv}: add them with "
            f"add_members() first"
        )

    def __reduce__(self) -> tuple[type[NotAMemberError], tuple[int, str]]:
        return (type(self), (self.conv, self.user))


class ConversationKindError(StoreError, ValueError):
    """The operation needs a group conversation but got a direct one (e.g. renaming it)."""

    conv: int
    kind: str
    operation: str

    def __init__(self, conv: int, kind: str, operation: str) -> None:
        self.conv = conv
        self.kind = kind
        self.operation = operation
        super().__init__(
            f"{operation}() needs a group conversation, but conversation {conv} is {kind}: "
            f"the members, roles and title of a direct conversation are fixed; create a "
            f"group to add people or give it a title"
        )

    def __reduce__(self) -> tuple[type[ConversationKindError], tuple[int, str, str]]:
        return (type(self), (self.conv, self.kind, self.operation))


class SequenceConflictError(StoreError):
    """Sequence number ``seq`` of conversation ``conv`` is already taken.

    The store's uniqueness on (conversation, seq) is the fence against a stale owner: a
    node that still believes it owns the conversation after ownership moved gets this
    error instead of writing a second message with the same number. Reload the
    conversation's owner (and its last seq) before writing again.
    """

    conv: int
    seq: int

    def __init__(self, conv: int, seq: int) -> None:
        self.conv = conv
        self.seq = seq
        super().__init__(
            f"sequence number {seq} of conversation {conv} is already taken: another writer "
            f"owns this conversation now; re-resolve its owner and last seq before writing"
        )

    def __reduce__(self) -> tuple[type[SequenceConflictError], tuple[int, int]]:
        return (type(self), (self.conv, self.seq))


class AuthError(BlueWrenError, PermissionError):
    """A token was refused, or could not be minted; the message says why."""
