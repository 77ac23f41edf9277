"""The durable store: conversations, messages, delivery cursors, read marks.

:class:`Store` is the interface the node writes through; :class:`SQLiteStore` is the
embedded implementation (one SQLite file, WAL, group commit) a single node runs on::

    from bluewren.store import SQLiteStore

    async with SQLiteStore("bluewren.db") as store:
        chat = await store.create_direct("alice", "bob")
        result = await store.append(chat.id, "alice", "phone", cmid=1, body=b"hi")
        # result.message.seq == 1; the message is committed: safe to acknowledge

Errors are :class:`~bluewren.errors.StoreError` subclasses; the retryable ones are
:class:`~bluewren.errors.StoreUnavailableError`.
"""

from bluewren.store.base import (
    CMID_MAX,
    DEFAULT_KIND,
    ERASED_KIND,
    ROLES,
    AppendResult,
    Conversation,
    ConversationKind,
    ErasureResult,
    Member,
    NewMessage,
    Role,
    Store,
    StoredMessage,
    StoreStats,
)
from bluewren.store.migrations import MIGRATIONS, Migration, apply_migrations, schema_version
from bluewren.store.sqlite import SQLiteStore

__all__ = [
    "CMID_MAX",
    "DEFAULT_KIND",
    "ERASED_KIND",
    "MIGRATIONS",
    "ROLES",
    "AppendResult",
    "Conversation",
    "ConversationKind",
    "ErasureResult",
    "Member",
    "Migration",
    "NewMessage",
    "Role",
    "SQLiteStore",
    "Store",
    "StoreStats",
    "StoredMessage",
    "apply_migrations",
    "schema_version",
]
