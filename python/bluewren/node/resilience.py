"""The node's outbound dependencies, each behind a circuit breaker with a timeout.

Dependencies and their breakers (names as in ``NodeConfig.breakers``):

* ``store.write`` — appends and every other write of the store;
* ``store.read`` — history, membership, cursors and other reads;
* ``hook.on_connect``, ``hook.on_message``, ``hook.after_store`` — the embedding hooks.

:data:`DEFAULT_BREAKERS` holds the defaults; an entry of ``NodeConfig.breakers``
replaces the default of that name. docs/resilience.md describes what the node does
while each breaker is open:

* store open (or a call timed out): commands that need the store get ``UNAVAILABLE``
  with ``retry_after``; nothing is acknowledged that was not stored; TYPING and
  presence do not touch the store and keep flowing;
* ``hook.on_message`` open: SENDs are refused with ``UNAVAILABLE`` (fail closed: the
  hook is the embedding application's policy, so skipping it would store messages the
  policy never saw);
* ``hook.on_connect`` open: HELLO is answered with ``UNAVAILABLE`` and the connection
  closed with 1013 and a retry hint (fail closed, but retryable, not "bad token");
* ``hook.after_store`` open: the hook is skipped for that message (it runs after the
  message was stored, acknowledged and delivered; nothing waits on it).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Final

from bluewren.auth import Identity
from bluewren.breaker import BreakerConfig, BreakerRegistry, CircuitBreaker
from bluewren.errors import CallTimeoutError, CircuitOpenError
from bluewren.node.commands import ErrorCode
from bluewren.node.hooks import AfterStore, Hooks, MessageContext, OnConnect, OnMessage
from bluewren.node.wire import CommandError
from bluewren.store import StoredMessage

__all__ = [
    "DEFAULT_BREAKERS",
    "HOOK_AFTER_STORE",
    "HOOK_ON_CONNECT",
    "HOOK_ON_MESSAGE",
    "STORE_READ",
    "STORE_WRITE",
    "GuardedHooks",
    "breaker_registry",
]

log = logging.getLogger("bluewren.node.hooks")

STORE_READ: Final = "store.read"
STORE_WRITE: Final = "store.write"
HOOK_ON_CONNECT: Final = "hook.on_connect"
HOOK_ON_MESSAGE: Final = "hook.on_message"
HOOK_AFTER_STORE: Final = "hook.after_store"

_STORE: Final = BreakerConfig(
    window_size=20,
    minimum_calls=10,
    failure_rate_threshold=50.0,
    slow_call_duration=2.0,
    slow_call_rate_threshold=80.0,
    wait_duration_open=5.0,
    open_jitter=0.2,
    open_backoff_multiplier=2.0,
    max_wait_duration_open=60.0,
    permitted_calls_in_half_open=3,
    timeout=5.0,
)
_HOOK: Final = BreakerConfig(
    window_size=20,
    minimum_calls=10,
    failure_rate_threshold=50.0,
    slow_call_duration=1.0,
    slow_call_rate_threshold=80.0,
    wait_duration_open=10.0,
    open_jitter=0.2,
    open_backoff_multiplier=2.0,
    max_wait_duration_open=120.0,
    permitted_calls_in_half_open=3,
    timeout=2.0,
)

DEFAULT_BREAKERS: Final[Mapping[str, BreakerConfig]] = {
    STORE_WRITE: _STORE,
    STORE_READ: _STORE,
    HOOK_ON_CONNECT: _HOOK,
    HOOK_ON_MESSAGE: _HOOK,
    HOOK_AFTER_STORE: _HOOK,
}
"""The breaker of each dependency unless ``NodeConfig.breakers`` names it."""


def breaker_registry(overrides: Mapping[str, BreakerConfig]) -> BreakerRegistry:
    """The node's breakers: :data:`DEFAULT_BREAKERS` with ``overrides`` applied."""
    return BreakerRegistry({**DEFAULT_BREAKERS, **overrides}, default=_HOOK)


def _unavailable(
    what: str, exc: CircuitOpenError | CallTimeoutError, breaker: CircuitBreaker
) -> CommandError:
    if isinstance(exc, CircuitOpenError):
        retry_after = exc.retry_after
        why = f"{what} is unavailable (breaker {breaker.name!r} open)"
    else:
        retry_after = min(breaker.config.wait_duration_open, 5.0)
        why = f"{what} did not answer within {exc.timeout:g} s"
    retry_after = max(0.001, round(retry_after, 3))
    return CommandError(
        ErrorCode.UNAVAILABLE, f"{why}: retry after {retry_after:g} s", retry_after=retry_after
    )


class GuardedHooks(Hooks):
    """:class:`~bluewren.node.hooks.Hooks` whose calls go through the node's breakers.

    A hook that raises or runs past its breaker's timeout counts as a failure of its
    breaker; a ``Reject`` verdict does not (the hook answered). See the module docstring
    for what each open breaker means.
    """

    def __init__(
        self,
        breakers: BreakerRegistry,
        on_connect: OnConnect | None = None,
        on_message: OnMessage | None = None,
        after_store: AfterStore | None = None,
    ) -> None:
        super().__init__(on_connect, on_message, after_store)
        self.breakers = breakers

    async def connect_allowed(self, identity: Identity, headers: Mapping[str, str]) -> bool:
        """As ``Hooks.connect_allowed``; CommandError ``UNAVAILABLE`` when the breaker is
        open or the hook timed out."""
        if self.on_connect is None:
            return True
        breaker = self.breakers[HOOK_ON_CONNECT]
        hook = self.on_connect

        async def call() -> bool:
            result = hook(identity, headers)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, bool):
                raise _HookFailed(f"on_connect hook returned {result!r}, not a bool")
            return result

        try:
            return await breaker.call(call)
        except (CircuitOpenError, CallTimeoutError) as exc:
            raise _unavailable("the node's connection check", exc, breaker) from None
        except Exception:
            log.exception("on_connect hook failed for %s/%s", identity.user, identity.device)
            return False

    async def check_message(self, ctx: MessageContext) -> bytes:
        """As ``Hooks.check_message``; CommandError ``UNAVAILABLE`` when the breaker is
        open or the hook timed out."""
        if self.on_message is None:
            return ctx.body
        breaker = self.breakers[HOOK_ON_MESSAGE]
        check = super().check_message

        async def call() -> bytes | CommandError:
            try:
                return await check(ctx)
            except CommandError as err:
                if err.code == ErrorCode.INTERNAL:
                    raise _HookFailed(err) from None  # the hook failed: count it
                return err  # a Reject: the hook answered

        try:
            result = await breaker.call(call)
        except (CircuitOpenError, CallTimeoutError) as exc:
            raise _unavailable("the node's message check", exc, breaker) from None
        except _HookFailed as failed:
            raise failed.error from None
        if isinstance(result, CommandError):
            raise result
        return result

    async def stored(self, message: StoredMessage) -> None:
        """Runs ``after_store`` through its breaker; skipped (logged) while it is open."""
        if self.after_store is None:
            return
        breaker = self.breakers[HOOK_AFTER_STORE]
        hook = self.after_store

        async def call() -> None:
            result = hook(message)
            if result is not None:
                await result

        try:
            await breaker.call(call)
        except CircuitOpenError:
            log.warning(
                "after_store skipped for conv %d seq %d: breaker open", message.conv, message.seq
            )
        except Exception:
            log.exception("after_store hook failed on conv %d seq %d", message.conv, message.seq)


class _HookFailed(Exception):
    """A hook raised or gave a wrong answer (counted by its breaker)."""

    def __init__(self, error: CommandError | str) -> None:
        super().__init__(str(error))
        self.error = (
            error if isinstance(error, CommandError) else CommandError(ErrorCode.INTERNAL, error)
        )
