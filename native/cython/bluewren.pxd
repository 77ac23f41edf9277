# Declarations of the engine's C ABI (include/bluewren.h) for Cython.
from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef extern from "bluewren.h" nogil:
    ctypedef struct bw_conn:
        pass

    ctypedef struct bw_limits:
        size_t max_frame_size
        size_t max_message_size
        size_t max_request_bytes
        size_t max_headers

    ctypedef struct bw_event:
        uint32_t kind
        uint32_t code
        const uint8_t *data
        size_t len
        const uint8_t *reason
        size_t reason_len

    enum:
        BW_EV_NONE
        BW_EV_REQUEST
        BW_EV_REJECTED
        BW_EV_TEXT
        BW_EV_BINARY
        BW_EV_PING
        BW_EV_PONG
        BW_EV_CLOSED
        BW_EV_FAILED

    enum:
        BW_HANDSHAKE
        BW_PENDING
        BW_OPEN
        BW_CLOSED

    bw_conn *bw_conn_new(const bw_limits *limits)
    void bw_conn_free(bw_conn *conn)
    int bw_conn_phase(const bw_conn *conn)
    uint8_t *bw_conn_read_buf(bw_conn *conn, size_t min, size_t *len)
    void bw_conn_commit(bw_conn *conn, size_t n)
    void bw_conn_feed(bw_conn *conn, const uint8_t *data, size_t len)
    size_t bw_conn_buffered(const bw_conn *conn)
    void bw_conn_shrink(bw_conn *conn)
    int bw_conn_poll(bw_conn *conn, bw_event *ev)
    int bw_conn_request_path(const bw_conn *conn, const uint8_t **ptr, size_t *len)
    int bw_conn_request_protocol(const bw_conn *conn, size_t i, const uint8_t **ptr, size_t *len)
    int bw_conn_request_header(const bw_conn *conn, const uint8_t *name, size_t name_len,
                               const uint8_t **ptr, size_t *len)
    int bw_conn_accept(bw_conn *conn, const uint8_t *protocol, size_t len)
    int bw_conn_reject(bw_conn *conn, uint16_t status, const uint8_t *reason, size_t len)
    void bw_conn_send(bw_conn *conn, uint8_t opcode, const uint8_t *data, size_t len)
    void bw_conn_close(bw_conn *conn, uint16_t code, const uint8_t *reason, size_t len)
    void bw_conn_extend_out(bw_conn *conn, const uint8_t *data, size_t len)
    const uint8_t *bw_conn_out(const bw_conn *conn, size_t *len)
    void bw_conn_consume_out(bw_conn *conn, size_t n)
