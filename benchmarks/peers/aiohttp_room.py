"""Room broadcast server on aiohttp (``WebSocketResponse.send_bytes`` per member).

    python benchmarks/peers/aiohttp_room.py --port 9012

Speaks the room protocol of the end-to-end benchmarks (benchmarks/e2e/): a client joins
the room named in the query string (``ws://HOST:PORT/?room=NAME``); every binary message
it sends goes, unchanged, to every other connection of that room. Text is ignored.
Written as aiohttp's documentation shows a chat server: the handler iterates over the
connection's messages and awaits ``send_bytes`` on every other member. Prints
``READY <port>`` once listening; serves until SIGTERM or SIGINT. uvloop by default.
"""

from __future__ import annotations

from collections.abc import Sequence

from _cli import room_of, serve_main, stop_on_signals
from aiohttp import WSMsgType, web

ROOMS: dict[str, set[web.WebSocketResponse]] = {}


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=1 << 24, compress=False)
    await ws.prepare(request)
    room = ROOMS.setdefault(room_of(request.path_qs), set())
    room.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                for member in list(room):
                    if member is not ws and not member.closed:
                        await member.send_bytes(msg.data)
    finally:
        room.discard(ws)
    return ws


async def run(host: str, port: int) -> None:
    stop = stop_on_signals()
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await stop
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    return serve_main(run, __doc__, 9012, argv)


if __name__ == "__main__":
    raise SystemExit(main())
