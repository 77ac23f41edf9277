"""Disabled users: refused at HELLO, and closed while connected.

The store keeps the list (``Store.disabled_users``; ``bluewren users disable`` and
``enable`` write it, also while the node runs). The node holds a copy in memory, so the
HELLO check costs a set lookup, and reads it again every
``NodeConfig.disabled_refresh_interval`` seconds: a user disabled from the command line
is refused, and their live connections closed with ``CloseCode.UNAUTHORIZED`` (4001,
reason "user disabled"), within that time. The admin API
(``POST /admin/users/{user}/disable``) applies at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from bluewren.errors import StoreError
from bluewren.node.commands import CloseCode

if TYPE_CHECKING:
    from bluewren.node.server import Node

__all__ = ["DISABLED_REASON", "DisabledUsers"]

DISABLED_REASON: Final = "user disabled"
"""Close reason sent with 4001 to the connections of a user being disabled."""

log = logging.getLogger("bluewren.node.users")


class DisabledUsers:
    """The node's view of the disabled users (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._users: set[str] = set()
        self._changes = 0
        """Counts :meth:`set` calls: a read of the store that one overtook is stale."""
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, user: object) -> bool:
        return user in self._users

    async def start(self) -> None:
        """Reads the list once, then keeps reading it in the background."""
        await self.refresh()
        self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        """Stops the background reading."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self) -> None:
        """Reads the list from the store and closes the connections of users newly on
        it. A store error keeps the old list; so does a :meth:`set` during the read (its
        change would be undone by what was read before it: the next refresh catches up)."""
        changes = self._changes
        try:
            users = (await self._node.store.disabled_users()).keys()
        except StoreError as exc:
            log.warning("cannot read the disabled users, keeping the last list: %s", exc)
            return
        if changes != self._changes:
            return
        added = users - self._users
        self._users = set(users)
        for user in added:
            self.close_connections(user)

    def close_connections(self, user: str) -> int:
        """Closes every connection of ``user`` with 4001; returns how many."""
        sessions = self._node.online(user)
        for session in sessions:
            session.shut(CloseCode.UNAUTHORIZED, DISABLED_REASON)
        if sessions:
            log.warning("user disabled: %d connections closed", len(sessions))
        return len(sessions)

    async def set(self, user: str, disabled: bool, reason: str = "") -> tuple[bool, int]:
        """Disables or enables ``user`` in the store and at once here; (changed, how many
        connections were closed)."""
        changed = await self._node.store.set_user_disabled(user, disabled, reason)
        self._changes += 1
        if disabled:
            self._users.add(user)
            return changed, self.close_connections(user)
        self._users.discard(user)
        return changed, 0

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._node.config.disabled_refresh_interval)
            try:
                await self.refresh()
            except Exception:  # never let the watcher die
                log.exception("reading the disabled users failed")
