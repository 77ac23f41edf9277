# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The event loop's side of a WebSocket connection.

``WebSocketProtocol`` is an asyncio ``BufferedProtocol``. While a connection
holds no partial frame (nearly always) the loop reads its socket into one read
buffer shared by every connection of the thread, and ``buffer_updated`` copies
the bytes into the engine, which decodes them and keeps only what remains of an
unfinished frame; an idle connection therefore holds no read buffer at all.
While a frame is partly received the loop reads straight into that
connection's engine buffer instead (zero copy, so a large frame is never copied
twice). The engine is called through its C ABI, without a Python call. Every event
of one read is handled in one loop, and everything queued meanwhile (pongs, close
replies, messages sent by handlers) leaves in one ``transport.write``.

Subclasses decide policy by overriding ``request_received`` (accept or reject
the upgrade, choose the subprotocol) and ``message_received``. The payload
given to ``message_received`` is a ``bytes`` copy; Cython subclasses can
override the C-level ``_on_message`` to see the engine's buffer directly (valid
only during the call), as ``EchoProtocol`` does.
"""

import asyncio

from cpython.buffer cimport PyBUF_WRITE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdint cimport uint8_t, uint16_t

from bluewren cimport *

cdef extern from *:
    """
    /* One read buffer per thread: an event loop runs in one thread and hands
     * the buffer from get_buffer() to buffer_updated() before any other
     * connection of that loop reads, so its connections can share it. */
    static __thread unsigned char *bw_shared_read_buf = NULL;
    static unsigned char *bw_shared_read(size_t size) {
        if (bw_shared_read_buf == NULL)
            bw_shared_read_buf = (unsigned char *)PyMem_RawMalloc(size);
        return bw_shared_read_buf;
    }
    """
    uint8_t *bw_shared_read(size_t size)

cdef enum:
    READ_SIZE = 65536

OP_TEXT = 1
#: How long a connection we ended on an error keeps draining input before closing.
LINGER_SECONDS = 2.0
OP_BINARY = 2

cdef class WebSocketProtocol:
    """Server side of one WebSocket connection; see the module docstring.

    Limits (bytes, counts) are checked by the engine before it allocates:
    ``max_frame_size`` and ``max_message_size`` close the connection with 1009,
    ``max_request_bytes`` and ``max_headers`` reject the upgrade with 431.
    """

    cdef bw_conn *_conn
    cdef public object transport
    cdef bint _writing_paused
    cdef bint _shared_read
    cdef object _linger
    cdef readonly unsigned long long messages_in
    cdef readonly unsigned long long bytes_in

    def __cinit__(self, size_t max_frame_size=1 << 20, size_t max_message_size=1 << 20,
                  size_t max_request_bytes=8192, size_t max_headers=64):
        cdef bw_limits limits
        limits.max_frame_size = max_frame_size
        limits.max_message_size = max_message_size
        limits.max_request_bytes = max_request_bytes
        limits.max_headers = max_headers
        self._conn = bw_conn_new(&limits)
        if self._conn is NULL:
            raise MemoryError()

    def __dealloc__(self):
        bw_conn_free(self._conn)
        self._conn = NULL

    # -- asyncio.BufferedProtocol -------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, Py_ssize_t sizehint):
        cdef size_t n = 0
        cdef size_t want = <size_t>sizehint if sizehint > READ_SIZE else READ_SIZE
        cdef uint8_t *buf
        if bw_conn_buffered(self._conn) == 0:
            buf = bw_shared_read(READ_SIZE)
            if buf is not NULL:
                self._shared_read = True
                return PyMemoryView_FromMemory(<char *>buf, READ_SIZE, PyBUF_WRITE)
        self._shared_read = False
        buf = bw_conn_read_buf(self._conn, want, &n)
        return PyMemoryView_FromMemory(<char *>buf, <Py_ssize_t>n, PyBUF_WRITE)

    def buffer_updated(self, Py_ssize_t nbytes):
        if self._shared_read:
            self._shared_read = False
            bw_conn_feed(self._conn, bw_shared_read(READ_SIZE), <size_t>nbytes)
        else:
            bw_conn_commit(self._conn, <size_t>nbytes)
        self.bytes_in += <unsigned long long>nbytes
        self._process()
        bw_conn_shrink(self._conn)

    def eof_received(self):
        # Returning False lets the transport close itself.
        return False

    def connection_lost(self, exc):
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.closed(exc)
        self.transport = None

    def pause_writing(self):
        # The peer reads slower than we write: stop reading its input until
        # the transport drains, so a slow consumer cannot grow our buffers.
        self._writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self):
        self._writing_paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    # -- engine events --------------------------------------------------------------

    cdef _process(self):
        cdef bw_event ev
        cdef bint linger = False
        while bw_conn_poll(self._conn, &ev):
            if ev.kind == BW_EV_TEXT or ev.kind == BW_EV_BINARY:
                self.messages_in += 1
                self._on_message(1 if ev.kind == BW_EV_TEXT else 2, ev.data, ev.len)
            elif ev.kind == BW_EV_REQUEST:
                self._on_request()
            elif ev.kind == BW_EV_CLOSED or ev.kind == BW_EV_FAILED or ev.kind == BW_EV_REJECTED:
                # We end a connection the peer may still be writing to: linger.
                linger = ev.kind != BW_EV_CLOSED
                self.closing(ev.code, ev.reason[:ev.reason_len].decode("utf-8", "replace")
                             if ev.reason_len else "")
            # Pings are answered by the engine; pongs need nothing.
        self.flush()
        if bw_conn_phase(self._conn) == BW_CLOSED and self.transport is not None:
            if linger:
                self._lingering_close()
            elif self._linger is None:
                # The close handshake is complete; asyncio's close() sends what
                # is buffered before closing.
                self.transport.close()

    cdef _lingering_close(self):
        # Closing a socket with unread input makes the kernel send RST, which can
        # destroy our close frame or error response before the peer reads it. So
        # shut our side, keep discarding input (the engine drops it once closed)
        # until the peer closes or LINGER_SECONDS pass, then close.
        if self._linger is not None:
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(
            LINGER_SECONDS, self.transport.close)

    cdef _on_request(self):
        cdef const uint8_t *ptr
        cdef size_t n
        cdef size_t i = 0
        offered = []
        while bw_conn_request_protocol(self._conn, i, &ptr, &n):
            offered.append(ptr[:n].decode("utf-8", "replace"))
            i += 1
        path = ptr[:n].decode("utf-8", "replace") if bw_conn_request_path(self._conn, &ptr, &n) else "/"
        try:
            decision = self.request_received(path, offered)
        except Exception as exc:  # a failing policy hook must not kill the loop
            bw_conn_reject(self._conn, 500, b"internal error", 14)
            self.closing(500, repr(exc))
            return
        if decision is None or isinstance(decision, str):
            self._accept(decision)
        else:
            status, reason = decision
            reason_b = str(reason).encode()
            bw_conn_reject(self._conn, <uint16_t>status, reason_b, len(reason_b))

    cdef _accept(self, protocol):
        cdef bytes proto
        if protocol is None:
            bw_conn_accept(self._conn, NULL, 0)
        else:
            proto = protocol.encode()
            bw_conn_accept(self._conn, proto, len(proto))
        self.opened()

    cdef void _on_message(self, int opcode, const uint8_t *data, size_t n) except *:
        self.message_received(opcode, PyBytes_FromStringAndSize(<const char *>data, n))

    # -- API for subclasses and handlers --------------------------------------------

    def request_header(self, name):
        """The value of a header of the upgrade request, or None."""
        cdef const uint8_t *ptr
        cdef size_t n
        cdef bytes key = name.encode("latin-1")
        if bw_conn_request_header(self._conn, key, len(key), &ptr, &n):
            return ptr[:n].decode("latin-1")
        return None

    def request_received(self, str path, list offered):
        """Decide the upgrade: return a subprotocol name, None to accept with no
        subprotocol, or ``(status, reason)`` to reject. Default: accept, none."""
        return None

    def opened(self):
        """Called once the 101 response is queued."""

    def message_received(self, int opcode, bytes payload):
        """A complete message (``opcode`` 1 text, 2 binary). Default: ignore."""

    def closing(self, int code, str reason):
        """The connection is closing: a peer close (its code, 0 if none), a
        protocol error (the close code sent) or a rejected upgrade (HTTP status)."""

    def closed(self, exc):
        """The transport is gone."""

    cpdef send(self, int opcode, bytes payload):
        """Queue one message; it leaves at the next flush (end of this read pass)."""
        bw_conn_send(self._conn, <uint8_t>opcode, payload, len(payload))

    cpdef send_raw(self, bytes frames):
        """Queue already-encoded WebSocket frames (e.g. one fan-out frame shared by many)."""
        bw_conn_extend_out(self._conn, frames, len(frames))

    cpdef write_raw(self, bytes frames):
        """Write already-encoded WebSocket frames now, after anything queued. With
        nothing queued (the common case for fanned-out deliveries) the bytes go to
        the transport as they are: no copy through the output buffer."""
        cdef size_t n = 0
        bw_conn_out(self._conn, &n)
        if n == 0 and self.transport is not None:
            self.transport.write(frames)
        else:
            bw_conn_extend_out(self._conn, frames, len(frames))
            self.flush()

    cpdef close(self, int code=1000, str reason=""):
        """Send a close frame, flush and close the transport."""
        cdef bytes r = reason.encode()
        bw_conn_close(self._conn, <uint16_t>code, r, len(r))
        self.flush()
        if self.transport is not None:
            self.transport.close()

    cpdef flush(self):
        """Write everything queued in one call."""
        cdef size_t n = 0
        cdef const uint8_t *out = bw_conn_out(self._conn, &n)
        if n == 0 or self.transport is None:
            return
        self.transport.write(PyBytes_FromStringAndSize(<const char *>out, n))
        bw_conn_consume_out(self._conn, n)

    @property
    def writing_paused(self):
        """True while the transport's write buffer is above its high-water mark."""
        return self._writing_paused


cdef class _Echo(WebSocketProtocol):
    cdef void _on_message(self, int opcode, const uint8_t *data, size_t n) except *:
        # Straight from the read buffer to the output buffer: no Python object.
        bw_conn_send(self._conn, <uint8_t>opcode, data, n)


class BufferedWebSocketProtocol(WebSocketProtocol, asyncio.BufferedProtocol):
    """``WebSocketProtocol`` that is also an ``asyncio.BufferedProtocol`` (the stdlib
    loop checks the type; uvloop checks for ``get_buffer``). Subclass this one.

    It adds no ``__dict__``: a subclass that declares ``__slots__`` keeps its instances
    to the C struct and those slots (an idle connection's whole Python state)."""

    __slots__ = ()


class EchoProtocol(_Echo, asyncio.BufferedProtocol):
    """Echoes every message back, from the engine's buffer to its output buffer."""

    __slots__ = ()
