"""Online backup of the SQLite store (bluewren.store.backup, ``bluewren backup``).

A node runs in-process and keeps writing while the backup is taken; the copy must hold
every message acknowledged before the backup began, as a gapless prefix of the
conversation, and a node started on the copy serves them.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from bluewren.__main__ import main
from bluewren.client import Client
from bluewren.node import Node, NodeConfig
from bluewren.store import SQLiteStore
from bluewren.store.backup import BackupError, backup_database

SECRET = "b" * 48


async def _history(db: Path, conv: int) -> list[int]:
    store = SQLiteStore(db)
    await store.open()
    try:
        return [m.seq for m in await store.history(conv, 0, 10_000)]
    finally:
        await store.close()


def test_backup_while_writing_holds_every_acknowledged_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dest = tmp_path / "copy.db"

    async def scenario() -> None:
        config = NodeConfig(port=0, data_dir=data, token_secret=SECRET, send_burst=10_000)
        async with Node(config) as node:
            alice = Client(node.url, node.issuer.mint("alice", "d1"))
            await alice.connect()
            chat = await alice.create_direct("bob")
            for i in range(50):
                await alice.send(chat.conv, f"before {i}")
            writing = asyncio.ensure_future(
                asyncio.gather(*(alice.send(chat.conv, f"during {i}") for i in range(200)))
            )
            await asyncio.to_thread(backup_database, config.database_path, dest)
            await writing
            await alice.close()
            seqs = await _history(dest, chat.conv)
            assert len(seqs) >= 50
            assert seqs == list(range(1, len(seqs) + 1))  # a gapless prefix

    asyncio.run(scenario())


def test_cli_backup_then_restore_serves_the_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    dest = tmp_path / "copy.db"

    async def write_and_back_up() -> int:
        async with Node(NodeConfig(port=0, data_dir=data, token_secret=SECRET)) as node:
            alice = Client(node.url, node.issuer.mint("alice", "d1"))
            await alice.connect()
            chat = await alice.create_direct("bob")
            for i in range(5):
                await alice.send(chat.conv, f"m{i}")
            await alice.close()
            status = await asyncio.to_thread(main, ["backup", str(dest), "--data-dir", str(data)])
            assert status == 0
            return chat.conv

    conv = asyncio.run(write_and_back_up())
    assert capsys.readouterr().out.startswith(f"backed up {data / 'bluewren.db'} to {dest} (")
    # Restore into a fresh data directory and read the messages back through a node.
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(dest, restored / "bluewren.db")

    async def read_back() -> list[bytes]:
        async with Node(NodeConfig(port=0, data_dir=restored, token_secret=SECRET)) as node:
            return [m.body for m in await node.store.history(conv, 0, 100)]

    assert asyncio.run(read_back()) == [f"m{i}".encode() for i in range(5)]


def test_backup_refuses_to_overwrite_and_names_a_missing_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "exists.db"
    existing.write_bytes(b"keep me")
    with pytest.raises(BackupError, match="no database at"):
        backup_database(tmp_path / "absent.db", tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists()
    assert main(["backup", str(existing), "--data-dir", str(tmp_path / "nothing")]) == 1
    assert "no database at" in capsys.readouterr().err
    source = tmp_path / "src.db"
    sqlite3.connect(source).close()
    with pytest.raises(BackupError, match="exists: choose a new file name"):
        backup_database(source, existing)
    assert existing.read_bytes() == b"keep me"
