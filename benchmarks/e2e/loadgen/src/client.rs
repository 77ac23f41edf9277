//! The load generator's event loop: one thread, epoll (edge-triggered),
//! nonblocking sockets, one read buffer per connection (the WebSocket
//! decoder's), writes batched per loop pass and connection.
//!
//! Phases: set up every connection (connect, upgrade, and for BlueWren HELLO
//! then SYNC), at most `connect_burst` at a time; then either hold (idle) or
//! send: warm-up, the measured window, and a drain in which nothing new is
//! sent and messages in flight may still complete.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bluewren_engine::frame::{self, FrameLimits, Header};
use bluewren_engine::ws::{self, Decoder, Event as WsEvent, OpCode, Role, WsLimits};
use serde::Serialize;
use serde_json::{json, Value};

use crate::body::{self, Stamp};
use crate::hist::Histogram;
use crate::plan::{Plan, Protocol, Workload};
use crate::sys::{self, Epoll, EDGE, HANGUP, READABLE, WRITABLE};

/// BlueWren frame kinds used here (docs/protocol.md).
mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const SEND: u8 = 0x10;
    pub const ACK: u8 = 0x11;
    pub const DELIVER: u8 = 0x12;
    pub const SYNC: u8 = 0x20;
    pub const SYNCED: u8 = 0x21;
    pub const CURSOR: u8 = 0x40;
    pub const ERROR: u8 = 0x7F;
}

/// The WebSocket subprotocol of BlueWren's binary frames.
const SUBPROTOCOL: &str = "bluewren.v1";
/// Events returned by one epoll wait.
const EVENTS_PER_WAIT: usize = 1024;
/// Memory all read buffers together aim at; each gets a share, 4-32 KiB.
/// At most 32 KiB so that a partial frame plus a read fits the 64 KiB the
/// decoder keeps between reads (more would reallocate on every read).
const READ_BUDGET: usize = 32 << 20;
const MIN_READ_CHUNK: usize = 4 << 10;
const MAX_READ_CHUNK: usize = 32 << 10;
/// Largest WebSocket message accepted from the server (SYNC replays pack
/// many DELIVER frames in one).
const MAX_WS_MESSAGE: usize = 16 << 20;
/// Open loop: outstanding messages per sender are bounded by this many
/// seconds of its rate (or `in_flight`, if larger).
const OPEN_LOOP_HORIZON_S: f64 = 2.0;
/// Most outstanding-message slots per sender in open loop.
const MAX_OPEN_LOOP_SLOTS: usize = 1 << 22;
/// After a BlueWren run: how long to wait for the final CURSOR commands to
/// be written (and any ERROR answer) before closing.
const CURSOR_GRACE: Duration = Duration::from_millis(300);
/// Longest error text kept for the result.
const MAX_ERROR_TEXT: usize = 300;

/// Error counts by cause.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Errors {
    /// Connect refused (ECONNREFUSED).
    pub connect_refused: u64,
    /// No local address or port left (EADDRNOTAVAIL, EADDRINUSE on bind/connect).
    pub addr_not_available: u64,
    /// Out of file descriptors (EMFILE, ENFILE).
    pub too_many_open_files: u64,
    /// Any other connect failure.
    pub connect_other: u64,
    /// Not set up within `connect_timeout_s`.
    pub setup_timeout: u64,
    /// The WebSocket upgrade was refused or invalid.
    pub handshake: u64,
    /// HELLO or SYNC answered with ERROR.
    pub hello_refused: u64,
    /// The server closed a connection (close frame or EOF).
    pub closed_by_server: u64,
    /// The server broke RFC 6455.
    pub websocket: u64,
    /// A binary message did not decode as BlueWren frames.
    pub frame: u64,
    /// ERROR events after setup (e.g. a refused SEND).
    pub server_error: u64,
    /// A delivered body without a valid stamp.
    pub bad_body: u64,
    /// Other socket errors.
    pub io: u64,
}

impl Errors {
    /// All errors together.
    pub fn total(&self) -> u64 {
        let Self {
            connect_refused,
            addr_not_available,
            too_many_open_files,
            connect_other,
            setup_timeout,
            handshake,
            hello_refused,
            closed_by_server,
            websocket,
            frame,
            server_error,
            bad_body,
            io,
        } = *self;
        connect_refused
            + addr_not_available
            + too_many_open_files
            + connect_other
            + setup_timeout
            + handshake
            + hello_refused
            + closed_by_server
            + websocket
            + frame
            + server_error
            + bad_body
            + io
    }
}

#[derive(Clone, Copy)]
enum Cause {
    ConnectRefused,
    AddrNotAvailable,
    TooManyFiles,
    ConnectOther,
    SetupTimeout,
    Handshake,
    HelloRefused,
    Closed,
    WebSocket,
    Frame,
    Io,
}

fn connect_cause(err: &io::Error) -> Cause {
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => Cause::ConnectRefused,
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => Cause::AddrNotAvailable,
        Some(libc::EMFILE | libc::ENFILE) => Cause::TooManyFiles,
        _ => Cause::ConnectOther,
    }
}

/// What a run produced: the result JSON and, if the run failed, why.
pub struct Outcome {
    /// The result object written to `--out`.
    pub result: Value,
    /// `Some(reason)` if the run failed (exit code 1).
    pub failure: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Connecting,
    Handshake,
    Hello,
    Sync,
    Ready,
}

struct Conn {
    stream: TcpStream,
    st: St,
    dec: Decoder,
    hs: Vec<u8>,
    key: String,
    out: Vec<u8>,
    out_pos: usize,
    mask: [u8; 4],
    /// The conversation of the first DELIVER or ACK seen and the highest
    /// `seq` seen in it, confirmed with CURSOR at the end so that the next
    /// run's SYNC replays nothing.
    cursor: (u64, u64),
}

#[derive(Clone, Copy, Default)]
struct Slot {
    seq: u32,
    remaining: u32,
}

struct Sender {
    conn: usize,
    conv: u64,
    expect: u32,
    cmid_base: u64,
    next_seq: u32,
    outstanding: u32,
    /// Most outstanding at once (closed loop: `in_flight`).
    limit: u32,
    slots: Vec<Slot>,
    mask: u32,
    /// Messages owed and not yet emitted; the sender is in `Ctx::dirty`
    /// exactly while this is not 0.
    owed: u32,
    /// BlueWren: SENDs not yet acknowledged.
    unacked: u32,
    /// Open loop: sends scheduled so far (sent or skipped).
    scheduled: u64,
}

#[derive(Default)]
struct Counters {
    sent: u64,
    completed: u64,
    deliveries: u64,
    extra: u64,
    abandoned: u64,
    skipped: u64,
    acks: u64,
    replayed: u64,
}

struct Ctx {
    protocol: Protocol,
    senders: Vec<Sender>,
    dirty: Vec<u32>,
    hist: Histogram,
    in_window: bool,
    sending: bool,
    closed_loop: bool,
    /// Connections that finished setup since the last pass.
    newly_ready: usize,
    n: Counters,
    errors: Errors,
    first_error: Option<String>,
    /// Padding of every body; the stamp is written over its start.
    body: Vec<u8>,
    limits: FrameLimits,
}

impl Ctx {
    fn note(&mut self, text: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            let mut t = text();
            if t.len() > MAX_ERROR_TEXT {
                let mut cut = MAX_ERROR_TEXT;
                while !t.is_char_boundary(cut) {
                    cut -= 1;
                }
                t.truncate(cut);
            }
            self.first_error = Some(t);
        }
    }

    fn count(&mut self, cause: Cause) {
        let e = &mut self.errors;
        *match cause {
            Cause::ConnectRefused => &mut e.connect_refused,
            Cause::AddrNotAvailable => &mut e.addr_not_available,
            Cause::TooManyFiles => &mut e.too_many_open_files,
            Cause::ConnectOther => &mut e.connect_other,
            Cause::SetupTimeout => &mut e.setup_timeout,
            Cause::Handshake => &mut e.handshake,
            Cause::HelloRefused => &mut e.hello_refused,
            Cause::Closed => &mut e.closed_by_server,
            Cause::WebSocket => &mut e.websocket,
            Cause::Frame => &mut e.frame,
            Cause::Io => &mut e.io,
        } += 1;
    }

    /// One delivered body received at `now_ns`.
    #[inline]
    fn deliver(&mut self, body: &[u8], now_ns: u64) {
        let Some(st) = body::read_stamp(body) else {
            self.errors.bad_body += 1;
            return;
        };
        let Some(s) = self.senders.get_mut(st.sender as usize) else {
            self.errors.bad_body += 1;
            return;
        };
        if self.in_window {
            self.n.deliveries += 1;
            self.hist.record(now_ns.saturating_sub(st.sent_ns) / 1000);
        }
        let slot = &mut s.slots[(st.seq & s.mask) as usize];
        if slot.remaining == 0 || slot.seq != st.seq {
            self.n.extra += 1;
            return;
        }
        slot.remaining -= 1;
        if slot.remaining == 0 {
            s.outstanding -= 1;
            if self.in_window {
                self.n.completed += 1;
            }
            if self.sending && self.closed_loop {
                self.owe(st.sender as usize, 1);
            }
        }
    }

    /// Sender `si` owes `k` more messages (emitted by the next `emit_owed`).
    fn owe(&mut self, si: usize, k: u32) {
        let s = &mut self.senders[si];
        if k == 0 {
            return;
        }
        if s.owed == 0 {
            self.dirty.push(si as u32);
        }
        s.owed = s.owed.saturating_add(k);
    }
}

/// Appends one masked binary WebSocket frame carrying a stamped message.
#[allow(clippy::too_many_arguments)]
fn encode_message(
    out: &mut Vec<u8>,
    mask: [u8; 4],
    protocol: Protocol,
    conv: u64,
    cmid: u64,
    padding: &[u8],
    stamp: Stamp,
) {
    let prefix = if protocol == Protocol::Bluewren {
        frame::HEADER_LEN
    } else {
        0
    };
    ws::write_frame_header(
        out,
        OpCode::Binary,
        prefix + padding.len(),
        true,
        Some(mask),
    );
    let start = out.len();
    if protocol == Protocol::Bluewren {
        let h = Header {
            kind: kind::SEND,
            flags: 0,
            conv,
            seq: 0,
            cmid,
        };
        out.extend_from_slice(&frame::encode_header(&h, padding.len() as u32));
    }
    let body_at = out.len();
    out.extend_from_slice(padding);
    body::stamp(&mut out[body_at..], stamp);
    ws::apply_mask(&mut out[start..], mask, 0);
}

fn encode_control(out: &mut Vec<u8>, mask: [u8; 4], k: u8, body: &[u8]) {
    let h = Header {
        kind: k,
        ..Header::default()
    };
    encode_command(out, mask, &h, body);
}

fn encode_command(out: &mut Vec<u8>, mask: [u8; 4], header: &Header, body: &[u8]) {
    let mut payload = Vec::with_capacity(frame::HEADER_LEN + body.len());
    frame::encode(&mut payload, header, body);
    ws::encode_frame(out, OpCode::Binary, &payload, true, Some(mask));
}

/// Moves a connection's cursor to `seq` of `conv` (first conversation only).
#[inline]
fn advance(cursor: &mut (u64, u64), conv: u64, seq: u64) {
    if cursor.0 == 0 {
        cursor.0 = conv;
    }
    if cursor.0 == conv && seq > cursor.1 {
        cursor.1 = seq;
    }
}

/// Writes what `out` holds until done or the socket is full.
fn flush(c: &mut Conn) -> io::Result<()> {
    sys::flush_out(&c.stream, &mut c.out, &mut c.out_pos)
}

/// Messages sender `si` of `n` owes `elapsed` seconds into an open-loop run at
/// `rate` messages/s each. The senders' schedules are staggered by `1 / n` of a
/// period, so that `n` senders offer an even stream rather than bursts of `n`.
fn paced_due(elapsed: f64, rate: f64, si: usize, n: usize) -> u64 {
    (elapsed * rate + si as f64 / n.max(1) as f64) as u64
}

/// When message `index` (0-based) of sender `si` of `n` falls due in an
/// open-loop run at `rate` messages/s each that started at `t0_ns`: the
/// first time at which [`paced_due`] exceeds `index`, i.e.
/// `t0 + (index + 1 - si/n) / rate`. Open-loop messages are stamped with
/// it, so that a generator falling behind its schedule shows in latency.
fn paced_due_ns(t0_ns: u64, rate: f64, index: u64, si: usize, n: usize) -> u64 {
    let periods = (index + 1) as f64 - si as f64 / n.max(1) as f64;
    t0_ns + (periods / rate * 1e9) as u64
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The loop state shared by every phase.
struct Gen<'a> {
    plan: &'a Plan,
    start: Instant,
    ep: Epoll,
    events: Vec<sys::Event>,
    conns: Vec<Option<Conn>>,
    ctx: Ctx,
    nonce: u64,
    chunk: usize,
    launched: usize,
    ready: usize,
    failed: usize,
    /// Ready connections lost later.
    dropped: usize,
    /// Per connection, its index among the senders.
    sender_of: Vec<Option<u32>>,
    /// Open loop, once sending: when the schedule started (ns since
    /// `start`) and each sender's rate (messages/s).
    pace: Option<(u64, f64)>,
}

impl<'a> Gen<'a> {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Connections launched and neither ready nor failed yet.
    fn in_setup(&self) -> usize {
        self.launched - self.ready - self.failed
    }

    fn close(&mut self, i: usize, cause: Cause, text: impl FnOnce() -> String) {
        let Some(c) = self.conns[i].take() else {
            return;
        };
        let _ = self.ep.delete(c.stream.as_raw_fd());
        if c.st == St::Ready {
            // Counted as ready (now or at the end of this pass); now lost.
            self.dropped += 1;
        } else {
            self.failed += 1;
        }
        self.ctx.count(cause);
        let st = c.st;
        self.ctx
            .note(|| format!("connection {i} ({st:?}): {}", text()));
    }

    fn launch(&mut self, i: usize) {
        let plan = self.plan;
        let src = (!plan.sources.is_empty()).then(|| plan.sources[i % plan.sources.len()]);
        let server = plan.server.expect("validated plan has a server address");
        self.launched += 1;
        let stream = match sys::connect_nonblocking(src, server) {
            Ok(s) => s,
            Err(e) => {
                self.failed += 1;
                self.ctx.count(connect_cause(&e));
                self.ctx
                    .note(|| format!("connection {i}: connect from {src:?}: {e}"));
                return;
            }
        };
        if let Err(e) = self.ep.add(
            stream.as_raw_fd(),
            READABLE | WRITABLE | HANGUP | EDGE,
            i as u64,
        ) {
            self.failed += 1;
            self.ctx.count(Cause::Io);
            self.ctx.note(|| format!("connection {i}: epoll: {e}"));
            return;
        }
        let r = splitmix(self.nonce ^ i as u64);
        let key = ws::client_key(
            [r.to_le_bytes(), splitmix(r).to_le_bytes()]
                .concat()
                .try_into()
                .unwrap_or([7; 16]),
        );
        let limits = WsLimits {
            max_frame_size: MAX_WS_MESSAGE,
            max_message_size: MAX_WS_MESSAGE,
        };
        self.conns[i] = Some(Conn {
            stream,
            st: St::Connecting,
            dec: Decoder::new(Role::Client, limits),
            hs: Vec::new(),
            key,
            out: Vec::new(),
            out_pos: 0,
            mask: (r as u32 | 1).to_le_bytes(),
            cursor: (0, 0),
        });
    }

    /// Handles one readiness event of connection `i`.
    fn on_event(&mut self, i: usize, bits: u32) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        if c.st == St::Connecting {
            if bits & (WRITABLE | HANGUP) == 0 {
                return;
            }
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    let cause = connect_cause(&e);
                    return self.close(i, cause, || format!("connect: {e}"));
                }
            }
            c.st = St::Handshake;
            let plan = self.plan;
            let path = match plan.protocol {
                Protocol::Bluewren => "/".to_string(),
                Protocol::Room => {
                    format!(
                        "/?room={}",
                        plan.connections[i].room.as_deref().unwrap_or("")
                    )
                }
            };
            let protocols: &[&str] = match plan.protocol {
                Protocol::Bluewren => &[SUBPROTOCOL],
                Protocol::Room => &[],
            };
            let host = plan.server.map(|s| s.to_string()).unwrap_or_default();
            ws::write_client_request(&mut c.out, &host, &path, &c.key, protocols);
        }
        if bits & (READABLE | HANGUP) != 0 {
            self.read(i, bits);
        }
        if let Some(c) = self.conns[i].as_mut() {
            if !c.out.is_empty() {
                if let Err(e) = flush(c) {
                    self.close(i, Cause::Io, || format!("write: {e}"));
                }
            }
        }
    }

    /// Reads connection `i` until the socket is drained; `bits` are the
    /// event's.
    fn read(&mut self, i: usize, bits: u32) {
        let chunk = self.chunk;
        loop {
            let Some(c) = self.conns[i].as_mut() else {
                return;
            };
            if c.st == St::Handshake {
                let mut tmp = [0u8; 4096];
                let n = match (&c.stream).read(&mut tmp) {
                    Ok(0) => {
                        return self.close(i, Cause::Closed, || "EOF during the upgrade".into())
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return self.close(i, Cause::Io, || format!("read: {e}")),
                };
                c.hs.extend_from_slice(&tmp[..n]);
                match ws::parse_response(&c.hs, &c.key, &ws::HandshakeLimits::default()) {
                    Ok(None) => continue,
                    Err(e) => return self.close(i, Cause::Handshake, || format!("upgrade: {e}")),
                    Ok(Some((resp, used))) => {
                        if self.plan.protocol == Protocol::Bluewren
                            && resp.protocol.as_deref() != Some(SUBPROTOCOL)
                        {
                            let got = resp.protocol.clone();
                            return self.close(i, Cause::Handshake, || {
                                format!(
                                    "upgrade: server chose subprotocol {got:?}, not {SUBPROTOCOL}"
                                )
                            });
                        }
                        let rest = c.hs.split_off(used);
                        c.hs = Vec::new();
                        c.dec.feed(&rest);
                        match self.plan.protocol {
                            Protocol::Bluewren => {
                                c.st = St::Hello;
                                let token = self.plan.connections[i].token.as_deref();
                                let token = token.unwrap_or("").as_bytes();
                                encode_control(&mut c.out, c.mask, kind::HELLO, token);
                            }
                            Protocol::Room => {
                                c.st = St::Ready;
                                self.ctx.newly_ready += 1;
                            }
                        }
                        let now = self.now_ns();
                        if !self.process(i, now) {
                            return;
                        }
                        continue;
                    }
                }
            }
            let buf = c.dec.read_buf(chunk);
            let want = buf.len();
            match (&c.stream).read(buf) {
                Ok(0) => {
                    return self.close(i, Cause::Closed, || {
                        "server closed the TCP connection (EOF)".into()
                    })
                }
                Ok(n) => {
                    c.dec.commit(n);
                    let now = self.now_ns();
                    if !self.process(i, now) {
                        return;
                    }
                    // A short read drained the socket; with edge triggering,
                    // later bytes raise a new event. A hang-up that came
                    // with the data raises none: read on to the EOF.
                    if n < want && bits & HANGUP == 0 {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(i, Cause::Io, || format!("read: {e}")),
            }
        }
    }

    /// Handles every complete WebSocket message of connection `i`; false if
    /// the connection was closed.
    fn process(&mut self, i: usize, now: u64) -> bool {
        let sender = self.sender_of[i];
        let Some(c) = self.conns[i].as_mut() else {
            return false;
        };
        let Conn {
            dec,
            out,
            st,
            mask,
            cursor,
            ..
        } = c;
        let ctx = &mut self.ctx;
        let mut fail: Option<(Cause, String)> = None;
        loop {
            match dec.poll() {
                Ok(None) => break,
                Ok(Some(WsEvent::Binary(payload))) => match ctx.protocol {
                    Protocol::Room => {
                        if *st == St::Ready {
                            ctx.deliver(payload, now);
                        }
                    }
                    Protocol::Bluewren => {
                        for f in frame::frames(payload, &ctx.limits) {
                            let f = match f {
                                Ok(f) => f,
                                Err(e) => {
                                    fail = Some((Cause::Frame, format!("bad frame: {e}")));
                                    break;
                                }
                            };
                            if matches!(f.header.kind, kind::DELIVER | kind::ACK) {
                                advance(cursor, f.header.conv, f.header.seq);
                            }
                            match f.header.kind {
                                kind::DELIVER if *st == St::Ready => {
                                    if f.header.flags != 0 {
                                        ctx.errors.bad_body += 1;
                                    } else if let Some(b) = body::envelope_body(f.body) {
                                        ctx.deliver(b, now);
                                    } else {
                                        ctx.errors.bad_body += 1;
                                    }
                                }
                                kind::DELIVER => ctx.n.replayed += 1,
                                kind::ACK => {
                                    ctx.n.acks += 1;
                                    if let Some(s) =
                                        sender.and_then(|s| ctx.senders.get_mut(s as usize))
                                    {
                                        s.unacked = s.unacked.saturating_sub(1);
                                    }
                                }
                                kind::WELCOME if *st == St::Hello => {
                                    *st = St::Sync;
                                    encode_control(out, *mask, kind::SYNC, b"{}");
                                }
                                kind::SYNCED if *st == St::Sync => {
                                    *st = St::Ready;
                                    ctx.newly_ready += 1;
                                }
                                kind::ERROR if matches!(*st, St::Hello | St::Sync) => {
                                    let text = String::from_utf8_lossy(f.body).into_owned();
                                    fail = Some((Cause::HelloRefused, format!("ERROR: {text}")));
                                    break;
                                }
                                kind::ERROR => {
                                    ctx.errors.server_error += 1;
                                    ctx.note(|| {
                                        format!(
                                            "connection {i}: ERROR {}",
                                            String::from_utf8_lossy(f.body)
                                        )
                                    });
                                }
                                _ => {}
                            }
                        }
                        if fail.is_some() {
                            break;
                        }
                    }
                },
                Ok(Some(WsEvent::Ping(p))) => {
                    ws::encode_frame(out, OpCode::Pong, p, true, Some(*mask));
                }
                Ok(Some(WsEvent::Close { code, reason })) => {
                    fail = Some((
                        Cause::Closed,
                        format!("server closed with code {code:?}: {reason}"),
                    ));
                    break;
                }
                Ok(Some(WsEvent::Text(_) | WsEvent::Pong(_))) => {}
                Err(e) => {
                    fail = Some((Cause::WebSocket, format!("WebSocket: {e}")));
                    break;
                }
            }
        }
        if let Some((cause, text)) = fail {
            self.close(i, cause, || text);
            return false;
        }
        true
    }

    /// Emits what every dirty sender owes and flushes its connection.
    /// Closed loop: each message is stamped with the time it is written;
    /// open loop: with the time it fell due (see [`paced_due_ns`]).
    fn emit_owed(&mut self) {
        let dirty = std::mem::take(&mut self.ctx.dirty);
        let n_senders = self.ctx.senders.len();
        for &si in &dirty {
            let now = self.now_ns();
            let s = &mut self.ctx.senders[si as usize];
            let owed = std::mem::take(&mut s.owed);
            let Some(c) = self.conns[s.conn].as_mut() else {
                continue;
            };
            // Open loop: the owed messages are the last `owed` scheduled
            // (closed loop schedules nothing).
            let first_index = match self.pace {
                Some(_) => s.scheduled - u64::from(owed),
                None => 0,
            };
            for k in 0..owed {
                if s.outstanding >= s.limit || s.next_seq == u32::MAX {
                    if self.ctx.in_window {
                        self.ctx.n.skipped += u64::from(owed - k);
                    }
                    break;
                }
                let seq = s.next_seq;
                s.next_seq += 1;
                let slot = &mut s.slots[(seq & s.mask) as usize];
                if slot.remaining != 0 {
                    // A message this old never completed: give it up.
                    self.ctx.n.abandoned += 1;
                    s.outstanding -= 1;
                }
                *slot = Slot {
                    seq,
                    remaining: s.expect,
                };
                s.outstanding += 1;
                if self.ctx.protocol == Protocol::Bluewren {
                    s.unacked += 1;
                }
                if self.ctx.in_window {
                    self.ctx.n.sent += 1;
                }
                let sent_ns = match self.pace {
                    Some((t0_ns, rate)) => paced_due_ns(
                        t0_ns,
                        rate,
                        first_index + u64::from(k),
                        si as usize,
                        n_senders,
                    ),
                    None => now,
                };
                let stamp = Stamp {
                    sent_ns,
                    sender: si,
                    seq,
                };
                encode_message(
                    &mut c.out,
                    c.mask,
                    self.ctx.protocol,
                    s.conv,
                    s.cmid_base + u64::from(seq) + 1,
                    &self.ctx.body,
                    stamp,
                );
            }
            let conn = s.conn;
            if let Some(c) = self.conns[conn].as_mut() {
                if let Err(e) = flush(c) {
                    self.close(conn, Cause::Io, || format!("write: {e}"));
                }
            }
        }
        self.ctx.dirty = dirty;
        self.ctx.dirty.clear();
    }

    /// One wait and its events; returns after at most `timeout_ms`.
    fn pass(&mut self, timeout_ms: i32) -> io::Result<()> {
        let mut events = std::mem::take(&mut self.events);
        self.ep.wait(&mut events, timeout_ms)?;
        for ev in &events {
            self.on_event(ev.token as usize, ev.bits);
        }
        self.events = events;
        let newly = std::mem::take(&mut self.ctx.newly_ready);
        self.ready += newly;
        self.emit_owed();
        Ok(())
    }

    /// Sends each connection's CURSOR (what a client does with what it has
    /// received) and gives the node `CURSOR_GRACE` to take them.
    fn confirm_cursors(&mut self) -> io::Result<()> {
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            let (conv, seq) = c.cursor;
            if c.st != St::Ready || seq == 0 {
                continue;
            }
            let h = Header {
                kind: kind::CURSOR,
                conv,
                seq,
                ..Header::default()
            };
            encode_command(&mut c.out, c.mask, &h, b"");
            if let Err(e) = flush(c) {
                self.close(i, Cause::Io, || format!("write: {e}"));
            }
        }
        let end = Instant::now() + CURSOR_GRACE;
        while Instant::now() < end {
            let left = end.saturating_duration_since(Instant::now());
            self.pass(left.as_millis().clamp(1, 50) as i32)?;
        }
        Ok(())
    }

    /// Sets every connection up, `connect_burst` at a time. Returns the
    /// seconds it took.
    fn setup(&mut self) -> io::Result<f64> {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs_f64(self.plan.connect_timeout_s);
        let n = self.plan.connections.len();
        while self.ready + self.failed < n {
            while self.launched < n && self.in_setup() < self.plan.connect_burst {
                self.launch(self.launched);
            }
            if Instant::now() >= deadline {
                for i in 0..n {
                    if self.conns[i].as_ref().is_some_and(|c| c.st != St::Ready) {
                        self.close(i, Cause::SetupTimeout, || {
                            "not set up within connect_timeout_s".into()
                        });
                    }
                }
                self.failed += n - self.launched;
                self.ctx.errors.setup_timeout += (n - self.launched) as u64;
                self.launched = n;
                break;
            }
            self.pass(50)?;
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}

/// Runs the plan. `ready_out` receives the idle workload's `READY n` line.
pub fn run(plan: &Plan, start: Instant, ready_out: &mut dyn Write) -> io::Result<Outcome> {
    let n = plan.connections.len();
    let limit = sys::raise_fd_limit(n as u64 + 64);
    let senders_idx = plan.senders();
    let closed_loop = plan.rate.is_none();
    let per_sender_rate = plan
        .rate
        .map(|r| r / senders_idx.len().max(1) as f64)
        .unwrap_or(0.0);
    let nonce = splitmix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id()),
    );
    let senders = senders_idx
        .iter()
        .enumerate()
        .map(|(si, &ci)| {
            let spec = &plan.connections[ci];
            let limit = if closed_loop {
                plan.in_flight as usize
            } else {
                ((per_sender_rate * OPEN_LOOP_HORIZON_S).ceil() as usize)
                    .max(plan.in_flight as usize)
                    .min(MAX_OPEN_LOOP_SLOTS)
            };
            let cap = limit.next_power_of_two();
            Sender {
                conn: ci,
                conv: spec.conversation.unwrap_or(0),
                expect: spec.expect,
                // Fresh client message ids per run and connection, below 2^63.
                cmid_base: (splitmix(nonce ^ ((si as u64) << 1)) & 0x7FFF_FFFF_0000_0000)
                    | (1 << 40),
                next_seq: 0,
                outstanding: 0,
                unacked: 0,
                limit: limit as u32,
                slots: vec![Slot::default(); cap],
                mask: (cap - 1) as u32,
                owed: 0,
                scheduled: 0,
            }
        })
        .collect();
    let mut g = Gen {
        plan,
        start,
        ep: Epoll::new(EVENTS_PER_WAIT)?,
        events: Vec::with_capacity(EVENTS_PER_WAIT),
        conns: (0..n).map(|_| None).collect(),
        ctx: Ctx {
            protocol: plan.protocol,
            senders,
            dirty: Vec::new(),
            hist: Histogram::new(),
            in_window: false,
            sending: false,
            closed_loop,
            newly_ready: 0,
            n: Counters::default(),
            errors: Errors::default(),
            first_error: None,
            body: (0..plan.message_bytes)
                .map(|i| b'a' + (i % 26) as u8)
                .collect(),
            limits: FrameLimits {
                max_body: MAX_WS_MESSAGE,
            },
        },
        nonce,
        chunk: (READ_BUDGET / n).clamp(MIN_READ_CHUNK, MAX_READ_CHUNK),
        launched: 0,
        ready: 0,
        failed: 0,
        dropped: 0,
        sender_of: {
            let mut v = vec![None; n];
            for (si, &ci) in senders_idx.iter().enumerate() {
                v[ci] = Some(si as u32);
            }
            v
        },
        pace: None,
    };
    if limit < n as u64 + 16 {
        eprintln!(
            "warning: the fd limit is {limit}, below the {n} connections planned; \
             expect too_many_open_files errors"
        );
    }
    let connect_s = g.setup()?;
    if plan.workload == Workload::Idle {
        return idle(g, connect_s, ready_out);
    }
    if g.failed > 0 || g.dropped > 0 {
        let why = setup_failure(&g_counts(&g));
        return Ok(finish_load(g, connect_s, 0.0, 0.0, Some(why)));
    }
    // Load: warm-up, window, drain.
    let t_send = Instant::now();
    g.ctx.sending = true;
    if closed_loop {
        for si in 0..g.ctx.senders.len() {
            g.ctx.owe(si, plan.in_flight);
        }
    } else {
        let t0_ns = t_send.duration_since(start).as_nanos() as u64;
        g.pace = Some((t0_ns, per_sender_rate));
    }
    let warm_end = t_send + Duration::from_secs_f64(plan.warmup_s);
    let window_end = warm_end + Duration::from_secs_f64(plan.duration_s);
    let mut cpu0 = 0.0;
    let mut window_start = warm_end;
    let mut window_s = 0.0;
    let mut cpu = 0.0;
    loop {
        let now = Instant::now();
        if !g.ctx.in_window && now >= warm_end {
            g.ctx.in_window = true;
            cpu0 = sys::cpu_seconds();
            window_start = now;
        }
        if now >= window_end {
            window_s = now.duration_since(window_start).as_secs_f64();
            cpu = (sys::cpu_seconds() - cpu0) / window_s;
            g.ctx.in_window = false;
            g.ctx.sending = false;
            break;
        }
        if !closed_loop {
            let elapsed = now.duration_since(t_send).as_secs_f64();
            let n_senders = g.ctx.senders.len();
            for si in 0..n_senders {
                let due = paced_due(elapsed, per_sender_rate, si, n_senders);
                let s = &mut g.ctx.senders[si];
                if due > s.scheduled {
                    let k = (due - s.scheduled).min(u64::from(u32::MAX)) as u32;
                    s.scheduled += u64::from(k);
                    g.ctx.owe(si, k);
                }
            }
            g.emit_owed();
        }
        let timeout = if closed_loop {
            let next = if g.ctx.in_window {
                window_end
            } else {
                warm_end
            };
            next.saturating_duration_since(now)
                .as_millis()
                .clamp(1, 100) as i32
        } else {
            1
        };
        g.pass(timeout)?;
        if g.dropped > 0 && g.ready == g.dropped {
            break;
        }
    }
    let drain_end = Instant::now() + Duration::from_secs_f64(plan.drain_s);
    // Drain: nothing new is sent; wait for what is in flight (and, for
    // BlueWren, for the ACKs, so that the senders' cursors are complete).
    while Instant::now() < drain_end
        && g.ctx
            .senders
            .iter()
            .any(|s| s.outstanding > 0 || s.unacked > 0)
    {
        let left = drain_end.saturating_duration_since(Instant::now());
        g.pass(left.as_millis().clamp(1, 100) as i32)?;
    }
    if plan.protocol == Protocol::Bluewren {
        g.confirm_cursors()?;
    }
    let failure = (g.dropped > 0 || g.ctx.errors.total() > 0).then(|| {
        let e = &g.ctx.errors;
        format!(
            "{} errors during the run ({} connections closed by the server, {} server ERROR \
             events); first: {}",
            e.total(),
            e.closed_by_server,
            e.server_error,
            g.ctx.first_error.as_deref().unwrap_or("-")
        )
    });
    Ok(finish_load(g, connect_s, window_s, cpu, failure))
}

struct SetupCounts {
    planned: usize,
    ready: usize,
    failed: usize,
    dropped: usize,
    errors: Errors,
    first: Option<String>,
}

fn g_counts(g: &Gen<'_>) -> SetupCounts {
    SetupCounts {
        planned: g.plan.connections.len(),
        ready: g.ready,
        failed: g.failed,
        dropped: g.dropped,
        errors: g.ctx.errors.clone(),
        first: g.ctx.first_error.clone(),
    }
}

fn setup_failure(c: &SetupCounts) -> String {
    let e = &c.errors;
    format!(
        "{} of {} connections failed to set up and {} were closed by the server \
         (refused {}, no address {}, out of fds {}, other connect {}, timeout {}, \
         upgrade {}, hello {}, closed {}); first: {}",
        c.failed,
        c.planned,
        c.dropped,
        e.connect_refused,
        e.addr_not_available,
        e.too_many_open_files,
        e.connect_other,
        e.setup_timeout,
        e.handshake,
        e.hello_refused,
        e.closed_by_server,
        c.first.as_deref().unwrap_or("-")
    )
}

fn finish_load(
    g: Gen<'_>,
    connect_s: f64,
    window_s: f64,
    cpu: f64,
    failure: Option<String>,
) -> Outcome {
    let plan = g.plan;
    let ctx = &g.ctx;
    let n = &ctx.n;
    let incomplete: u64 = ctx
        .senders
        .iter()
        .map(|s| u64::from(s.outstanding))
        .sum::<u64>()
        + n.abandoned;
    let per_s = |x: u64| {
        if window_s > 0.0 {
            x as f64 / window_s
        } else {
            0.0
        }
    };
    let h = &ctx.hist;
    let result = json!({
        "workload": plan.workload.name(),
        "protocol": plan.protocol.name(),
        "connections": plan.connections.len(),
        "senders": ctx.senders.len(),
        "sent": n.sent,
        "completed": n.completed,
        "deliveries": n.deliveries,
        "window_s": window_s,
        "deliveries_per_s": per_s(n.deliveries),
        "messages_per_s": per_s(n.completed),
        "latency_us": {
            "p50": h.percentile(50.0),
            "p90": h.percentile(90.0),
            "p99": h.percentile(99.0),
            "p999": h.percentile(99.9),
            "max": h.max(),
        },
        "loadgen_cpu": cpu,
        "connect_s": connect_s,
        "errors": ctx.errors.total(),
        "incomplete": incomplete,
        "error_counts": ctx.errors,
        "first_error": ctx.first_error,
        "connected": g.ready,
        "failed": g.failed,
        "dropped": g.dropped,
        "extra_deliveries": n.extra,
        "skipped": n.skipped,
        "acks": n.acks,
        "replayed": n.replayed,
        "message_bytes": plan.message_bytes,
        "in_flight": plan.in_flight,
        "rate": plan.rate,
    });
    Outcome { result, failure }
}

fn idle(mut g: Gen<'_>, connect_s: f64, ready_out: &mut dyn Write) -> io::Result<Outcome> {
    writeln!(ready_out, "READY {}", g.ready)?;
    ready_out.flush()?;
    let eof = Arc::new(AtomicBool::new(false));
    {
        let eof = Arc::clone(&eof);
        // Blocks on stdin; the process exits without joining it.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = io::stdin().lock();
            while !matches!(stdin.read(&mut buf), Ok(0) | Err(_)) {}
            eof.store(true, Ordering::Release);
        });
    }
    let end = Instant::now() + Duration::from_secs_f64(g.plan.hold_s);
    while Instant::now() < end && !eof.load(Ordering::Acquire) {
        g.pass(50)?;
    }
    let counts = g_counts(&g);
    let failure = (counts.failed > 0 || counts.dropped > 0 || counts.errors.total() > 0)
        .then(|| setup_failure(&counts));
    let result = json!({
        "workload": "idle",
        "protocol": g.plan.protocol.name(),
        "connections": counts.planned,
        "connected": counts.ready,
        "failed": counts.failed,
        "dropped": counts.dropped,
        "connect_s": connect_s,
        "errors": counts.errors.total(),
        "error_counts": counts.errors,
        "first_error": counts.first,
    });
    Ok(Outcome { result, failure })
}

#[cfg(test)]
mod tests {
    use super::{paced_due, paced_due_ns};

    #[test]
    fn paced_senders_are_staggered_evenly() {
        // 4 senders at 100 msg/s each: one message every 2.5 ms across them.
        let mut sends: Vec<(u64, usize)> = Vec::new();
        let mut owed = [0u64; 4];
        for tick in 0..=100u64 {
            let t = tick as f64 / 10_000.0; // 0.1 ms ticks, 10 ms in all
            for (si, o) in owed.iter_mut().enumerate() {
                let due = paced_due(t, 100.0, si, 4);
                while *o < due {
                    *o += 1;
                    sends.push((tick, si));
                }
            }
        }
        // In 10 ms each sender sends once (its rate's worth), the last one first,
        // 2.5 ms in, and the others 2.5 ms apart: never two at once.
        assert_eq!(sends.len(), 4, "{sends:?}");
        assert_eq!(sends[0], (25, 3));
        let mut ticks: Vec<u64> = sends.iter().map(|&(t, _)| t).collect();
        ticks.dedup();
        assert_eq!(ticks.len(), sends.len(), "{sends:?}");
        let gaps: Vec<u64> = ticks.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g == 25), "{sends:?}");
    }

    #[test]
    fn one_sender_is_paced_from_zero() {
        assert_eq!(paced_due(0.0, 100.0, 0, 1), 0);
        assert_eq!(paced_due(0.0099, 100.0, 0, 1), 0);
        assert_eq!(paced_due(0.0101, 100.0, 0, 1), 1);
        assert_eq!(paced_due(1.0, 100.0, 0, 1), 100);
    }

    #[test]
    fn due_time_is_when_the_schedule_owes_the_message() {
        // One sender at 100 msg/s from t0 = 5 ms: message i falls due at
        // 5 ms + (i + 1) x 10 ms.
        assert_eq!(paced_due_ns(5_000_000, 100.0, 0, 0, 1), 15_000_000);
        assert_eq!(paced_due_ns(5_000_000, 100.0, 9, 0, 1), 105_000_000);
        // Sender 3 of 4 is staggered 3/4 of a period earlier: 2.5 ms.
        assert_eq!(paced_due_ns(0, 100.0, 0, 3, 4), 2_500_000);
        assert_eq!(paced_due_ns(0, 100.0, 1, 3, 4), 12_500_000);
        // Consistent with paced_due: just before its due time a message is
        // not owed yet, at its due time (+1 ns of rounding) it is.
        for (rate, si, n) in [(100.0, 0, 1), (2000.0, 1, 3), (333.3, 6, 7)] {
            for index in [0u64, 1, 2, 17, 1000] {
                let due_s = paced_due_ns(0, rate, index, si, n) as f64 * 1e-9;
                assert_eq!(
                    paced_due(due_s - 1e-6, rate, si, n),
                    index,
                    "{rate} {si} {index}"
                );
                assert_eq!(
                    paced_due(due_s + 1e-9, rate, si, n),
                    index + 1,
                    "{rate} {si} {index}"
                );
            }
        }
    }
}
