"""The dashboard page: served on /dashboard, self-contained, and live in a real browser.

Headless Chromium loads the page from an in-process node while the test drives traffic;
two DOM dumps taken at different moments must show the numbers the page parsed out of
/metrics, and those numbers must have moved. A screenshot is saved in the test's tmp
directory (and copied to ``$BLUEWREN_ARTIFACTS`` when that is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import html.parser
import os
import re
import shutil
from pathlib import Path

import pytest

from bluewren.client import Client
from bluewren.node import Node, NodeConfig
from bluewren.node.dashboard import DASHBOARD_HTML

SECRET = "m" * 48
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_TIMEOUT = 60.0


class _Ids(html.parser.HTMLParser):
    """Text of every element with an id (the last text chunk inside it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "meta", "img", "input", "link"):
            return
        self.stack.append(dict(attrs).get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for ident in reversed(self.stack):
            if ident is not None:
                self.text[ident] = self.text.get(ident, "") + data
                break


def ids(dom: str) -> dict[str, str]:
    parser = _Ids()
    parser.feed(dom)
    return {k: v.strip() for k, v in parser.text.items()}


def test_dashboard_is_one_self_contained_page() -> None:
    assert DASHBOARD_HTML.lstrip().startswith("<!doctype html>")
    assert "/metrics" in DASHBOARD_HTML
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", DASHBOARD_HTML)
    assert "import " not in DASHBOARD_HTML


async def _chromium(*args: str) -> str:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--virtual-time-budget=3000",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    return out.decode()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_dashboard_shows_live_numbers_in_headless_chromium(tmp_path: Path) -> None:
    async def main() -> None:
        config = NodeConfig(
            port=0,
            metrics_port=0,
            data_dir=tmp_path / "data",
            token_secret=SECRET,
            send_rate=1_000_000.0,  # the SEND rate limit is not what this test is about
            send_burst=1_000_000,
        )
        async with Node(config) as node:
            url = f"http://127.0.0.1:{node.metrics_port}/dashboard"
            alice = Client(node.url, node.issuer.mint("alice", "d"))
            bob = Client(node.url, node.issuer.mint("bob", "d"), protocol="json")
            await alice.connect()
            await bob.connect()
            chat = await alice.create_direct("bob")
            stop = asyncio.Event()

            async def traffic() -> None:
                i = 0
                while not stop.is_set():
                    await alice.send(chat.conv, f"m{i}")
                    i += 1
                    await asyncio.sleep(0.005)

            driver = asyncio.create_task(traffic())

            async def stored(n: int) -> None:
                async with asyncio.timeout(BROWSER_TIMEOUT):
                    while node.metrics.messages_in < n:
                        if driver.done():  # the traffic failed: say why
                            driver.result()
                            raise AssertionError("the traffic stopped")
                        await asyncio.sleep(0.01)

            try:
                await stored(5)
                first = ids(await _chromium("--dump-dom", url))
                await stored(node.metrics.messages_in + 20)
                shot = tmp_path / "dashboard.png"
                second = ids(await _chromium("--dump-dom", url))
                await _chromium("--window-size=1200,800", f"--screenshot={shot}", url)
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await driver
                await alice.close()
                await bob.close()
        for dump in (first, second):
            assert dump["status"].startswith("updated "), dump["status"]
            assert dump["conn-total"] == "2"
            assert float(dump["msgs-in-total"]) >= 5
            assert float(dump["msgs-out-total"]) >= 1
            assert float(dump["lat-count"]) >= 5
            assert dump["lat-p50"].endswith(" ms")
            assert dump["lat-p99"].endswith(" ms")
            assert "store.write" in dump["breakers"]
            assert "closed" in dump["breakers"]
            assert dump["slow-closes"] == "0"
            assert re.fullmatch(r"-?\d+(\.\d+)?", dump["rate-in"]), dump["rate-in"]
        assert float(second["msgs-in-total"]) >= float(first["msgs-in-total"]) + 20
        assert shot.stat().st_size > 1000
        assert shot.read_bytes().startswith(b"\x89PNG")

    asyncio.run(main())
    artifacts = os.environ.get("BLUEWREN_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "dashboard.png", Path(artifacts) / "dashboard.png")
