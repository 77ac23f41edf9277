"""The store's message log: messages acknowledged before SQLite has indexed them.

A run of new messages is written to the log as one frame, with one ``write`` system
call, and is durable from then on as far as ``synchronous=NORMAL`` promises (a crash of
the process loses nothing; see :mod:`bluewren.store.sqlite`). The store inserts the
messages into SQLite afterwards, off the acknowledgement's path, and a log segment is
removed only once every message in it is in SQLite and a checkpoint has copied them
into the database file. At open, the store replays what the log holds beyond each
conversation's ``last_seq``: the messages acknowledged before a crash that SQLite had
not yet indexed.

Layout: a directory next to the database (``<database>-log``) holding a ``lock`` file
and segments named by a growing number (``000000000001.seg``, ...). A segment is a
sequence of frames::

    frame   = magic "BWL1" | payload length (u32) | crc32 of the payload (u32) | payload
    payload = record*
    record  = conv (i64) | seq (i64) | cmid (u64) | created_at (f64)
              | len(sender) | len(device) | len(kind) | len(body)   (u32 each)
              | sender | device | kind (UTF-8) | body

all little-endian; ``encode_frame`` (native) builds one. A damaged frame ends its
segment's readable part: at the end of the last segment it is a write the process died
in (never acknowledged), and it is cut off at open.

One process at a time owns a log: :meth:`MessageLog.lock` takes an exclusive ``flock``
on ``lock``. A second store opened on the same database (an operator's command while
the node runs) finds the lock taken: it reads, and refuses appends.

Not thread-safe: the store appends on its event loop, and the writer thread only reports
what it has indexed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Final

from bluewren import _native  # noqa: F401  (initialises bluewren._sqlite)
from bluewren._sqlite import encode_frame
from bluewren.errors import StoreUnavailableError
from bluewren.store.base import StoredMessage, new_stored_message

log = logging.getLogger("bluewren.store.msglog")

__all__ = ["LOG_SUFFIX", "MessageLog", "encode_frame"]

LOG_SUFFIX: Final = "-log"
"""The log directory is the database's path with this suffix."""

_MAGIC: Final = b"BWL1"
_FRAME: Final = struct.Struct("<4sII")
_RECORD: Final = struct.Struct("<qqQdIIII")
_SEGMENT: Final = ".seg"


def _decode_payload(payload: bytes) -> list[StoredMessage]:
    messages: list[StoredMessage] = []
    at = 0
    end = len(payload)
    unpack = _RECORD.unpack_from
    size = _RECORD.size
    while at < end:
        conv, seq, cmid, created_at, ns, nd, nk, nb = unpack(payload, at)
        at += size
        sender = payload[at : at + ns].decode()
        at += ns
        device = payload[at : at + nd].decode()
        at += nd
        kind = payload[at : at + nk].decode()
        at += nk
        body = payload[at : at + nb]
        at += nb
        messages.append(new_stored_message(conv, seq, sender, device, cmid, body, kind, created_at))
    if at != end:
        raise ValueError("a record runs past the end of its frame")
    return messages


class MessageLog:
    """The log in ``directory`` (see the module documentation). Not thread-safe: the
    store calls it from its event loop only. ``segment_bytes`` is the size past which
    the next frame starts a new segment."""

    def __init__(self, directory: str, segment_bytes: int) -> None:
        self.directory: Final = directory
        self.segment_bytes: Final = segment_bytes
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._current = 0
        """The number of the segment being written."""
        self._size = 0
        self._closed: list[int] = []
        """Segments written to the end, oldest first."""

    @property
    def current(self) -> int:
        """The number of the segment the next frame goes to."""
        return self._current

    def segments(self) -> list[int]:
        """The numbers of the segment files on disk, oldest first."""
        return sorted(
            int(name[: -len(_SEGMENT)])
            for name in os.listdir(self.directory)
            if name.endswith(_SEGMENT) and name[: -len(_SEGMENT)].isdigit()
        )

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, f"{number:012d}{_SEGMENT}")

    def lock(self) -> bool:
        """Creates the directory if needed and takes its lock. False if another process
        holds it (then this object must not be used further)."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreUnavailableError(
                f"the message log {self.directory!r} cannot be opened ({exc}): check that "
                f"the database's directory is writable by this process"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def read(self, *, repair: bool = True) -> Iterator[StoredMessage]:
        """Every message in the log, in the order written, one segment in memory at a
        time. A damaged frame ends its
        segment: the process died in the middle of that write (at the end of the last
        segment: the frame was never acknowledged), or the machine lost power before
        the segment reached the disk (anywhere). ``repair`` (only the log's owner may)
        cuts the last segment there; a damage elsewhere is logged. Without the lock (a
        backup reading a running node's log), a segment removed meanwhile is skipped:
        its messages were in SQLite by then."""
        if not os.path.isdir(self.directory):
            return
        numbers = self.segments()
        for number in numbers:
            path = self._path(number)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                if repair:
                    raise
                continue
            at = 0
            while at < len(data):
                good = at + _FRAME.size <= len(data)
                if good:
                    magic, length, crc = _FRAME.unpack_from(data, at)
                    start = at + _FRAME.size
                    payload = data[start : start + length]
                    good = magic == _MAGIC and len(payload) == length and zlib.crc32(payload) == crc
                if good:
                    try:
                        messages = _decode_payload(payload)
                    except (ValueError, struct.error, UnicodeDecodeError):
                        good = False
                    else:
                        yield from messages
                if not good:
                    if number != numbers[-1]:
                        log.error(
                            "the message log segment %r is damaged at byte %d of %d: the "
                            "messages after it in that segment are lost",
                            path,
                            at,
                            len(data),
                        )
                    elif repair:
                        os.truncate(path, at)  # a torn write: never acknowledged
                    break
                at = start + length

    def start(self) -> None:
        """Removes every segment (their messages are in SQLite) and opens a new one."""
        numbers = self.segments()
        for number in numbers:
            os.unlink(self._path(number))
        self._closed = []
        self._open_segment((numbers[-1] if numbers else 0) + 1)

    def _open_segment(self, number: int) -> None:
        path = self._path(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fd = fd
        self._current = number
        self._size = 0

    def append(self, frame: bytes) -> int:
        """Writes ``frame`` whole; returns the number of its segment. Raises OSError
        (then nothing of the frame remains in the log)."""
        fd = self._fd
        assert fd is not None
        if self._size >= self.segment_bytes:
            self.rotate()
            fd = self._fd
            assert fd is not None
        try:
            written = os.write(fd, frame)
            if written != len(frame):
                raise OSError(f"short write to the message log: {written} of {len(frame)}")
        except OSError:
            os.ftruncate(fd, self._size)
            raise
        self._size += written
        return self._current

    def rotate(self) -> None:
        """Ends the current segment and starts the next. Neither is synced (that is what
        ``synchronous=NORMAL`` means); after a power loss, a message missing from an
        earlier segment makes the replay stop its conversation there (see
        :func:`bluewren.store.sqlite.replay_log`)."""
        fd = self._fd
        assert fd is not None
        os.close(fd)
        self._closed.append(self._current)
        self._open_segment(self._current + 1)

    def release(self, before: int) -> None:
        """Removes the ended segments numbered below ``before``."""
        keep: list[int] = []
        for number in self._closed:
            if number < before:
                os.unlink(self._path(number))
            else:
                keep.append(number)
        self._closed = keep

    def close(self, *, remove: bool) -> None:
        """Closes the log; ``remove`` deletes its segments (all of them are in SQLite)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if remove:
                self.release(self._current + 1)
                os.unlink(self._path(self._current))
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
