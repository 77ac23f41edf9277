"""The minimal picows echo server (its documented core-API server), for comparison.

    python benchmarks/peers/picows_echo.py --port 9002

Same command line as ``python -m bluewren.echo`` (``--host``, ``--port``, ``--loop``,
uvloop by default) and the same ``listening on ws://HOST:PORT/`` line once bound, so
the echo benchmark drives both servers the same way. ``--port 0`` picks a free port.
"""

from __future__ import annotations

from collections.abc import Sequence

from _cli import serve_main
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


class ServerClientListener(WSListener):  # type: ignore[misc,unused-ignore]
    """Echoes every frame back; answers a close with a close."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        else:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview())


async def serve(host: str, port: int) -> None:
    """Serve forever."""

    def listener_factory(request: WSUpgradeRequest) -> ServerClientListener:
        return ServerClientListener()

    server = await ws_create_server(listener_factory, host, port)
    for sock in server.sockets:
        bound_host, bound_port = sock.getsockname()[:2]
        print(f"picows_echo listening on ws://{bound_host}:{bound_port}/", flush=True)
    await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    return serve_main(serve, __doc__, 9002, argv)


if __name__ == "__main__":
    raise SystemExit(main())
