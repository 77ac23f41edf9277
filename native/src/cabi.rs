//! The C ABI declared in `native/include/bluewren.h`, for the Cython protocol
//! linked into this extension. Each function converts raw pointers and calls
//! [`bluewren_engine::conn::ServerConn`]; none holds logic of its own.
//!
//! Every pointer argument must be valid as the header documents; `conn` must
//! come from [`bw_conn_new`] and not yet be freed.

use std::{ptr, slice};

use bluewren_engine::conn::{ConnEvent, Phase, ServerConn};
use bluewren_engine::ws::{HandshakeLimits, OpCode, WsLimits};

/// `bw_limits` from the header.
#[repr(C)]
pub struct BwLimits {
    max_frame_size: usize,
    max_message_size: usize,
    max_request_bytes: usize,
    max_headers: usize,
}

/// `bw_event` from the header.
#[repr(C)]
pub struct BwEvent {
    kind: u32,
    code: u32,
    data: *const u8,
    len: usize,
    reason: *const u8,
    reason_len: usize,
}

/// `bw_conn` from the header: the connection plus storage for error text that
/// must outlive the call that reported it.
pub struct BwConn {
    conn: ServerConn,
    message: String,
}

unsafe fn bytes<'a>(data: *const u8, len: usize) -> &'a [u8] {
    if data.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller passes a readable buffer of `len` bytes.
        unsafe { slice::from_raw_parts(data, len) }
    }
}

unsafe fn text<'a>(data: *const u8, len: usize) -> &'a str {
    // SAFETY: forwarded caller contract; invalid UTF-8 degrades to "".
    std::str::from_utf8(unsafe { bytes(data, len) }).unwrap_or("")
}

unsafe fn put(out_ptr: *mut *const u8, out_len: *mut usize, value: &[u8]) {
    // SAFETY: the caller passes writable out-pointers.
    unsafe {
        *out_ptr = value.as_ptr();
        *out_len = value.len();
    }
}

#[no_mangle]
pub extern "C" fn bw_conn_new(limits: *const BwLimits) -> *mut BwConn {
    // SAFETY: `limits` is null or points to a bw_limits.
    let (ws, hs) = match unsafe { limits.as_ref() } {
        Some(l) => (
            WsLimits {
                max_frame_size: l.max_frame_size,
                max_message_size: l.max_message_size,
            },
            HandshakeLimits {
                max_request_bytes: l.max_request_bytes,
                max_headers: l.max_headers,
            },
        ),
        None => (WsLimits::default(), HandshakeLimits::default()),
    };
    Box::into_raw(Box::new(BwConn {
        conn: ServerConn::new(ws, hs),
        message: String::new(),
    }))
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_free(conn: *mut BwConn) {
    if !conn.is_null() {
        // SAFETY: `conn` came from bw_conn_new and is freed once.
        drop(unsafe { Box::from_raw(conn) });
    }
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_phase(conn: *const BwConn) -> i32 {
    // SAFETY: valid conn.
    match unsafe { &*conn }.conn.phase() {
        Phase::Handshake => 0,
        Phase::Pending => 1,
        Phase::Open => 2,
        Phase::Closed => 3,
    }
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_read_buf(
    conn: *mut BwConn,
    min: usize,
    len: *mut usize,
) -> *mut u8 {
    // SAFETY: valid conn and out-pointer.
    let buf = unsafe { &mut *conn }.conn.read_buf(min);
    unsafe { *len = buf.len() };
    buf.as_mut_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_commit(conn: *mut BwConn, n: usize) {
    // SAFETY: valid conn.
    unsafe { &mut *conn }.conn.commit(n);
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_feed(conn: *mut BwConn, data: *const u8, len: usize) {
    // SAFETY: valid conn and data buffer.
    unsafe { &mut *conn }.conn.feed(unsafe { bytes(data, len) });
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_buffered(conn: *const BwConn) -> usize {
    // SAFETY: valid conn.
    unsafe { &*conn }.conn.buffered()
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_shrink(conn: *mut BwConn) {
    // SAFETY: valid conn.
    unsafe { &mut *conn }.conn.shrink();
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_poll(conn: *mut BwConn, ev: *mut BwEvent) -> i32 {
    // SAFETY: valid conn and event out-pointer.
    let (c, ev) = unsafe { (&mut *conn, &mut *ev) };
    let (kind, code, data, reason): (u32, u32, &[u8], &[u8]) = match c.conn.poll() {
        None => {
            *ev = BwEvent {
                kind: 0,
                code: 0,
                data: ptr::null(),
                len: 0,
                reason: ptr::null(),
                reason_len: 0,
            };
            return 0;
        }
        Some(ConnEvent::Request) => (1, 0, &[], &[]),
        Some(ConnEvent::Rejected(err)) => {
            c.message = err.to_string();
            (2, u32::from(err.status()), &[], c.message.as_bytes())
        }
        Some(ConnEvent::Text(p)) => (3, 0, p, &[]),
        Some(ConnEvent::Binary(p)) => (4, 0, p, &[]),
        Some(ConnEvent::Ping(p)) => (5, 0, p, &[]),
        Some(ConnEvent::Pong(p)) => (6, 0, p, &[]),
        Some(ConnEvent::Closed { code, reason }) => {
            (7, u32::from(code.unwrap_or(0)), &[], reason.as_bytes())
        }
        Some(ConnEvent::Failed(err)) => (8, u32::from(err.close_code), &[], err.reason.as_bytes()),
    };
    *ev = BwEvent {
        kind,
        code,
        data: data.as_ptr(),
        len: data.len(),
        reason: reason.as_ptr(),
        reason_len: reason.len(),
    };
    1
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_request_path(
    conn: *const BwConn,
    out: *mut *const u8,
    len: *mut usize,
) -> i32 {
    // SAFETY: valid conn and out-pointers.
    match unsafe { &*conn }.conn.request() {
        Some(req) => {
            unsafe { put(out, len, req.path.as_bytes()) };
            1
        }
        None => 0,
    }
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_request_protocol(
    conn: *const BwConn,
    i: usize,
    out: *mut *const u8,
    len: *mut usize,
) -> i32 {
    // SAFETY: valid conn and out-pointers.
    match unsafe { &*conn }
        .conn
        .request()
        .and_then(|r| r.protocols.get(i))
    {
        Some(p) => {
            unsafe { put(out, len, p.as_bytes()) };
            1
        }
        None => 0,
    }
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_request_header(
    conn: *const BwConn,
    name: *const u8,
    name_len: usize,
    out: *mut *const u8,
    len: *mut usize,
) -> i32 {
    // SAFETY: valid conn, name buffer and out-pointers.
    let name = unsafe { bytes(name, name_len) };
    let found = unsafe { &*conn }.conn.request().and_then(|r| {
        r.headers
            .iter()
            .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    });
    match found {
        Some(v) => {
            unsafe { put(out, len, v.as_bytes()) };
            1
        }
        None => 0,
    }
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_accept(conn: *mut BwConn, protocol: *const u8, len: usize) -> i32 {
    // SAFETY: valid conn; protocol is null or a UTF-8 buffer of `len` bytes.
    let proto = (!protocol.is_null()).then(|| unsafe { text(protocol, len) });
    i32::from(unsafe { &mut *conn }.conn.accept(proto))
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_reject(
    conn: *mut BwConn,
    status: u16,
    reason: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: valid conn and reason buffer.
    i32::from(
        unsafe { &mut *conn }
            .conn
            .reject(status, unsafe { text(reason, len) }),
    )
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_send(conn: *mut BwConn, opcode: u8, data: *const u8, len: usize) {
    let op = if opcode == OpCode::Text as u8 {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    // SAFETY: valid conn and data buffer.
    unsafe { &mut *conn }
        .conn
        .send(op, unsafe { bytes(data, len) });
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_close(
    conn: *mut BwConn,
    code: u16,
    reason: *const u8,
    len: usize,
) {
    // SAFETY: valid conn and reason buffer.
    unsafe { &mut *conn }
        .conn
        .close(code, unsafe { text(reason, len) });
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_extend_out(conn: *mut BwConn, data: *const u8, len: usize) {
    // SAFETY: valid conn and data buffer.
    unsafe { &mut *conn }
        .conn
        .extend_out(unsafe { bytes(data, len) });
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_out(conn: *const BwConn, len: *mut usize) -> *const u8 {
    // SAFETY: valid conn and out-pointer.
    let out = unsafe { &*conn }.conn.out();
    unsafe { *len = out.len() };
    out.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn bw_conn_consume_out(conn: *mut BwConn, n: usize) {
    // SAFETY: valid conn.
    unsafe { &mut *conn }.conn.consume_out(n);
}
