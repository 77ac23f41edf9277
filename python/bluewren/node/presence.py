"""Presence (online, offline, last seen) and typing indicators.

A user is *online* while at least one of their devices has an authenticated connection to
this node. When the first device says HELLO, and when the last one disconnects, every
user who shares a conversation with them and is online gets a PRESENCE event. ``last_seen``
is the time (seconds since the epoch) the user's last device disconnected, kept in
memory by the node since it started (None: not seen since then, or online now).

TYPING is relayed to the other members of the conversation who are online, and never
stored; its rate per connection is limited (``max_typing_per_second``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bluewren.node.commands import ErrorCode, Kind
from bluewren.node.limits import limit_exceeded
from bluewren.node.wire import Codec, Command, CommandError

if TYPE_CHECKING:
    from bluewren.node.server import Node
    from bluewren.node.session import Session

__all__ = ["Presence", "presence_query", "typing"]

log = logging.getLogger("bluewren.node")


class Presence:
    """The node's presence book; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._last_seen: dict[str, float] = {}

    def entry(self, user: str) -> dict[str, Any]:
        """The PRESENCE entry of ``user`` as of now."""
        online = bool(self._node.online(user))
        return {
            "user": user,
            "status": "online" if online else "offline",
            "last_seen": None if online else self._last_seen.get(user),
        }

    def came_online(self, user: str) -> None:
        """The user's first device said HELLO."""
        self._last_seen.pop(user, None)
        self._node.spawn(self._announce(user))

    def went_offline(self, user: str) -> None:
        """The user's last device disconnected."""
        self._last_seen[user] = time.time()
        if self._node.serving:  # a stopping node disconnects everyone: nobody to tell
            self._node.spawn(self._announce(user))

    async def _announce(self, user: str) -> None:
        node = self._node
        try:
            peers = await node.peers_of(user)
        except Exception as exc:  # e.g. the store closed while the node stops
            log.debug("presence of %r not announced: %s", user, exc)
            return
        # The entry is read when sent: of an online/offline pair racing, both announce
        # the state the user is in by then, never a stale one.
        obj = {"users": [self.entry(user)]}
        emit_once((s for peer in peers for s in node.online(peer)), Kind.PRESENCE, obj=obj)


async def presence_query(node: Node, session: Session, cmd: Command) -> None:
    """PRESENCE: the presence of each user asked for, answered with the query's cmid."""
    users = cmd.json_args().get("users")
    if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
        raise CommandError(ErrorCode.BAD_REQUEST, "'users' must be a list of user id strings")
    limit = node.config.max_presence_query
    if len(users) > limit:
        raise limit_exceeded(
            "max_presence_query", limit, f"a PRESENCE query may name {limit} users at most"
        )
    obj = {"users": [node.presence.entry(u) for u in dict.fromkeys(users)]}
    session.emit(Kind.PRESENCE, cmid=cmd.cmid, obj=obj)


async def typing(node: Node, session: Session, cmd: Command) -> None:
    """TYPING: tells the other online members of ``conv`` that this user is typing."""
    assert session.identity is not None
    user = session.identity.user
    members = await node.members_of_checked(cmd.conv, user)
    obj = {"user": user, "device": session.identity.device}
    emit_once(online_members(node, members, exclude=user), Kind.TYPING, conv=cmd.conv, obj=obj)


def emit_once(
    sessions: Iterable[Session], kind: Kind, *, conv: int = 0, obj: dict[str, Any]
) -> None:
    """Queues one event for many sessions, encoded once per subprotocol rather than
    once per session: a user of a 1,000-member group coming online costs two
    encodings, not a thousand."""
    encoded: dict[type[Codec], bytes] = {}
    for session in sessions:
        codec = type(session.codec)
        payload = encoded.get(codec)
        if payload is None:
            payload = encoded[codec] = session.codec.event(kind, conv=conv, obj=obj)
        session.emit_payloads([payload])


def online_members(node: Node, members: Iterable[str], exclude: str = "") -> list[Session]:
    """The authenticated sessions of ``members`` except ``exclude``'s.

    Walks whichever is smaller, the members or the users online, so a 10,000-member group
    with a few users online costs a few lookups."""
    online_users = node.online_users()
    sized = members if isinstance(members, dict | set | frozenset) else set(members)
    if len(online_users) < len(sized):
        users: Iterable[str] = (u for u in online_users if u in sized)
    else:
        users = sized
    return [s for u in users if u != exclude for s in node.online(u)]
