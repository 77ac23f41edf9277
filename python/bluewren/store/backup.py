"""Online backup of the SQLite store: a consistent copy while the node keeps writing.

:func:`backup_database` copies with SQLite's backup API (what the ``sqlite3`` shell's
``.backup`` does), which reads a consistent snapshot, WAL included, while writers go
on. The copy is written next to the destination, checked with ``PRAGMA quick_check`` and
renamed into place, so a destination that exists is always a whole, valid database.

A running node acknowledges messages once its message log holds them, and SQLite indexes
them a moment later (:mod:`bluewren.store.msglog`). So the log is read first, then the
snapshot is taken, and the log's messages the snapshot lacks are added to the copy: every
message acknowledged before the backup began is in it (one still in the log when it was
read, or else already in SQLite when the later snapshot was taken).
``bluewren backup DEST`` runs it on the configured node's store (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Final

from bluewren.errors import StoreError
from bluewren.store.msglog import LOG_SUFFIX, MessageLog
from bluewren.store.sqlite import replay_log

__all__ = ["PAGES_PER_STEP", "BackupError", "backup_database"]

PAGES_PER_STEP: Final = 1024
"""Pages copied per step; between steps the source lock is released so writers go on."""


class BackupError(StoreError):
    """The backup could not be made; the message says why and what to do."""


def backup_database(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> int:
    """Copies the database ``source`` to the new file ``dest``; returns its size in bytes.

    Safe while a node writes to ``source`` (WAL mode). BackupError if ``source`` is
    missing, ``dest`` exists, or the copy fails its integrity check."""
    src_path, dest_path = Path(source), Path(dest)
    if not src_path.is_file():
        raise BackupError(f"no database at {src_path}: check data_dir")
    if dest_path.exists():
        raise BackupError(f"{dest_path} exists: choose a new file name")
    partial = dest_path.with_name(f".{dest_path.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        logged = list(MessageLog(f"{src_path}{LOG_SUFFIX}", 0).read(repair=False))
        src = sqlite3.connect(src_path, timeout=30.0)
        try:
            out = sqlite3.connect(partial, isolation_level=None)
            try:
                src.backup(out, pages=PAGES_PER_STEP)
                replay_log(out, logged)
                (verdict,) = out.execute("PRAGMA quick_check").fetchone()
                if verdict != "ok":
                    raise BackupError(f"the copy of {src_path} failed its check: {verdict}")
            finally:
                out.close()
        finally:
            src.close()
        partial.replace(dest_path)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"cannot back up {src_path}: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return dest_path.stat().st_size
