"""Room broadcast server on ``websockets`` (its asyncio API and ``websockets.broadcast``).

    python benchmarks/peers/websockets_room.py --port 9010

Speaks the room protocol of the end-to-end benchmarks (benchmarks/e2e/): a client joins
the room named in the query string (``ws://HOST:PORT/?room=NAME``); every binary message
it sends goes, unchanged, to every other connection of that room. Text is ignored.
Written as the library documents broadcasting: ``broadcast(connections, message)``,
which writes to each connection without awaiting it. Prints ``READY <port>`` once
listening; serves until SIGTERM or SIGINT. uvloop by default.
"""

from __future__ import annotations

from collections.abc import Sequence

from _cli import room_of, serve_main, stop_on_signals
from websockets.asyncio.server import ServerConnection, broadcast, serve

ROOMS: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    room = ROOMS.setdefault(room_of(ws.request.path if ws.request else "/"), set())
    room.add(ws)
    try:
        async for message in ws:
            if isinstance(message, bytes):
                broadcast([c for c in room if c is not ws], message)
    finally:
        room.discard(ws)


async def run(host: str, port: int) -> None:
    stop = stop_on_signals()
    # No compression (the clients do not ask for it either); messages up to 16 MiB.
    async with serve(handler, host, port, compression=None, max_size=1 << 24) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"READY {bound}", flush=True)
        await stop


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    return serve_main(run, __doc__, 9010, argv)


if __name__ == "__main__":
    raise SystemExit(main())
