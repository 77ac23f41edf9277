"""Embedding hooks: code of the application that embeds a node, run at fixed points.

* ``on_connect(identity, request_headers) -> bool | Awaitable[bool]`` runs after a
  HELLO's token verified; False refuses the connection (``AUTH_FAILED``, close 4001).
* ``on_message(ctx) -> None | Reject | Rewrite`` (or an awaitable of one) runs for each
  SEND after the membership check and before the store: None lets the message through,
  ``Reject(code, message)`` refuses it with that ERROR, ``Rewrite(body)`` stores and
  delivers ``body`` instead.
* ``after_store(message) -> None | Awaitable[None]`` runs once per new message after
  its durable write (not for a deduplicated retry), after the ACK and the fan-out.

A hook never breaks the node: an exception (or a wrong return type) is logged on the
``bluewren.node.hooks`` logger and contained. A failing ``on_connect`` refuses the
connection (fail closed); a failing ``on_message`` refuses that send with ``INTERNAL``;
a failing ``after_store`` changes nothing (the message is stored and delivered).
docs/embedding.md shows them at work.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from bluewren.auth import Identity
from bluewren.node.commands import ErrorCode
from bluewren.node.wire import CommandError
from bluewren.store import StoredMessage

__all__ = [
    "AfterStore",
    "Hooks",
    "MessageContext",
    "OnConnect",
    "OnMessage",
    "Reject",
    "Rewrite",
]

log = logging.getLogger("bluewren.node.hooks")


@dataclass(frozen=True, slots=True)
class Reject:
    """``on_message`` verdict: refuse the send with ERROR ``code`` and ``message``."""

    code: ErrorCode = ErrorCode.FORBIDDEN
    message: str = "refused by the node's message policy"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """``on_message`` verdict: store and deliver ``body`` instead of what was sent."""

    body: bytes


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What ``on_message`` sees of a SEND: who sends what to which conversation."""

    user: str
    device: str
    conv: int
    cmid: int
    body: bytes
    members: int
    """How many members the conversation has."""


Verdict: TypeAlias = Reject | Rewrite | None
OnConnect: TypeAlias = Callable[[Identity, Mapping[str, str]], bool | Awaitable[bool]]
OnMessage: TypeAlias = Callable[[MessageContext], Verdict | Awaitable[Verdict]]
AfterStore: TypeAlias = Callable[[StoredMessage], Awaitable[None] | None]


class Hooks:
    """The hooks of one node (each None when unused); see the module docstring."""

    def __init__(
        self,
        on_connect: OnConnect | None = None,
        on_message: OnMessage | None = None,
        after_store: AfterStore | None = None,
    ) -> None:
        self.on_connect = on_connect
        self.on_message = on_message
        self.after_store = after_store

    async def connect_allowed(self, identity: Identity, headers: Mapping[str, str]) -> bool:
        """``on_connect``'s answer; False if it raised or returned something else."""
        hook = self.on_connect
        if hook is None:
            return True
        try:
            result = hook(identity, headers)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            log.exception("on_connect hook failed for %s/%s", identity.user, identity.device)
            return False
        if not isinstance(result, bool):
            log.error("on_connect hook returned %r, not a bool: connection refused", result)
            return False
        return result

    async def check_message(self, ctx: MessageContext) -> bytes:
        """The body to store: ``ctx.body`` or a rewrite; CommandError if refused."""
        hook = self.on_message
        if hook is None:
            return ctx.body
        try:
            verdict = hook(ctx)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            log.exception("on_message hook failed on conv %d cmid %d", ctx.conv, ctx.cmid)
            raise CommandError(
                ErrorCode.INTERNAL, "the node's message hook failed; the node logged it"
            ) from None
        if verdict is None:
            return ctx.body
        if isinstance(verdict, Reject):
            raise CommandError(ErrorCode(verdict.code), verdict.message)
        if isinstance(verdict, Rewrite) and isinstance(verdict.body, bytes):
            return verdict.body
        log.error("on_message hook returned %r, not None, Reject or Rewrite", verdict)
        raise CommandError(ErrorCode.INTERNAL, "the node's message hook failed; the node logged it")

    async def stored(self, message: StoredMessage) -> None:
        """Runs ``after_store``; never raises."""
        hook = self.after_store
        if hook is None:
            return
        try:
            result = hook(message)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("after_store hook failed on conv %d seq %d", message.conv, message.seq)
