"""What a durable message costs SQLite, per row, for the store's schema and alternatives.

    python benchmarks/bench_sqlite_insert.py [--rows 200000] [--batch 500] [--page-size 4096]

Standalone (no node, no store code): each variant creates a fresh WAL database with
``synchronous=NORMAL`` and no automatic checkpoint, as the store does, and appends
``--rows`` 46-byte messages round-robin over 64 conversations, ``--batch`` rows per
transaction with one ``executemany``, with a PASSIVE checkpoint every 20,000 rows. Times
are CPU seconds of this process per row (``time.process_time``), split into the whole
loop, the ``executemany`` alone and the ``COMMIT`` alone, best of ``--repeat`` runs.
Results and what they decided: results/node.md.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

COLUMNS = "conv, seq, sender, device, cmid, body, kind, created_at"
FIELDS = """conv INTEGER NOT NULL REFERENCES conversations (id),
    seq INTEGER NOT NULL CHECK (seq > 0), sender TEXT NOT NULL, device TEXT NOT NULL,
    cmid INTEGER, body BLOB NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL"""
STORE = f"CREATE TABLE messages ({FIELDS}, UNIQUE (conv, seq), UNIQUE (sender, conv, cmid))"
UPSERT = (
    f"INSERT INTO messages ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (sender, conv, cmid) DO NOTHING"
)

# name: (schema, insert statement, rowid = conv << 32 | seq, foreign keys)
VARIANTS: dict[str, tuple[str, str, bool, bool]] = {
    "store schema, upsert (what the store runs)": (STORE, UPSERT, False, True),
    "store schema, plain insert": (
        STORE,
        f"INSERT INTO messages ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        False,
        True,
    ),
    "store schema, upsert, foreign keys off": (STORE, UPSERT, False, False),
    "store schema without the dedup index (retries would not be deduplicated)": (
        f"CREATE TABLE messages ({FIELDS}, UNIQUE (conv, seq))",
        f"INSERT INTO messages ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        False,
        True,
    ),
    "WITHOUT ROWID keyed (conv, seq), dedup index": (
        f"CREATE TABLE messages ({FIELDS}, PRIMARY KEY (conv, seq), "
        "UNIQUE (sender, conv, cmid)) WITHOUT ROWID",
        UPSERT,
        False,
        True,
    ),
    "rowid = conv * 2**32 + seq, dedup index": (
        f"CREATE TABLE messages (id INTEGER PRIMARY KEY, {FIELDS}, UNIQUE (sender, conv, cmid))",
        f"INSERT INTO messages (id, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (sender, conv, cmid) DO NOTHING",
        True,
        True,
    ),
}

CONVERSATIONS = 64
BODY = b"benchmark message body " * 2


def run(
    path: Path, variant: tuple[str, str, bool, bool], rows: int, batch: int, page_size: int
) -> tuple[float, float, float]:
    """(total, executemany, COMMIT) CPU microseconds per row."""
    schema, insert, rowid, foreign_keys = variant
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {page_size}")  # before WAL, or it does not apply
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    conn.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL)")
    conn.execute(schema)
    conn.executemany(
        "INSERT INTO conversations VALUES (?, 0)", [(c,) for c in range(1, CONVERSATIONS + 1)]
    )
    seqs = [0] * (CONVERSATIONS + 1)
    insert_cpu = commit_cpu = 0.0
    started = time.process_time()
    done = 0
    while done < rows:
        batch_rows = []
        for i in range(done, done + batch):
            conv = i % CONVERSATIONS + 1
            seqs[conv] += 1
            row = (conv, seqs[conv], f"user{conv}", "phone", i + 1, BODY, "text", 1.0)
            batch_rows.append(((conv << 32 | seqs[conv]), *row) if rowid else row)
        conn.execute("BEGIN IMMEDIATE")
        t0 = time.process_time()
        conn.executemany(insert, batch_rows)
        t1 = time.process_time()
        conn.execute("COMMIT")
        commit_cpu += time.process_time() - t1
        insert_cpu += t1 - t0
        done += batch
        if done % 20_000 < batch:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    total = time.process_time() - started
    conn.close()
    return total / done * 1e6, insert_cpu / done * 1e6, commit_cpu / done * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--page-size", type=int, default=4096, help="SQLite's page_size")
    args = parser.parse_args(argv)
    print(
        f"{args.rows:,} rows, {args.batch} per transaction, {CONVERSATIONS} conversations, "
        f"{args.page_size}-byte pages"
    )
    print("| variant | µs per row | executemany | COMMIT |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        path = Path(tmp) / "t.db"
        for name, variant in VARIANTS.items():
            runs = [
                run(path, variant, args.rows, args.batch, args.page_size)
                for _ in range(args.repeat)
            ]
            best = min(runs, key=lambda r: r[0])
            print(f"| {name} | {best[0]:.2f} | {best[1]:.2f} | {best[2]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
