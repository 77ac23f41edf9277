//! The incremental frame decoder.
//!
//! Bytes live in one buffer: `buf[..start]` is consumed, `buf[start..end]` is
//! received and not yet consumed, `buf[end..]` is spare space the socket reads
//! into. A frame's header is parsed and checked once, as soon as its bytes are
//! in; its payload is then unmasked (and, for text, validated) in place as it
//! arrives, so no byte is looked at twice however the frame is chunked. When
//! the whole payload is in, the frame is consumed and, if it completes a
//! message by itself, returned as a slice of the buffer.
//!
//! The buffer is compacted lazily: only when the spare space is too small for
//! the next read, and then only the unconsumed bytes (at most one partial
//! frame) move. When everything is consumed the indices simply reset.

use super::utf8::Utf8Stream;
use super::{close_code, Event, OpCode, Role, WsError, WsLimits, MAX_CONTROL_PAYLOAD};

/// Buffers larger than this are given back once empty.
const RETAIN: usize = 64 * 1024;
/// Smallest allocation of the read buffer.
const INITIAL: usize = 4096;
/// Longest frame header: 2 bytes, a 64-bit length and a masking key.
const MAX_HEADER_LEN: usize = 14;

const INVALID_TEXT: WsError = WsError {
    close_code: close_code::INVALID_PAYLOAD,
    reason: "invalid UTF-8 in text message",
};

/// Incremental WebSocket frame decoder for one connection.
///
/// Feed it bytes with [`read_buf`](Self::read_buf) + [`commit`](Self::commit)
/// (zero copy) or [`feed`](Self::feed), then call [`poll`](Self::poll) until it
/// returns `Ok(None)`. It checks every rule of RFC 6455 that a receiver must
/// (see the [module docs](super)); no extension is negotiated, so the RSV bits
/// must be clear.
///
/// ```
/// use bluewren_engine::ws::{encode_frame, Decoder, Event, OpCode, Role, WsLimits};
///
/// let mut frames = Vec::new();
/// encode_frame(&mut frames, OpCode::Text, b"hi", true, Some([1, 2, 3, 4]));
/// let mut dec = Decoder::new(Role::Server, WsLimits::default());
/// dec.feed(&frames);
/// assert_eq!(dec.poll(), Ok(Some(Event::Text(b"hi"))));
/// assert_eq!(dec.poll(), Ok(None));
/// ```
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    limits: WsLimits,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Header of the frame at `start`, once its bytes are in.
    frame: Option<Header>,
    /// Payload bytes of `frame` already unmasked and validated.
    seen: usize,
    /// Opcode of the fragmented message in progress.
    fragmented: Option<OpCode>,
    /// The fragments received so far.
    assembled: Vec<u8>,
    /// `assembled` was handed out by the last poll; clear it on the next.
    delivered: bool,
    utf8: Utf8Stream,
    state: State,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Open,
    Closed,
    Failed(WsError),
}

#[derive(Clone, Copy, Debug)]
struct Header {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

/// What a poll yields, as positions rather than borrows.
enum Ready {
    /// A frame's payload at `buf[from..to]`.
    Frame(OpCode, usize, usize),
    /// A reassembled message in `assembled`.
    Assembled(OpCode),
    /// A close frame; its reason is at `buf[from..to]`.
    Close(Option<u16>, usize, usize),
}

impl Decoder {
    /// A decoder for the given side of the connection. Allocates nothing until
    /// the first bytes arrive.
    pub fn new(role: Role, limits: WsLimits) -> Self {
        Self {
            role,
            limits,
            buf: Vec::new(),
            start: 0,
            end: 0,
            frame: None,
            seen: 0,
            fragmented: None,
            assembled: Vec::new(),
            delivered: false,
            utf8: Utf8Stream::default(),
            state: State::Open,
        }
    }

    /// Spare capacity of at least `min` bytes at the end of the internal
    /// buffer, for the socket to read straight into (zero copy). Compacts or
    /// grows the buffer only when the current spare space is too small.
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > RETAIN && min <= RETAIN {
                self.buf.truncate(RETAIN);
                self.buf.shrink_to_fit();
            }
        }
        if self.buf.len() - self.end < min {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < min {
                // Double for amortised growth, but never past what the largest
                // frame plus this read can need.
                let largest = self.limits.max_frame_size.max(MAX_CONTROL_PAYLOAD);
                let bound = largest.saturating_add(MAX_HEADER_LEN).saturating_add(min);
                let double = (2 * self.buf.len()).max(INITIAL).min(bound);
                let want = self.end.saturating_add(min).max(double);
                self.buf.reserve_exact(want - self.buf.len());
                self.buf.resize(want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the last [`read_buf`](Self::read_buf) slice as
    /// filled; `n` larger than that slice is clamped. Bytes arriving after a
    /// close frame or an error are discarded.
    pub fn commit(&mut self, n: usize) {
        if matches!(self.state, State::Open) {
            self.end += n.min(self.buf.len() - self.end);
        }
    }

    /// Copies `data` in and commits it.
    pub fn feed(&mut self, data: &[u8]) {
        if matches!(self.state, State::Open) && !data.is_empty() {
            self.read_buf(data.len())[..data.len()].copy_from_slice(data);
            self.commit(data.len());
        }
    }

    /// Bytes received but not yet consumed (a partial frame, or frames not yet
    /// polled).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Gives back memory when idle: the read buffer if it holds no bytes, and
    /// the reassembly buffer if no fragmented message is in progress.
    pub fn shrink(&mut self) {
        if self.start == self.end {
            (self.start, self.end, self.buf) = (0, 0, Vec::new());
        }
        if self.fragmented.is_none() {
            (self.assembled, self.delivered) = (Vec::new(), false);
        }
    }

    /// The next complete event, or `Ok(None)` if more bytes are needed.
    ///
    /// Payloads are unmasked in place and borrow the decoder: they are valid
    /// until its next call. After an `Err` the decoder is failed and returns
    /// the same `Err` forever; send a close frame with its code. After a
    /// [`Event::Close`] further polls return `Ok(None)`.
    pub fn poll(&mut self) -> Result<Option<Event<'_>>, WsError> {
        match self.state {
            State::Open => {}
            State::Closed => return Ok(None),
            State::Failed(err) => return Err(err),
        }
        if self.delivered {
            self.delivered = false;
            if self.assembled.capacity() > RETAIN {
                self.assembled = Vec::new();
            } else {
                self.assembled.clear();
            }
        }
        let ready = match self.advance() {
            Ok(Some(ready)) => ready,
            Ok(None) => return Ok(None),
            Err(err) => {
                self.state = State::Failed(err);
                return Err(err);
            }
        };
        Ok(Some(match ready {
            Ready::Frame(OpCode::Text, from, to) => Event::Text(&self.buf[from..to]),
            Ready::Frame(OpCode::Ping, from, to) => Event::Ping(&self.buf[from..to]),
            Ready::Frame(OpCode::Pong, from, to) => Event::Pong(&self.buf[from..to]),
            Ready::Frame(_, from, to) => Event::Binary(&self.buf[from..to]),
            Ready::Assembled(OpCode::Text) => Event::Text(&self.assembled),
            Ready::Assembled(_) => Event::Binary(&self.assembled),
            Ready::Close(code, from, to) => Event::Close {
                code,
                // Validated by `advance`; the fallback is never taken.
                reason: std::str::from_utf8(&self.buf[from..to]).unwrap_or_default(),
            },
        }))
    }

    /// Consumes frames until one completes an event or the bytes run out.
    fn advance(&mut self) -> Result<Option<Ready>, WsError> {
        loop {
            let h = match self.frame {
                Some(h) => h,
                None => match self.parse_header(&self.buf[self.start..self.end])? {
                    Some(h) => {
                        if h.opcode == OpCode::Text {
                            self.utf8 = Utf8Stream::default();
                        }
                        (self.frame, self.seen) = (Some(h), 0);
                        h
                    }
                    None => return Ok(None),
                },
            };
            let from = self.start + h.header_len;
            let have = (self.end - from).min(h.payload_len);
            let text = h.opcode == OpCode::Text
                || (h.opcode == OpCode::Continuation && self.fragmented == Some(OpCode::Text));
            if have > self.seen {
                let piece = &mut self.buf[from + self.seen..from + have];
                if let Some(key) = h.mask {
                    super::apply_mask(piece, key, self.seen);
                }
                if text {
                    self.utf8.push(piece).map_err(|_| INVALID_TEXT)?;
                }
                self.seen = have;
            }
            if have < h.payload_len {
                return Ok(None);
            }
            let to = from + h.payload_len;
            (self.frame, self.start) = (None, to);
            match h.opcode {
                OpCode::Ping | OpCode::Pong => return Ok(Some(Ready::Frame(h.opcode, from, to))),
                OpCode::Close => return self.close(from, to).map(Some),
                OpCode::Text | OpCode::Binary if h.fin => {
                    if text {
                        self.utf8.finish().map_err(|_| INVALID_TEXT)?;
                    }
                    return Ok(Some(Ready::Frame(h.opcode, from, to)));
                }
                OpCode::Text | OpCode::Binary => {
                    self.fragmented = Some(h.opcode);
                    self.append_fragment(from, to);
                }
                OpCode::Continuation => {
                    self.append_fragment(from, to);
                    if h.fin {
                        if text {
                            self.utf8.finish().map_err(|_| INVALID_TEXT)?;
                        }
                        let op = self.fragmented.take().unwrap_or(OpCode::Binary);
                        self.delivered = true;
                        return Ok(Some(Ready::Assembled(op)));
                    }
                }
            }
        }
    }

    /// Appends `buf[from..to]` to the message being reassembled, growing the
    /// buffer geometrically but never past the message size limit.
    fn append_fragment(&mut self, from: usize, to: usize) {
        let (len, need) = (self.assembled.len(), self.assembled.len() + (to - from));
        if self.assembled.capacity() < need {
            let limit = self.limits.max_message_size.max(need);
            let want = (2 * self.assembled.capacity()).clamp(need, limit);
            self.assembled.reserve_exact(want - len);
        }
        self.assembled.extend_from_slice(&self.buf[from..to]);
    }

    /// Parses and checks the header at the start of `data`, or `Ok(None)` if
    /// it is incomplete. Every check runs as soon as the bytes it needs are in.
    fn parse_header(&self, data: &[u8]) -> Result<Option<Header>, WsError> {
        let Some(&b0) = data.first() else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(WsError::protocol("reserved bits set"));
        }
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(WsError::protocol("reserved opcode"))?;
        let fin = b0 & 0x80 != 0;
        if opcode.is_control() && !fin {
            return Err(WsError::protocol("fragmented control frame"));
        }
        match (opcode, self.fragmented) {
            (OpCode::Continuation, None) => {
                return Err(WsError::protocol("continuation frame without a message"))
            }
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(WsError::protocol("new message inside a fragmented message"))
            }
            _ => {}
        }
        let Some(&b1) = data.get(1) else {
            return Ok(None);
        };
        let (masked, len7) = (b1 & 0x80 != 0, b1 & 0x7F);
        if opcode.is_control() && len7 > 125 {
            return Err(WsError::protocol("control frame longer than 125 bytes"));
        }
        match (self.role, masked) {
            (Role::Server, false) => return Err(WsError::protocol("unmasked client frame")),
            (Role::Client, true) => return Err(WsError::protocol("masked server frame")),
            _ => {}
        }
        let (len, mut header_len) = match len7 {
            126 => {
                let Some(&[a, b]) = data.get(2..4) else {
                    return Ok(None);
                };
                let len = u16::from_be_bytes([a, b]);
                if len < 126 {
                    return Err(WsError::protocol("non-minimal frame length"));
                }
                (u64::from(len), 4)
            }
            127 => {
                let Some(bytes) = data.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(bytes.try_into().unwrap_or_default());
                if len >> 63 != 0 {
                    return Err(WsError::protocol("frame length has its top bit set"));
                }
                if len <= 0xFFFF {
                    return Err(WsError::protocol("non-minimal frame length"));
                }
                (len, 10)
            }
            len => (u64::from(len), 2),
        };
        if !opcode.is_control() {
            if len > self.limits.max_frame_size as u64 {
                return Err(too_big("frame exceeds the size limit"));
            }
            let so_far = if opcode == OpCode::Continuation {
                self.assembled.len()
            } else {
                0
            };
            if len > self.limits.max_message_size.saturating_sub(so_far) as u64 {
                return Err(too_big("message exceeds the size limit"));
            }
        }
        let mask = if masked {
            let Some(&[a, b, c, d]) = data.get(header_len..header_len + 4) else {
                return Ok(None);
            };
            header_len += 4;
            Some([a, b, c, d])
        } else {
            None
        };
        // `len` is at most 125 or a usize limit here, so it fits.
        Ok(Some(Header {
            opcode,
            fin,
            mask,
            header_len,
            payload_len: len as usize,
        }))
    }

    /// Checks a complete close payload at `buf[from..to]` and ends the stream.
    fn close(&mut self, from: usize, to: usize) -> Result<Ready, WsError> {
        let payload = &self.buf[from..to];
        let code = match *payload {
            [] => None,
            [_] => return Err(WsError::protocol("close payload of 1 byte")),
            [a, b, ..] => {
                let code = u16::from_be_bytes([a, b]);
                if !close_code::is_valid_on_wire(code) {
                    return Err(WsError::protocol("invalid close code"));
                }
                if simdutf8::basic::from_utf8(&payload[2..]).is_err() {
                    return Err(WsError {
                        close_code: close_code::INVALID_PAYLOAD,
                        reason: "invalid UTF-8 in close reason",
                    });
                }
                Some(code)
            }
        };
        self.state = State::Closed;
        let reason_from = if code.is_some() { from + 2 } else { from };
        Ok(Ready::Close(code, reason_from, to))
    }
}

const fn too_big(reason: &'static str) -> WsError {
    WsError {
        close_code: close_code::MESSAGE_TOO_BIG,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{encode_close, encode_frame};

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn server() -> Decoder {
        Decoder::new(Role::Server, WsLimits::default())
    }

    fn frame(op: OpCode, payload: &[u8], fin: bool) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, op, payload, fin, Some(KEY));
        out
    }

    /// A masked frame whose header is given raw (for malformed headers).
    fn raw(b0: u8, len: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0, 0x80 | len[0]];
        out.extend_from_slice(&len[1..]);
        out.extend_from_slice(&KEY);
        let start = out.len();
        out.extend_from_slice(payload);
        crate::ws::apply_mask(&mut out[start..], KEY, 0);
        out
    }

    fn error_of(bytes: &[u8]) -> WsError {
        let mut dec = server();
        dec.feed(bytes);
        loop {
            match dec.poll() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error for {bytes:x?}"),
                Err(err) => return err,
            }
        }
    }

    fn close_frame(payload: &[u8]) -> Vec<u8> {
        frame(OpCode::Close, payload, true)
    }

    #[test]
    fn rfc_masked_hello_decodes_to_text() {
        let mut dec = server();
        dec.feed(&[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ]);
        assert_eq!(dec.poll(), Ok(Some(Event::Text(b"Hello"))));
        assert_eq!(dec.poll(), Ok(None));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn client_role_decodes_unmasked_server_frames() {
        let mut dec = Decoder::new(Role::Client, WsLimits::default());
        dec.feed(&[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]);
        assert_eq!(dec.poll(), Ok(Some(Event::Text(b"Hello"))));
    }

    #[test]
    fn split_frame_at_every_byte_position_decodes_once() {
        let payload: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        let bytes = frame(OpCode::Text, &payload, true);
        for cut in 0..=bytes.len() {
            let mut dec = server();
            dec.feed(&bytes[..cut]);
            if cut < bytes.len() {
                assert_eq!(dec.poll(), Ok(None), "cut {cut}");
            }
            dec.feed(&bytes[cut..]);
            assert_eq!(dec.poll(), Ok(Some(Event::Text(&payload))), "cut {cut}");
            assert_eq!(dec.poll(), Ok(None));
        }
    }

    #[test]
    fn byte_by_byte_feeding_decodes_every_frame() {
        let mut bytes = frame(OpCode::Binary, &[7; 70_000], true);
        bytes.extend(frame(OpCode::Text, "héllo".as_bytes(), true));
        let mut dec = server();
        let mut got = Vec::new();
        for b in &bytes {
            dec.feed(std::slice::from_ref(b));
            while let Some(ev) = dec.poll().unwrap() {
                got.push(match ev {
                    Event::Binary(p) => (OpCode::Binary, p.len()),
                    Event::Text(p) => (OpCode::Text, p.len()),
                    other => panic!("unexpected {other:?}"),
                });
            }
        }
        assert_eq!(got, [(OpCode::Binary, 70_000), (OpCode::Text, 6)]);
    }

    #[test]
    fn many_frames_in_one_read_decode_in_order() {
        let mut bytes = Vec::new();
        for i in 0..100u8 {
            bytes.extend(frame(OpCode::Binary, &[i; 3], true));
        }
        bytes.extend(frame(OpCode::Ping, b"p", true));
        let mut dec = server();
        dec.feed(&bytes);
        for i in 0..100u8 {
            assert_eq!(dec.poll(), Ok(Some(Event::Binary(&[i; 3]))));
        }
        assert_eq!(dec.poll(), Ok(Some(Event::Ping(b"p"))));
        assert_eq!(dec.poll(), Ok(None));
    }

    #[test]
    fn single_frame_payload_is_borrowed_from_the_read_buffer() {
        let mut dec = server();
        dec.feed(&frame(OpCode::Binary, b"zero copy", true));
        let buf = dec.buf.as_ptr_range();
        let Ok(Some(Event::Binary(p))) = dec.poll() else {
            panic!("no binary")
        };
        assert!(buf.contains(&p.as_ptr()));
    }

    #[test]
    fn fragmented_text_reassembles_around_a_ping() {
        let mut bytes = frame(OpCode::Text, "κό".as_bytes(), false);
        bytes.extend(frame(OpCode::Ping, b"hb", true));
        bytes.extend(frame(OpCode::Continuation, "σμ".as_bytes(), false));
        bytes.extend(frame(OpCode::Continuation, "ε".as_bytes(), true));
        let mut dec = server();
        dec.feed(&bytes);
        assert_eq!(dec.poll(), Ok(Some(Event::Ping(b"hb"))));
        assert_eq!(dec.poll(), Ok(Some(Event::Text("κόσμε".as_bytes()))));
        assert_eq!(dec.poll(), Ok(None));
    }

    #[test]
    fn code_point_split_across_fragments_is_valid() {
        let euro = "€".as_bytes();
        let mut bytes = frame(OpCode::Text, &euro[..1], false);
        bytes.extend(frame(OpCode::Continuation, &euro[1..2], false));
        bytes.extend(frame(OpCode::Continuation, &euro[2..], true));
        let mut dec = server();
        dec.feed(&bytes);
        assert_eq!(dec.poll(), Ok(Some(Event::Text(euro))));
    }

    #[test]
    fn fragmented_binary_reassembles_and_buffer_is_reused() {
        let mut dec = server();
        for round in 0..3u8 {
            let mut bytes = frame(OpCode::Binary, &[round; 10], false);
            bytes.extend(frame(OpCode::Continuation, &[], false));
            bytes.extend(frame(OpCode::Continuation, &[round; 5], true));
            dec.feed(&bytes);
            assert_eq!(dec.poll(), Ok(Some(Event::Binary(&[round; 15]))));
        }
    }

    #[test]
    fn empty_frames_decode() {
        let mut dec = server();
        dec.feed(&frame(OpCode::Text, b"", true));
        dec.feed(&frame(OpCode::Pong, b"", true));
        assert_eq!(dec.poll(), Ok(Some(Event::Text(b""))));
        assert_eq!(dec.poll(), Ok(Some(Event::Pong(b""))));
    }

    #[test]
    fn unmasked_client_frame_is_protocol_error() {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, OpCode::Text, b"hi", true, None);
        assert_eq!(error_of(&bytes), WsError::protocol("unmasked client frame"));
    }

    #[test]
    fn masked_server_frame_is_protocol_error_for_a_client() {
        let mut dec = Decoder::new(Role::Client, WsLimits::default());
        dec.feed(&frame(OpCode::Text, b"hi", true));
        assert_eq!(
            dec.poll().unwrap_err().close_code,
            close_code::PROTOCOL_ERROR
        );
    }

    #[test]
    fn length_with_top_bit_set_is_protocol_error() {
        let bytes = raw(0x82, &[127, 0x80, 0, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(
            error_of(&bytes),
            WsError::protocol("frame length has its top bit set")
        );
    }

    #[test]
    fn huge_declared_length_fails_before_allocating() {
        let bytes = raw(0x82, &[127, 0x40, 0, 0, 0, 0, 0, 0, 0], &[]); // 2^62
        let mut dec = server();
        dec.feed(&bytes);
        let cap = dec.buf.capacity();
        assert_eq!(
            dec.poll().unwrap_err().close_code,
            close_code::MESSAGE_TOO_BIG
        );
        assert_eq!(dec.buf.capacity(), cap);
        assert!(cap <= INITIAL);
    }

    #[test]
    fn non_minimal_lengths_are_protocol_errors() {
        let err = WsError::protocol("non-minimal frame length");
        assert_eq!(error_of(&raw(0x82, &[126, 0, 125], &[0; 125])), err);
        assert_eq!(
            error_of(&raw(0x82, &[127, 0, 0, 0, 0, 0, 0, 0xff, 0xff], &[])),
            err
        );
        assert_eq!(
            error_of(&raw(0x82, &[127, 0, 0, 0, 0, 0, 0, 0, 5], &[0; 5])),
            err
        );
    }

    #[test]
    fn minimal_lengths_at_the_boundaries_decode() {
        for len in [0, 125, 126, 65535, 65536] {
            let mut dec = server();
            dec.feed(&frame(OpCode::Binary, &vec![1; len], true));
            assert_eq!(
                dec.poll(),
                Ok(Some(Event::Binary(&vec![1; len]))),
                "len {len}"
            );
        }
    }

    #[test]
    fn fragmented_control_frame_is_protocol_error() {
        for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            let bytes = frame(op, b"", false);
            assert_eq!(
                error_of(&bytes),
                WsError::protocol("fragmented control frame")
            );
        }
    }

    #[test]
    fn control_frame_over_125_bytes_is_protocol_error() {
        let bytes = frame(OpCode::Ping, &[0; 126], true);
        assert_eq!(
            error_of(&bytes).reason,
            "control frame longer than 125 bytes"
        );
        let mut dec = server();
        dec.feed(&frame(OpCode::Ping, &[0; 125], true));
        assert_eq!(dec.poll(), Ok(Some(Event::Ping(&[0; 125]))));
    }

    #[test]
    fn reserved_bits_are_protocol_errors() {
        for rsv in [0x40, 0x20, 0x10] {
            let bytes = raw(0x81 | rsv, &[1], b"x");
            assert_eq!(
                error_of(&bytes),
                WsError::protocol("reserved bits set"),
                "{rsv:x}"
            );
        }
    }

    #[test]
    fn reserved_opcodes_are_protocol_errors() {
        for op in (3..=7).chain(11..=15) {
            let bytes = raw(0x80 | op, &[0], b"");
            assert_eq!(
                error_of(&bytes),
                WsError::protocol("reserved opcode"),
                "opcode {op}"
            );
        }
    }

    #[test]
    fn close_codes_not_allowed_on_the_wire_are_protocol_errors() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            let bytes = close_frame(&code.to_be_bytes());
            assert_eq!(
                error_of(&bytes),
                WsError::protocol("invalid close code"),
                "{code}"
            );
        }
    }

    #[test]
    fn valid_close_codes_are_reported_with_their_reason() {
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let mut bytes = Vec::new();
            encode_close(&mut bytes, code, "done", Some(KEY));
            let mut dec = server();
            dec.feed(&bytes);
            assert_eq!(
                dec.poll(),
                Ok(Some(Event::Close {
                    code: Some(code),
                    reason: "done"
                }))
            );
        }
    }

    #[test]
    fn empty_close_has_no_code() {
        let mut dec = server();
        dec.feed(&close_frame(b""));
        assert_eq!(
            dec.poll(),
            Ok(Some(Event::Close {
                code: None,
                reason: ""
            }))
        );
    }

    #[test]
    fn one_byte_close_payload_is_protocol_error() {
        assert_eq!(
            error_of(&close_frame(b"\x03")),
            WsError::protocol("close payload of 1 byte")
        );
    }

    #[test]
    fn invalid_utf8_close_reason_is_invalid_payload() {
        let err = error_of(&close_frame(b"\x03\xe8bad \xff"));
        assert_eq!(err.close_code, close_code::INVALID_PAYLOAD);
    }

    #[test]
    fn close_ends_the_stream_and_later_bytes_are_dropped() {
        let mut dec = server();
        dec.feed(&close_frame(b"\x03\xe8"));
        dec.feed(&frame(OpCode::Text, b"after", true));
        assert!(matches!(dec.poll(), Ok(Some(Event::Close { .. }))));
        assert_eq!(dec.poll(), Ok(None));
        let before = dec.buffered();
        dec.feed(&frame(OpCode::Text, b"later", true));
        assert_eq!(dec.buffered(), before);
        assert_eq!(dec.poll(), Ok(None));
    }

    #[test]
    fn invalid_utf8_in_single_text_frame_is_invalid_payload() {
        assert_eq!(
            error_of(&frame(OpCode::Text, b"ok \xc3\x28", true)),
            INVALID_TEXT
        );
    }

    #[test]
    fn truncated_code_point_at_message_end_is_invalid_payload() {
        assert_eq!(
            error_of(&frame(OpCode::Text, b"ok \xe2\x82", true)),
            INVALID_TEXT
        );
        let mut bytes = frame(OpCode::Text, b"ok \xe2", false);
        bytes.extend(frame(OpCode::Continuation, b"\x82", true));
        assert_eq!(error_of(&bytes), INVALID_TEXT);
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_breaks_it() {
        let mut dec = server();
        dec.feed(&frame(OpCode::Text, "κόσμε".as_bytes(), false));
        assert_eq!(dec.poll(), Ok(None));
        dec.feed(&frame(OpCode::Continuation, b"\xf4\x90\x80\x80", false));
        assert_eq!(dec.poll(), Err(INVALID_TEXT)); // before the final fragment
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_is_complete() {
        let bytes = frame(OpCode::Text, b"valid then \xed\xa0\x80 and more text", true);
        let mut dec = server();
        dec.feed(&bytes[..6 + 13]); // header + "valid then " + ED A0
        assert_eq!(dec.poll(), Err(INVALID_TEXT));
    }

    #[test]
    fn partial_valid_text_is_not_an_error_yet() {
        let bytes = frame(OpCode::Text, "a€".as_bytes(), true);
        let mut dec = server();
        dec.feed(&bytes[..bytes.len() - 1]);
        assert_eq!(dec.poll(), Ok(None));
        dec.feed(&bytes[bytes.len() - 1..]);
        assert_eq!(dec.poll(), Ok(Some(Event::Text("a€".as_bytes()))));
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let mut dec = server();
        dec.feed(&frame(OpCode::Binary, b"\xff\xfe", false));
        dec.feed(&frame(OpCode::Continuation, b"\xc3", true));
        assert_eq!(dec.poll(), Ok(Some(Event::Binary(b"\xff\xfe\xc3"))));
    }

    #[test]
    fn continuation_without_message_is_protocol_error() {
        let err = error_of(&frame(OpCode::Continuation, b"x", true));
        assert_eq!(
            err,
            WsError::protocol("continuation frame without a message")
        );
    }

    #[test]
    fn new_data_frame_during_fragmented_message_is_protocol_error() {
        for op in [OpCode::Text, OpCode::Binary] {
            let mut bytes = frame(OpCode::Binary, b"a", false);
            bytes.extend(frame(op, b"b", true));
            let err = error_of(&bytes);
            assert_eq!(
                err,
                WsError::protocol("new message inside a fragmented message")
            );
        }
    }

    #[test]
    fn frame_over_max_frame_size_fails_from_the_header_alone() {
        let limits = WsLimits {
            max_frame_size: 1000,
            max_message_size: 1 << 20,
        };
        let mut dec = Decoder::new(Role::Server, limits);
        let bytes = frame(OpCode::Binary, &[0; 1001], true);
        dec.feed(&bytes[..4]); // the length field, no mask or payload yet
        assert_eq!(
            dec.poll().unwrap_err().close_code,
            close_code::MESSAGE_TOO_BIG
        );
    }

    #[test]
    fn frame_at_max_frame_size_decodes() {
        let limits = WsLimits {
            max_frame_size: 1000,
            max_message_size: 1000,
        };
        let mut dec = Decoder::new(Role::Server, limits);
        dec.feed(&frame(OpCode::Binary, &[0; 1000], true));
        assert_eq!(dec.poll(), Ok(Some(Event::Binary(&[0; 1000]))));
    }

    #[test]
    fn message_over_max_message_size_fails_before_buffering_the_fragment() {
        let limits = WsLimits {
            max_frame_size: 100,
            max_message_size: 150,
        };
        let mut dec = Decoder::new(Role::Server, limits);
        dec.feed(&frame(OpCode::Binary, &[0; 100], false));
        assert_eq!(dec.poll(), Ok(None));
        let next = frame(OpCode::Continuation, &[0; 51], true);
        dec.feed(&next[..2]);
        assert_eq!(dec.poll(), Err(too_big("message exceeds the size limit")));
        assert_eq!(dec.assembled.len(), 100);
    }

    #[test]
    fn single_frame_over_max_message_size_is_too_big() {
        let limits = WsLimits {
            max_frame_size: 100,
            max_message_size: 10,
        };
        let mut dec = Decoder::new(Role::Server, limits);
        dec.feed(&frame(OpCode::Text, &[b'a'; 11], true));
        assert_eq!(dec.poll(), Err(too_big("message exceeds the size limit")));
    }

    #[test]
    fn error_is_sticky_and_input_is_dropped() {
        let mut dec = server();
        dec.feed(&raw(0x83, &[0], b""));
        let err = dec.poll().unwrap_err();
        dec.feed(&frame(OpCode::Text, b"fine", true));
        assert_eq!(dec.poll(), Err(err));
        assert_eq!(dec.poll(), Err(err));
    }

    #[test]
    fn header_errors_need_only_the_bytes_they_check() {
        let mut dec = server();
        dec.feed(&[0x82]);
        assert_eq!(dec.poll(), Ok(None));
        dec.feed(&[0x05]); // unmasked; no payload sent yet
        assert_eq!(dec.poll(), Err(WsError::protocol("unmasked client frame")));
        let mut dec = server();
        dec.feed(&[0xC2]); // RSV1; the second byte is not needed to tell
        assert_eq!(dec.poll(), Err(WsError::protocol("reserved bits set")));
        let mut dec = server();
        dec.feed(&[0x80]); // continuation with no message in progress
        assert_eq!(
            dec.poll().unwrap_err().close_code,
            close_code::PROTOCOL_ERROR
        );
    }

    #[test]
    fn commit_is_clamped_to_the_read_buffer() {
        let mut dec = server();
        let len = dec.read_buf(8).len();
        dec.commit(len + 100);
        assert_eq!(dec.buffered(), len);
    }

    #[test]
    fn read_buf_is_zero_copy_and_lazy() {
        let bytes = frame(OpCode::Binary, b"abc", true);
        let mut dec = server();
        let spare = dec.read_buf(64);
        spare[..bytes.len()].copy_from_slice(&bytes);
        dec.commit(bytes.len() - 1);
        assert_eq!(dec.poll(), Ok(None));
        let ptr = dec.buf.as_ptr();
        dec.read_buf(1)[0] = bytes[bytes.len() - 1];
        dec.commit(1);
        assert_eq!(dec.poll(), Ok(Some(Event::Binary(b"abc"))));
        assert_eq!(dec.buf.as_ptr(), ptr, "no reallocation for a small read");
    }

    #[test]
    fn compaction_moves_only_the_unconsumed_tail() {
        let mut dec = server();
        let mut bytes = frame(OpCode::Binary, &[1; 1000], true);
        let second = frame(OpCode::Binary, &[2; 1000], true);
        bytes.extend_from_slice(&second[..10]);
        dec.feed(&bytes);
        assert!(matches!(dec.poll(), Ok(Some(Event::Binary(_)))));
        assert_eq!(dec.poll(), Ok(None));
        assert_eq!(
            dec.start,
            bytes.len() - 10,
            "nothing moves while space remains"
        );
        let cap = dec.buf.len();
        let spare = dec.read_buf(cap - 5);
        assert!(spare.len() >= cap - 5);
        assert_eq!(dec.start, 0);
        assert_eq!(dec.buffered(), 10);
        dec.feed(&second[10..]);
        assert_eq!(dec.poll(), Ok(Some(Event::Binary(&[2; 1000]))));
    }

    #[test]
    fn large_buffers_are_given_back_once_empty() {
        let mut dec = server();
        dec.feed(&frame(OpCode::Binary, &vec![0; 200_000], true));
        assert!(matches!(dec.poll(), Ok(Some(Event::Binary(_)))));
        assert!(dec.buf.capacity() > RETAIN);
        dec.read_buf(1024);
        assert!(dec.buf.capacity() <= RETAIN);
        dec.shrink();
        assert_eq!(dec.buf.capacity(), 0);
    }

    #[test]
    fn reassembly_never_allocates_past_the_message_limit() {
        let limits = WsLimits {
            max_frame_size: 100,
            max_message_size: 1000,
        };
        let mut dec = Decoder::new(Role::Server, limits);
        dec.feed(&frame(OpCode::Binary, &[1; 100], false));
        for _ in 0..8 {
            dec.feed(&frame(OpCode::Continuation, &[1; 100], false));
            assert_eq!(dec.poll(), Ok(None));
            assert!(
                dec.assembled.capacity() <= 1000,
                "{}",
                dec.assembled.capacity()
            );
        }
        dec.feed(&frame(OpCode::Continuation, &[1; 100], true));
        assert_eq!(dec.poll(), Ok(Some(Event::Binary(&[1; 1000]))));
    }

    #[test]
    fn read_buffer_growth_is_bounded_by_the_frame_limit() {
        let limits = WsLimits {
            max_frame_size: 10_000,
            max_message_size: 10_000,
        };
        let mut dec = Decoder::new(Role::Server, limits);
        let bytes = frame(OpCode::Binary, &[3; 10_000], true);
        for chunk in bytes.chunks(100) {
            dec.read_buf(100)[..chunk.len()].copy_from_slice(chunk);
            dec.commit(chunk.len());
            assert!(dec.buf.capacity() <= 10_000 + MAX_HEADER_LEN + 100);
        }
        assert_eq!(dec.poll(), Ok(Some(Event::Binary(&[3; 10_000]))));
    }

    #[test]
    fn shrink_keeps_a_partial_frame() {
        let bytes = frame(OpCode::Binary, b"partial", true);
        let mut dec = server();
        dec.feed(&bytes[..5]);
        dec.shrink();
        dec.feed(&bytes[5..]);
        assert_eq!(dec.poll(), Ok(Some(Event::Binary(b"partial"))));
    }
}
