"""Shared fixtures: the event loops every suite runs on, and BlueWren servers
run as subprocesses on loopback."""

from __future__ import annotations

import asyncio
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import pytest
import uvloop

from bluewren.node import Node, NodeConfig

T = TypeVar("T")

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
"""The event loops every suite runs on: uvloop and the standard library's."""

LOOPS = ("uvloop", "asyncio")
"""Their names, for servers started as subprocesses (``--loop NAME``)."""


class Run(Protocol):
    """Runs a coroutine to completion on the test's event loop."""

    def __call__(self, coro: Coroutine[Any, Any, T], /) -> T: ...


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def loop_name(request: pytest.FixtureRequest) -> str:
    """The name of the event loop this test runs on (the test runs once per loop)."""
    name: str = request.param
    return name


@pytest.fixture
def run(loop_name: str) -> Iterator[Run]:
    """A runner on a fresh event loop of the parametrized kind."""
    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_name]) as runner:
        yield runner.run


NodeScenario = Callable[[Node], Awaitable[None]]


class NodeRunner(Protocol):
    """Runs a scenario against a fresh in-process node; keyword arguments are
    NodeConfig fields, except ``hooks`` (the Node's hook arguments)."""

    def __call__(
        self, scenario: NodeScenario, hooks: dict[str, Any] | None = None, **config: object
    ) -> None: ...


def node_runner(
    loop_name: str, tmp_path: Path, *, timeout: float, **defaults: object
) -> NodeRunner:
    """A :class:`NodeRunner` on the ``loop_name`` event loop, its node listening on a free
    loopback port with its data in ``tmp_path``; ``defaults`` are NodeConfig fields the
    calling suite always wants (its token secret, extra listeners)."""

    def runner(
        scenario: NodeScenario, hooks: dict[str, Any] | None = None, **config: object
    ) -> None:
        async def main() -> None:
            settings: dict[str, object] = {"port": 0, "data_dir": tmp_path, **defaults, **config}
            node = Node(NodeConfig(**settings), **(hooks or {}))  # type: ignore[arg-type]
            await node.start()
            try:
                await asyncio.wait_for(scenario(node), timeout)
            finally:
                await node.stop()

        with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_name]) as r:
            r.run(main())

    return runner


CLI_TIMEOUT = 60.0


def bluewren_cli(
    *args: str, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m bluewren ARGS [--data-dir DIR]`` as a subprocess (in ``env``, else this
    process's environment); its output captured."""
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run(
        [sys.executable, "-m", "bluewren", *args, *extra],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        env=env,
    )


def node_env(**extra: str) -> dict[str, str]:
    """This process's environment without any BLUEWREN_ variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEWREN_")}
    env.update(extra)
    return env


def serve_process(*args: str, env: dict[str, str], **popen: Any) -> subprocess.Popen[str]:
    """``python -m bluewren serve ARGS`` as a subprocess, stdout and stderr piped (text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bluewren", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )


def reap(proc: subprocess.Popen[str]) -> None:
    """Kills ``proc`` if it still runs, waits for it, and closes its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 15.0

_LISTENING = re.compile(rb"listening on ws://([0-9.]+):(\d+)/")


@dataclass(frozen=True)
class EchoServer:
    """A running ``python -m bluewren.echo`` process."""

    host: str
    port: int
    loop: str
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for ``socket.create_connection``."""
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """The server's WebSocket URL."""
        return f"ws://{self.host}:{self.port}/"

    def is_running(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None


def _read_first_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first line the process prints, read with a deadline (no thread, no blocking read)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in line:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError(f"no 'listening' line within {timeout:.0f} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            line += chunk
    return line.split(b"\n", 1)[0]


def _stderr_text(err: IO[bytes]) -> str:
    err.seek(0)
    return err.read().decode("utf-8", "replace")[-4000:]


def _wait_until_serving(server: EchoServer) -> None:
    """Returns once the server's event loop has answered an upgrade request.

    The "listening" line is printed before the loop runs, so it does not prove
    that the SIGTERM handler is installed yet; an answer does.
    """
    request = (
        f"GET / HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(server.address, timeout=STARTUP_TIMEOUT) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 101 "):
        raise RuntimeError(f"{server.url} answered an upgrade request with {answer!r:.200}")


@contextmanager
def run_echo_server(loop: str = "uvloop", *args: str) -> Iterator[EchoServer]:
    """Starts ``python -m bluewren.echo --port 0 --loop LOOP *args`` on 127.0.0.1.

    Yields once the server printed the address it bound. At exit the server gets
    SIGTERM and must exit with status 0 within ``SHUTDOWN_TIMEOUT``; anything else
    fails the caller, with the server's stderr in the message.
    """
    cmd = [sys.executable, "-m", "bluewren.echo", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--loop", loop, *args]
    with tempfile.TemporaryFile() as err:
        # stderr goes to a file, not a pipe nobody drains, so a chatty server never blocks.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        try:
            try:
                line = _read_first_line(proc, STARTUP_TIMEOUT)
            except TimeoutError as exc:
                raise RuntimeError(f"{cmd} did not start: {exc}\n{_stderr_text(err)}") from exc
            found = _LISTENING.search(line)
            if found is None:
                proc.wait(SHUTDOWN_TIMEOUT)
                raise RuntimeError(
                    f"{cmd} printed {line!r}, exit status {proc.returncode}\n{_stderr_text(err)}"
                )
            server = EchoServer(found[1].decode(), int(found[2]), loop, proc)
            _wait_until_serving(server)
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            status: int | None
            try:
                status = proc.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                status = None
            assert proc.stdout is not None
            proc.stdout.close()
        assert status == 0, (
            f"{cmd} did not exit cleanly on SIGTERM (status {status})\n{_stderr_text(err)}"
        )


@pytest.fixture(scope="module", params=LOOPS)
def echo_server(request: pytest.FixtureRequest) -> Iterator[EchoServer]:
    """An echo server with default limits, once on each event loop (module-scoped)."""
    with run_echo_server(request.param) as server:
        yield server
