"""HISTORY: paging through a conversation's stored messages.

``{"before_seq": n}`` returns the newest messages before ``n``; ``{"after_seq": n}`` the
oldest after ``n``; neither returns the newest messages. Pages are ordered oldest first
and hold at most ``limit`` messages (default and cap: ``max_history_page``); ``more``
says whether another page exists in the direction asked. Like SYNC, HISTORY never shows
a member messages from before they joined.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from bluewren.errors import StoreArgumentError
from bluewren.node.commands import ErrorCode, Kind
from bluewren.node.wire import Command, CommandError
from bluewren.store import StoredMessage

if TYPE_CHECKING:
    from bluewren.node.server import Node
    from bluewren.node.session import Session

__all__ = ["history", "message_json"]

_SEQ_END = (1 << 63) - 1


def message_json(m: StoredMessage) -> dict[str, Any]:
    """One message of a HISTORY page (``body`` if UTF-8 text, else ``body_b64``)."""
    out: dict[str, Any] = {"seq": m.seq, "cmid": m.cmid, "sender": m.sender, "device": m.device}
    try:
        out["body"] = m.body.decode()
    except UnicodeDecodeError:
        out["body_b64"] = base64.b64encode(m.body).decode()
    return out


def _seq_arg(args: dict[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _SEQ_END:
        raise CommandError(ErrorCode.BAD_REQUEST, f"{key!r} must be a sequence number >= 0")
    return value


async def history(node: Node, session: Session, cmd: Command) -> None:
    """HISTORY: one page of ``conv``'s messages, answered with the request's cmid."""
    assert session.identity is not None
    args = cmd.json_args()
    before = _seq_arg(args, "before_seq")
    after = _seq_arg(args, "after_seq")
    if before is not None and after is not None:
        raise CommandError(ErrorCode.BAD_REQUEST, "give 'before_seq' or 'after_seq', not both")
    cap = node.config.max_history_page
    limit = args.get("limit", cap)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise CommandError(ErrorCode.BAD_REQUEST, "'limit' must be an integer >= 1")
    limit = min(limit, cap)
    members = await node.members_of_checked(cmd.conv, session.identity.user)
    floor = members[session.identity.user].joined_seq
    try:
        if after is not None:
            page = await node.store.history(cmd.conv, max(after, floor), limit + 1)
            more = len(page) > limit
            page = page[:limit]
        else:
            page = await node.store.history_before(
                cmd.conv, _SEQ_END if before is None else before, limit + 1
            )
            page = [m for m in page if m.seq > floor]
            more = len(page) > limit
            page = page[-limit:] if more else page
    except StoreArgumentError as exc:
        raise CommandError(ErrorCode.BAD_REQUEST, str(exc)) from None
    obj = {"messages": [message_json(m) for m in page], "more": more}
    session.emit(Kind.HISTORY, conv=cmd.conv, cmid=cmd.cmid, obj=obj)
