"""Room broadcast server on picows (its core API: one ``transport.send`` per member).

    python benchmarks/peers/picows_room.py --port 9011

Speaks the room protocol of the end-to-end benchmarks (benchmarks/e2e/): a client joins
the room named in the query string (``ws://HOST:PORT/?room=NAME``); every binary message
it sends goes, unchanged, to every other connection of that room. Text is ignored.
picows has no broadcast helper, so this is what its documentation shows for sending:
``WSTransport.send`` per recipient, from the listener's ``on_ws_frame``. Prints
``READY <port>`` once listening; serves until SIGTERM or SIGINT. uvloop by default.
"""

from __future__ import annotations

from collections.abc import Sequence

from _cli import room_of, serve_main, stop_on_signals
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

ROOMS: dict[str, set[WSTransport]] = {}


class RoomListener(WSListener):
    """One connection: joins its room on connect, relays binary frames to the others."""

    def __init__(self, room: str) -> None:
        super().__init__()
        self.members = ROOMS.setdefault(room, set())

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.members.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.members.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            # The room protocol's messages are single frames (no fragmentation).
            payload = frame.get_payload_as_bytes()
            for member in self.members:
                if member is not transport:
                    member.send(WSMsgType.BINARY, payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


async def run(host: str, port: int) -> None:
    stop = stop_on_signals()

    def listener_factory(request: WSUpgradeRequest) -> RoomListener:
        path = request.path.decode() if isinstance(request.path, bytes) else str(request.path)
        return RoomListener(room_of(path))

    server = await ws_create_server(listener_factory, host, port, max_frame_size=1 << 24)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await stop
    server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    return serve_main(run, __doc__, 9011, argv)


if __name__ == "__main__":
    raise SystemExit(main())
