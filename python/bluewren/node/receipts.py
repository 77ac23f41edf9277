"""Read and delivery receipts.

Both are *marks*: one sequence number per (conversation, user) that only moves forward,
meaning "everything up to here". A client compares the mark with the ``seq`` of its own
messages to show them read or delivered; no receipt names single messages.

* **read**: RECEIPT (``conv``, ``seq``) from any device of the user moves the user's read
  mark (``store.mark_read``). The device that asked gets RECEIPT with its ``cmid`` and the
  stored mark (which may be above ``seq`` if another device read further).
* **delivered**: CURSOR (``conv``, ``seq``) from a device moves that device's cursor; the
  user's delivered mark is the highest cursor of any of their devices.

When a mark moves forward, RECEIPT (``cmid`` 0, ``{user, type}``, ``type`` ``"read"`` or
``"delivered"``) goes to every online session of the conversation's members (for
``"read"``, also the user's other devices, so they can clear their unread badge; for
``"delivered"``, not the user's own). Conversations with more than
``receipts_max_members`` members get no receipts pushed: in a large group they would cost
every member a stream of events, and their marks are still stored.

What has been announced is kept in memory per (conversation, user, type), so a repeated or
older mark is not pushed twice; after a restart the first mark that moves is announced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bluewren.errors import StoreArgumentError
from bluewren.node.commands import ErrorCode, Kind
from bluewren.node.presence import online_members
from bluewren.node.wire import Command, CommandError

if TYPE_CHECKING:
    from bluewren.node.server import Node
    from bluewren.node.session import Session

__all__ = ["Receipts", "read_receipt"]


class Receipts:
    """The marks a node has announced; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._announced: dict[tuple[int, str, str], int] = {}

    async def moved(
        self, conv: int, user: str, kind: str, mark: int, origin: Session | None
    ) -> None:
        """``user``'s ``kind`` mark of ``conv`` is now ``mark``: push it if it moved."""
        key = (conv, user, kind)
        if mark <= self._announced.get(key, 0):
            return
        self._announced[key] = mark
        node = self._node
        members = await node.members_of(conv)
        if len(members) > node.config.receipts_max_members:
            return
        obj = {"user": user, "type": kind}
        exclude = user if kind == "delivered" else ""
        for session in online_members(node, members, exclude=exclude):
            if session is not origin:
                session.emit(Kind.RECEIPT, conv=conv, seq=mark, obj=obj)


async def read_receipt(node: Node, session: Session, cmd: Command) -> None:
    """RECEIPT: the user has read ``conv`` up to ``seq``."""
    assert session.identity is not None
    user = session.identity.user
    await node.members_of_checked(cmd.conv, user)
    try:
        mark = await node.store.mark_read(cmd.conv, user, cmd.seq)
    except StoreArgumentError as exc:
        raise CommandError(ErrorCode.BAD_REQUEST, str(exc)) from None
    session.emit(
        Kind.RECEIPT, conv=cmd.conv, seq=mark, cmid=cmd.cmid, obj={"user": user, "type": "read"}
    )
    await node.receipts.moved(cmd.conv, user, "read", mark, session)
