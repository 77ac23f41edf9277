//! Server side of one WebSocket connection: the opening handshake, then frames.
//!
//! [`ServerConn`] is the byte state machine behind every accepted socket. The
//! event loop reads straight into [`ServerConn::read_buf`], calls
//! [`ServerConn::commit`], then drains [`ServerConn::poll`] until it returns
//! `None`, and finally writes [`ServerConn::out`] in one call. Pings are answered
//! and closes are echoed here, so the layer above only sees what it must decide:
//! the handshake request (accept or reject) and data messages.

use crate::ws::{
    self, close_code, parse_request, Decoder, Event, HandshakeError, HandshakeLimits, OpCode,
    Request, Role, WsError, WsLimits,
};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// Request parsed; waiting for [`ServerConn::accept`] or [`ServerConn::reject`].
    Pending,
    /// Exchanging WebSocket frames.
    Open,
    /// A close frame was sent or received; nothing more will be read.
    Closed,
}

/// What [`ServerConn::poll`] reports. Payloads borrow the connection and are
/// valid until the next call.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnEvent<'a> {
    /// A complete upgrade request: see [`ServerConn::request`], then accept or reject.
    Request,
    /// The request was invalid; a rejection response is queued in the output.
    Rejected(HandshakeError),
    /// A complete text message (valid UTF-8).
    Text(&'a [u8]),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping arrived; the pong is already queued.
    Ping(&'a [u8]),
    /// A pong arrived.
    Pong(&'a [u8]),
    /// The peer closed; the reply close frame is queued.
    Closed {
        /// Close code sent by the peer, if any.
        code: Option<u16>,
        /// Close reason sent by the peer.
        reason: &'a str,
    },
    /// The peer violated the protocol; a close frame with `error.close_code` is queued.
    Failed(WsError),
}

/// Capacity of an output buffer when the first frame after a flush is queued.
pub const OUT_INITIAL: usize = 1024;

/// The server side of one WebSocket connection.
#[derive(Debug)]
pub struct ServerConn {
    phase: Phase,
    /// Handshake bytes; only `handshake[..hs_len]` has been received.
    handshake: Vec<u8>,
    hs_len: usize,
    hs_limits: HandshakeLimits,
    request: Option<Request>,
    decoder: Decoder,
    out: Vec<u8>,
}

impl ServerConn {
    /// A connection that starts by reading the upgrade request.
    pub fn new(ws_limits: WsLimits, hs_limits: HandshakeLimits) -> Self {
        Self {
            phase: Phase::Handshake,
            handshake: Vec::new(),
            hs_len: 0,
            hs_limits,
            request: None,
            decoder: Decoder::new(Role::Server, ws_limits),
            out: Vec::new(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The upgrade request, once [`ConnEvent::Request`] was reported.
    pub fn request(&self) -> Option<&Request> {
        self.request.as_ref()
    }

    /// Spare space of at least `min` bytes (at least one) for the socket to read into.
    ///
    /// During the handshake the offer never exceeds what the request limit
    /// allows plus one byte, so an oversized request is seen and rejected
    /// without buffering more of it.
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        if self.phase != Phase::Handshake {
            return self.decoder.read_buf(min);
        }
        let room = (self.hs_limits.max_request_bytes + 1).saturating_sub(self.hs_len);
        let want = min.clamp(1, room.max(1));
        if self.handshake.len() < self.hs_len + want {
            self.handshake.resize(self.hs_len + want, 0);
        }
        &mut self.handshake[self.hs_len..self.hs_len + want]
    }

    /// Marks `n` bytes of the last [`read_buf`](Self::read_buf) as received.
    pub fn commit(&mut self, n: usize) {
        if self.phase == Phase::Handshake {
            self.hs_len = (self.hs_len + n).min(self.handshake.len());
        } else {
            self.decoder.commit(n);
        }
    }

    /// Copies `data` in, as if it had been read from the socket.
    pub fn feed(&mut self, data: &[u8]) {
        if self.phase != Phase::Handshake {
            self.decoder.feed(data);
            return;
        }
        // Bytes behind the request belong to the frame decoder (poll() moves them
        // there), so all of them are kept once the request ends within the limit;
        // otherwise only enough to see that it is too large.
        let limit = self.hs_limits.max_request_bytes;
        self.handshake.truncate(self.hs_len);
        self.handshake.extend_from_slice(data);
        let head = &self.handshake[..self.handshake.len().min(limit)];
        if !head.windows(4).any(|w| w == b"\r\n\r\n") {
            self.handshake.truncate((limit + 1).max(self.hs_len));
        }
        self.hs_len = self.handshake.len();
    }

    /// Accepts the pending upgrade with an optional subprotocol; the 101 response
    /// is queued in [`out`](Self::out). Bytes the client sent after its request
    /// are kept for the frame decoder.
    pub fn accept(&mut self, protocol: Option<&str>) -> bool {
        if self.phase != Phase::Pending {
            return false;
        }
        if let Some(req) = &self.request {
            ws::write_response(&mut self.out, &req.key, protocol);
        }
        self.phase = Phase::Open;
        true
    }

    /// Rejects the pending upgrade with an HTTP status; the connection is closed.
    pub fn reject(&mut self, status: u16, reason: &str) -> bool {
        if self.phase != Phase::Pending {
            return false;
        }
        ws::write_rejection(&mut self.out, status, reason);
        self.phase = Phase::Closed;
        true
    }

    /// Queues a data message.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        self.reserve_out(ws::frame_header_len(payload.len(), false) + payload.len());
        ws::encode_frame(&mut self.out, opcode, payload, true, None);
    }

    /// Queues a close frame and stops reading.
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.phase == Phase::Open {
            ws::encode_close(&mut self.out, code, reason, None);
        }
        self.phase = Phase::Closed;
    }

    /// Bytes queued for the socket.
    pub fn out(&self) -> &[u8] {
        &self.out
    }

    /// Drops `n` written bytes from the front of the output (all of it when `n`
    /// is at least its length, the common case).
    ///
    /// A fully written output gives its memory back, so an idle connection
    /// holds no output buffer; the next message allocates one of at least
    /// [`OUT_INITIAL`] bytes.
    pub fn consume_out(&mut self, n: usize) {
        if n >= self.out.len() {
            self.out = Vec::new();
        } else {
            self.out.drain(..n);
        }
    }

    /// Appends already-encoded WebSocket frames (for example a fan-out frame
    /// shared by many connections) to the output.
    pub fn extend_out(&mut self, frames: &[u8]) {
        self.reserve_out(frames.len());
        self.out.extend_from_slice(frames);
    }

    /// An empty output starts at [`OUT_INITIAL`] bytes, so the frames of one
    /// pass do not grow it from nothing one doubling at a time.
    fn reserve_out(&mut self, additional: usize) {
        if self.out.capacity() == 0 {
            self.out.reserve(additional.max(OUT_INITIAL));
        }
    }

    /// Bytes received but not yet handled: a partial request or frame. While
    /// this is zero the connection holds no input, and the caller may read the
    /// socket into a shared buffer and [`feed`](Self::feed) the bytes instead of
    /// reading into [`read_buf`](Self::read_buf).
    pub fn buffered(&self) -> usize {
        match self.phase {
            Phase::Handshake => self.hs_len,
            _ => self.decoder.buffered(),
        }
    }

    /// Gives back the input buffers when they hold nothing (see
    /// [`Decoder::shrink`]): an idle connection then costs a few hundred bytes.
    pub fn shrink(&mut self) {
        if self.phase == Phase::Handshake {
            if self.hs_len == 0 {
                self.handshake = Vec::new();
            }
        } else {
            self.decoder.shrink();
        }
    }

    /// The next event, or `None` when more bytes are needed (or the connection is closed).
    pub fn poll(&mut self) -> Option<ConnEvent<'_>> {
        match self.phase {
            Phase::Handshake => self.poll_handshake(),
            Phase::Pending | Phase::Closed => None,
            Phase::Open => self.poll_frames(),
        }
    }

    fn poll_handshake(&mut self) -> Option<ConnEvent<'_>> {
        match parse_request(&self.handshake[..self.hs_len], &self.hs_limits) {
            Ok(None) => None,
            Ok(Some((req, used))) => {
                self.request = Some(req);
                self.phase = Phase::Pending;
                // Frames pipelined behind the request go to the decoder.
                let rest = self.handshake[used..self.hs_len].to_vec();
                self.decoder.feed(&rest);
                self.handshake = Vec::new();
                self.hs_len = 0;
                Some(ConnEvent::Request)
            }
            Err(err) => {
                ws::write_rejection(&mut self.out, err.status(), &err.to_string());
                self.phase = Phase::Closed;
                self.handshake = Vec::new();
                self.hs_len = 0;
                Some(ConnEvent::Rejected(err))
            }
        }
    }

    fn poll_frames(&mut self) -> Option<ConnEvent<'_>> {
        let event = match self.decoder.poll() {
            Ok(None) => return None,
            Ok(Some(ev)) => ev,
            Err(err) => {
                ws::encode_close(&mut self.out, err.close_code, err.reason, None);
                self.phase = Phase::Closed;
                return Some(ConnEvent::Failed(err));
            }
        };
        Some(match event {
            Event::Text(p) => ConnEvent::Text(p),
            Event::Binary(p) => ConnEvent::Binary(p),
            Event::Ping(p) => {
                ws::encode_frame(&mut self.out, OpCode::Pong, p, true, None);
                ConnEvent::Ping(p)
            }
            Event::Pong(p) => ConnEvent::Pong(p),
            Event::Close { code, reason } => {
                ws::encode_close(&mut self.out, code.unwrap_or(close_code::NORMAL), "", None);
                self.phase = Phase::Closed;
                ConnEvent::Closed { code, reason }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn request(protocols: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        ws::write_client_request(&mut out, "localhost", "/chat", KEY, protocols);
        out
    }

    fn client_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ws::encode_frame(&mut out, op, payload, true, MASK);
        out
    }

    fn open_conn() -> ServerConn {
        let mut c = ServerConn::new(WsLimits::default(), HandshakeLimits::default());
        c.feed(&request(&[]));
        assert_eq!(c.poll(), Some(ConnEvent::Request));
        assert!(c.accept(None));
        c.consume_out(usize::MAX);
        c
    }

    #[test]
    fn idle_connection_holds_no_buffers() {
        let mut c = open_conn();
        c.send(OpCode::Binary, b"hello");
        assert!(c.out.capacity() >= OUT_INITIAL);
        c.consume_out(usize::MAX);
        assert_eq!(c.out.capacity(), 0);
        c.feed(&client_frame(OpCode::Binary, b"ping"));
        assert!(c.buffered() > 0);
        assert_eq!(c.poll(), Some(ConnEvent::Binary(b"ping")));
        assert_eq!(c.buffered(), 0);
        c.shrink();
        assert_eq!(c.decoder.buffered(), 0);
        // Fed again after shrinking, it decodes as before.
        c.feed(&client_frame(OpCode::Binary, b"again"));
        assert_eq!(c.poll(), Some(ConnEvent::Binary(b"again")));
    }

    #[test]
    fn shrink_keeps_a_partial_frame_and_a_partial_request() {
        let mut c = ServerConn::new(WsLimits::default(), HandshakeLimits::default());
        let req = request(&[]);
        c.feed(&req[..10]);
        c.shrink();
        assert_eq!(c.buffered(), 10);
        c.feed(&req[10..]);
        assert_eq!(c.poll(), Some(ConnEvent::Request));
        assert!(c.accept(None));
        let frame = client_frame(OpCode::Text, b"split");
        c.feed(&frame[..3]);
        c.shrink();
        assert_eq!(c.buffered(), 3);
        c.feed(&frame[3..]);
        assert_eq!(c.poll(), Some(ConnEvent::Text(b"split")));
    }

    #[test]
    fn accepted_request_queues_101_with_accept_key_and_protocol() {
        let mut c = ServerConn::new(WsLimits::default(), HandshakeLimits::default());
        c.feed(&request(&["bluewren.v1", "json"]));
        assert_eq!(c.poll(), Some(ConnEvent::Request));
        assert_eq!(c.phase(), Phase::Pending);
        assert_eq!(c.request().unwrap().protocols, ["bluewren.v1", "json"]);
        assert!(c.accept(Some("json")));
        let text = String::from_utf8(c.out().to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 101"));
        assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(text
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: json"));
        assert_eq!(c.phase(), Phase::Open);
    }

    #[test]
    fn request_split_into_single_bytes_is_parsed_once() {
        let mut c = ServerConn::new(WsLimits::default(), HandshakeLimits::default());
        let req = request(&[]);
        for (i, b) in req.iter().enumerate() {
            c.feed(std::slice::from_ref(b));
            let ev = c.poll();
            if i + 1 < req.len() {
                assert_eq!(ev, None, "event before the request was complete (byte {i})");
            } else {
                assert_eq!(ev, Some(ConnEvent::Request));
            }
        }
    }

    #[test]
    fn frames_pipelined_behind_the_request_are_decoded_after_accept() {
        let mut c = ServerConn::new(WsLimits::default(), HandshakeLimits::default());
        let mut bytes = request(&[]);
        bytes.extend(client_frame(OpCode::Text, b"early"));
        c.feed(&bytes);
        assert_eq!(c.poll(), Some(ConnEvent::Request));
        assert_eq!(c.poll(), None, "no frames before the upgrade is accepted");
        c.accept(None);
        assert_eq!(c.poll(), Some(ConnEvent::Text(b"early")));
    }

    #[test]
    fn feed_keeps_frames_pipelined_past_the_request_limit() {
        let req = request(&[]);
        let limits = HandshakeLimits {
            max_request_bytes: req.len(),
            max_headers: 64,
        };
        let mut c = ServerConn::new(WsLimits::default(), limits);
        let mut bytes = req;
        bytes.extend(client_frame(OpCode::Text, b"hello"));
        c.feed(&bytes);
        assert_eq!(c.poll(), Some(ConnEvent::Request));
        assert!(c.accept(None));
        assert_eq!(c.poll(), Some(ConnEvent::Text(b"hello")));
    }

    #[test]
    fn oversized_request_is_rejected_with_431_without_buffering_more() {
        let limits = HandshakeLimits {
            max_request_bytes: 256,
            max_headers: 64,
        };
        let mut c = ServerConn::new(WsLimits::default(), limits);
        let mut req = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        req.resize(10_000, b'a');
        c.feed(&req);
        assert!(
            c.read_buf(1 << 20).len() <= 1,
            "offered more than the limit allows"
        );
        match c.poll() {
            Some(ConnEvent::Rejected(e)) => assert_eq!(e.status(), 431),
            other => panic!("expected a 431 rejection, got {other:?}"),
        }
        assert!(c.out().starts_with(b"HTTP/1.1 431"));
        assert_eq!(c.phase(), Phase::Closed);
    }

    #[test]
    fn rejecting_queues_the_status_and_closes() {
        let mut c = ServerConn::new(WsLimits::default(), HandshakeLimits::default());
        c.feed(&request(&[]));
        c.poll();
        assert!(c.reject(403, "forbidden"));
        assert!(c.out().starts_with(b"HTTP/1.1 403"));
        assert_eq!(c.phase(), Phase::Closed);
        assert!(!c.accept(None), "a rejected connection cannot be accepted");
    }

    #[test]
    fn ping_is_answered_with_a_pong_of_the_same_payload() {
        let mut c = open_conn();
        c.feed(&client_frame(OpCode::Ping, b"are you there"));
        assert_eq!(c.poll(), Some(ConnEvent::Ping(b"are you there")));
        let mut expected = Vec::new();
        ws::encode_frame(&mut expected, OpCode::Pong, b"are you there", true, None);
        assert_eq!(c.out(), expected.as_slice());
    }

    #[test]
    fn peer_close_is_echoed_and_stops_reading() {
        let mut c = open_conn();
        let mut close = Vec::new();
        ws::encode_close(&mut close, 1001, "bye", MASK);
        close.extend(client_frame(OpCode::Text, b"after close"));
        c.feed(&close);
        assert_eq!(
            c.poll(),
            Some(ConnEvent::Closed {
                code: Some(1001),
                reason: "bye"
            })
        );
        assert_eq!(c.poll(), None, "nothing is read after a close");
        let mut expected = Vec::new();
        ws::encode_close(&mut expected, 1001, "", None);
        assert_eq!(c.out(), expected.as_slice());
        assert_eq!(c.phase(), Phase::Closed);
    }

    #[test]
    fn protocol_violation_queues_a_close_with_its_code() {
        let mut c = open_conn();
        let mut unmasked = Vec::new();
        ws::encode_frame(&mut unmasked, OpCode::Text, b"x", true, None);
        c.feed(&unmasked);
        match c.poll() {
            Some(ConnEvent::Failed(e)) => assert_eq!(e.close_code, close_code::PROTOCOL_ERROR),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        let mut dec = Decoder::new(Role::Client, WsLimits::default());
        dec.feed(c.out());
        assert!(matches!(
            dec.poll(),
            Ok(Some(Event::Close {
                code: Some(1002),
                ..
            }))
        ));
    }

    #[test]
    fn sent_messages_and_shared_frames_leave_in_order() {
        let mut c = open_conn();
        c.send(OpCode::Text, b"one");
        let mut shared = Vec::new();
        ws::encode_frame(&mut shared, OpCode::Binary, b"two", true, None);
        c.extend_out(&shared);
        let mut dec = Decoder::new(Role::Client, WsLimits::default());
        dec.feed(c.out());
        assert_eq!(dec.poll(), Ok(Some(Event::Text(b"one"))));
        assert_eq!(dec.poll(), Ok(Some(Event::Binary(b"two"))));
        c.consume_out(2);
        assert_eq!(
            c.out().len(),
            shared.len() + 5 - 2,
            "partial consume keeps the tail"
        );
    }
}
