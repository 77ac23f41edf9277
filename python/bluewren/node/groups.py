"""Group management: create, add, remove, leave, rename and roles, with their rules.

Roles are ``owner``, ``admin`` and ``member``; a group may have several owners.

* Only owners and admins manage a group: ADD_MEMBERS, REMOVE_MEMBER (of someone else),
  RENAME and SET_ROLE; anyone else gets ``FORBIDDEN``.
* An admin cannot remove an owner, change an owner's role, or make anyone an owner.
* An owner can do all of that, including demoting or removing another owner.
* The last owner cannot leave, be removed or step down while other members remain: they
  first make someone else owner with SET_ROLE (``FORBIDDEN`` says so). A last owner who
  is the only member may leave; the group is then empty.
* ``max_group_members`` bounds the members of a group and ``max_groups_per_user`` the
  groups of a user, at CREATE_GROUP and ADD_MEMBERS (``LIMIT_EXCEEDED``; nothing
  changes). Direct conversations cannot be renamed, left or given roles
  (``BAD_REQUEST``).

Every change is answered with CONVERSATION (``cmid`` of the request) and pushed to the
other members online (and to a removed user).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bluewren.node.commands import ErrorCode
from bluewren.node.limits import limit_exceeded
from bluewren.node.wire import Command, CommandError
from bluewren.store import Member
from bluewren.store.base import check_role

if TYPE_CHECKING:
    from bluewren.node.server import Node
    from bluewren.node.session import Session

__all__ = ["add_members", "create_group", "leave", "remove_member", "rename", "set_role"]

_MANAGERS = ("owner", "admin")


def _user_arg(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise CommandError(ErrorCode.BAD_REQUEST, f"{key!r} must be a user id string")
    return value


def _users_arg(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key, [])
    if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
        raise CommandError(ErrorCode.BAD_REQUEST, f"{key!r} must be a list of user id strings")
    return list(dict.fromkeys(value))


async def _check_group_counts(node: Node, users: list[str]) -> None:
    cap = node.config.max_groups_per_user
    for user in users:
        if await node.store.count_groups_of(user) >= cap:
            raise limit_exceeded("max_groups_per_user", cap, f"{user!r} is already in {cap} groups")


async def _manager(node: Node, conv: int, user: str, what: str) -> Member:
    member = await node.require_member(conv, user)
    await _require_group(node, conv)
    if member.role not in _MANAGERS:
        raise CommandError(
            ErrorCode.FORBIDDEN, f"only owners and admins may {what} in conversation {conv}"
        )
    return member


async def _require_group(node: Node, conv: int) -> None:
    if (await node.store.conversation(conv)).kind != "group":
        raise CommandError(
            ErrorCode.BAD_REQUEST, f"conversation {conv} is a direct conversation, not a group"
        )


def _last_owner(members: dict[str, Member], user: str) -> bool:
    owners = [m for m in members.values() if m.role == "owner"]
    return len(owners) == 1 and owners[0].user == user and len(members) > 1


async def create_group(node: Node, session: Session, cmd: Command) -> None:
    """CREATE_GROUP: the caller owns a new group of ``members``."""
    assert session.identity is not None
    owner = session.identity.user
    args = cmd.json_args()
    title = args.get("title", "")
    if not isinstance(title, str):
        raise CommandError(ErrorCode.BAD_REQUEST, "'title' must be a string")
    users = [u for u in _users_arg(args, "members") if u != owner]
    cap = node.config.max_group_members
    if len(users) + 1 > cap:
        raise limit_exceeded(
            "max_group_members", cap, f"a group of {len(users) + 1} members is too large"
        )
    await _check_group_counts(node, [owner, *users])
    conv = await node.store.create_group(owner, title, users)
    await node.announce(session, cmd, conv, "created", ())


async def add_members(node: Node, session: Session, cmd: Command) -> None:
    """ADD_MEMBERS: owners and admins add ``users``."""
    assert session.identity is not None
    users = _users_arg(cmd.json_args(), "users")
    await _manager(node, cmd.conv, session.identity.user, "add members")
    members = await node.members_of(cmd.conv)
    new = [u for u in users if u not in members]
    cap = node.config.max_group_members
    if len(members) + len(new) > cap:
        raise limit_exceeded(
            "max_group_members",
            cap,
            f"adding {len(new)} to {len(members)} members would pass the group size limit",
        )
    await _check_group_counts(node, new)
    await node.store.add_members(cmd.conv, new)
    node.invalidate_members(cmd.conv)
    conv = await node.store.conversation(cmd.conv)
    await node.announce(session, cmd, conv, "members_added", ())


async def remove_member(node: Node, session: Session, cmd: Command) -> None:
    """REMOVE_MEMBER: owners and admins remove ``user`` (anyone may remove themselves)."""
    assert session.identity is not None
    caller = session.identity.user
    user = _user_arg(cmd.json_args(), "user")
    if user == caller:
        await _remove(node, session, cmd, user)
        return
    me = await _manager(node, cmd.conv, caller, "remove members")
    target = await node.require_member(cmd.conv, user)
    if target.role == "owner" and me.role != "owner":
        raise CommandError(ErrorCode.FORBIDDEN, "an admin cannot remove an owner")
    await _remove(node, session, cmd, user)


async def leave(node: Node, session: Session, cmd: Command) -> None:
    """LEAVE: the caller leaves (the last owner hands over first)."""
    assert session.identity is not None
    await _remove(node, session, cmd, session.identity.user)


async def _remove(node: Node, session: Session, cmd: Command, user: str) -> None:
    await node.require_member(cmd.conv, user)
    await _require_group(node, cmd.conv)
    if _last_owner(await node.members_of(cmd.conv), user):
        raise CommandError(
            ErrorCode.FORBIDDEN,
            f"{user!r} is the last owner of conversation {cmd.conv}: make another member "
            "owner with SET_ROLE first",
        )
    await node.store.remove_member(cmd.conv, user)
    node.invalidate_members(cmd.conv)
    conv = await node.store.conversation(cmd.conv)
    await node.announce(session, cmd, conv, "member_removed", (user,))


async def rename(node: Node, session: Session, cmd: Command) -> None:
    """RENAME: owners and admins set the group's title."""
    assert session.identity is not None
    title = cmd.json_args().get("title")
    if not isinstance(title, str):
        raise CommandError(ErrorCode.BAD_REQUEST, "'title' must be a string")
    await _manager(node, cmd.conv, session.identity.user, "rename the group")
    conv = await node.store.rename(cmd.conv, title)
    await node.announce(session, cmd, conv, "renamed", ())


async def set_role(node: Node, session: Session, cmd: Command) -> None:
    """SET_ROLE: owners set any role; admins switch non-owners between admin and member."""
    assert session.identity is not None
    args = cmd.json_args()
    user = _user_arg(args, "user")
    role = args.get("role")
    if role not in ("owner", "admin", "member"):
        raise CommandError(
            ErrorCode.BAD_REQUEST, f"'role' must be 'owner', 'admin' or 'member', got {role!r}"
        )
    me = await _manager(node, cmd.conv, session.identity.user, "change roles")
    target = await node.require_member(cmd.conv, user)
    if me.role != "owner" and (target.role == "owner" or role == "owner"):
        raise CommandError(
            ErrorCode.FORBIDDEN, "only an owner may make someone owner or change an owner's role"
        )
    if role != "owner" and _last_owner(await node.members_of(cmd.conv), user):
        raise CommandError(
            ErrorCode.FORBIDDEN,
            f"{user!r} is the last owner of conversation {cmd.conv}: make another member "
            "owner first",
        )
    await node.store.set_role(cmd.conv, user, check_role(role))
    node.invalidate_members(cmd.conv)
    conv = await node.store.conversation(cmd.conv)
    await node.announce(session, cmd, conv, "role_changed", ())
