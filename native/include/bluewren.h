/*
 * bluewren.h: the C ABI of the BlueWren engine, exported by the _native
 * extension and called by the Cython event-loop protocol linked into it.
 *
 * A bw_conn is the server side of one WebSocket connection. The protocol reads
 * the socket straight into bw_conn_read_buf(), calls bw_conn_commit(), drains
 * bw_conn_poll() and writes bw_conn_out() in one call. Pointers returned by any
 * function stay valid until the next call on the same bw_conn. A bw_conn is not
 * thread-safe; the event loop owns it.
 */
#ifndef BLUEWREN_H
#define BLUEWREN_H

#include <stddef.h>
#include <stdint.h>

typedef struct bw_conn bw_conn;

typedef struct bw_limits {
    size_t max_frame_size;    /* largest WebSocket frame payload accepted */
    size_t max_message_size;  /* largest reassembled message accepted */
    size_t max_request_bytes; /* largest upgrade request accepted */
    size_t max_headers;       /* most header lines in the upgrade request */
} bw_limits;

enum bw_event_kind {
    BW_EV_NONE = 0,     /* need more bytes */
    BW_EV_REQUEST = 1,  /* upgrade request parsed: accept or reject it */
    BW_EV_REJECTED = 2, /* bad request: response queued; code = HTTP status */
    BW_EV_TEXT = 3,     /* data = UTF-8 message */
    BW_EV_BINARY = 4,   /* data = binary message */
    BW_EV_PING = 5,     /* pong already queued */
    BW_EV_PONG = 6,
    BW_EV_CLOSED = 7,   /* peer closed; reply queued; code = peer's code or 0 */
    BW_EV_FAILED = 8    /* protocol error; close queued; code = close code */
};

enum bw_phase { BW_HANDSHAKE = 0, BW_PENDING = 1, BW_OPEN = 2, BW_CLOSED = 3 };

typedef struct bw_event {
    uint32_t kind;          /* enum bw_event_kind */
    uint32_t code;          /* see bw_event_kind */
    const uint8_t *data;    /* payload, or NULL */
    size_t len;
    const uint8_t *reason;  /* UTF-8 close or error reason, or NULL */
    size_t reason_len;
} bw_event;

bw_conn *bw_conn_new(const bw_limits *limits);
void bw_conn_free(bw_conn *conn);
int bw_conn_phase(const bw_conn *conn);

uint8_t *bw_conn_read_buf(bw_conn *conn, size_t min, size_t *len);
void bw_conn_commit(bw_conn *conn, size_t n);
/* Copies len bytes in, as if read into bw_conn_read_buf() and committed. */
void bw_conn_feed(bw_conn *conn, const uint8_t *data, size_t len);
/* Bytes received but not yet handled (a partial request or frame). While it is
 * 0 the socket may be read into a shared buffer and the bytes given to
 * bw_conn_feed(). */
size_t bw_conn_buffered(const bw_conn *conn);
/* Frees the input buffers if they hold nothing: an idle connection keeps none. */
void bw_conn_shrink(bw_conn *conn);
int bw_conn_poll(bw_conn *conn, bw_event *ev);

/* The pending request: path, i-th offered subprotocol, a header by name. Return 1 if present. */
int bw_conn_request_path(const bw_conn *conn, const uint8_t **ptr, size_t *len);
int bw_conn_request_protocol(const bw_conn *conn, size_t i, const uint8_t **ptr, size_t *len);
int bw_conn_request_header(const bw_conn *conn, const uint8_t *name, size_t name_len,
                           const uint8_t **ptr, size_t *len);
int bw_conn_accept(bw_conn *conn, const uint8_t *protocol, size_t len);
int bw_conn_reject(bw_conn *conn, uint16_t status, const uint8_t *reason, size_t len);

void bw_conn_send(bw_conn *conn, uint8_t opcode, const uint8_t *data, size_t len);
void bw_conn_close(bw_conn *conn, uint16_t code, const uint8_t *reason, size_t len);
void bw_conn_extend_out(bw_conn *conn, const uint8_t *data, size_t len);
const uint8_t *bw_conn_out(const bw_conn *conn, size_t *len);
void bw_conn_consume_out(bw_conn *conn, size_t n);

#endif
