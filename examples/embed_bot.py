"""An echo bot living inside another asyncio application, through the node's hooks.

    python examples/embed_bot.py

The application starts a BlueWren node on a free loopback port with three hooks:

* ``on_connect`` refuses the user ``mallory``;
* ``on_message`` refuses messages containing "spam" before they are stored;
* ``after_store`` answers every message sent to the bot with ``echo: <text>``, posted
  with ``Node.post`` as the bot (the bot needs no connection of its own).

Then it plays a short scene with ``bluewren.client`` and prints what happened.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bluewren.auth import Identity
from bluewren.client import Client, ClientError
from bluewren.node import ErrorCode, Node, NodeConfig
from bluewren.node.hooks import MessageContext, Reject
from bluewren.store import StoredMessage

BOT = "echo-bot"


class EchoBot:
    """The application's bot: its hooks hold all of its logic."""

    def __init__(self) -> None:
        self.node: Node | None = None

    def on_connect(self, identity: Identity, headers: Mapping[str, str]) -> bool:
        return identity.user != "mallory"

    def on_message(self, ctx: MessageContext) -> Reject | None:
        if b"spam" in ctx.body:
            return Reject(ErrorCode.FORBIDDEN, "this node does not carry spam")
        return None

    async def after_store(self, message: StoredMessage) -> None:
        node = self.node
        if node is None or message.sender == BOT:
            return  # never answer itself
        members = await node.members_of(message.conv)
        if BOT in members:
            await node.post(message.conv, BOT, b"echo: " + message.body, device="bot")


def _name(exc: ClientError) -> str:
    return exc.code.name if isinstance(exc.code, ErrorCode) else str(exc.code)


async def main() -> None:
    bot = EchoBot()
    with tempfile.TemporaryDirectory() as data_dir:
        config = NodeConfig(port=0, data_dir=Path(data_dir), token_secret="x" * 48)
        node = Node(
            config,
            on_connect=bot.on_connect,
            on_message=bot.on_message,
            after_store=bot.after_store,
        )
        bot.node = node
        async with node:
            async with Client(node.url, node.issuer.mint("alice", "phone")) as alice:
                chat = await alice.create_direct(BOT)
                await alice.send(chat.conv, "hello bot")
                async for event in alice.events():
                    if event.kind == "deliver" and event.sender == BOT:
                        print(f"alice got: {event.body.decode()}")
                        break
                try:
                    await alice.send(chat.conv, "buy spam now")
                except ClientError as exc:
                    print(f"spam refused: {_name(exc)}")
            mallory = Client(node.url, node.issuer.mint("mallory", "laptop"), reconnect=False)
            try:
                await mallory.connect()
            except ClientError as exc:
                print(f"mallory refused: {_name(exc)}")
            finally:
                await mallory.close()


if __name__ == "__main__":
    asyncio.run(main())
