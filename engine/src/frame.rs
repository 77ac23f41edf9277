//! The BlueWren binary frame: a fixed 32-byte big-endian header, then the body.
//!
//! ```text
//! offset size field
//! 0      1    version   must be VERSION (1)
//! 1      1    kind      command/event kind, passed through (the node validates it)
//! 2      1    flags     bit0 COMPRESSED, bit1 DICT, bits 2-7 reserved (must be 0)
//! 3      1    reserved  must be 0
//! 4      4    body_len  u32
//! 8      8    conv      conversation id (0 = none)
//! 16     8    seq       sequence number within the conversation (0 = none)
//! 24     8    cmid      client message id (0 = none)
//! 32     body_len bytes of body
//! ```
//!
//! Frames carry no delimiter of their own: `body_len` says where the next one
//! starts, so several may ride back to back in one WebSocket message or on a
//! raw TCP stream.
//!
//! # Design
//!
//! * **Zero-copy.** Decoding never copies or allocates: a [`FrameRef`] borrows
//!   its body from the input buffer, and [`frames`] walks a whole buffer of
//!   frames without a `Vec`.
//! * **Fail early.** The header is validated as soon as its 32 bytes are
//!   present, before waiting for the body, so an oversized or malformed frame
//!   is refused without buffering a byte of it. Checks run in a fixed order
//!   (version, reserved bits, body length) and the first failure is reported.
//! * **Streams.** [`StreamDecoder`] owns a read buffer for byte streams that
//!   split frames anywhere (raw TCP). The socket reads straight into it
//!   ([`StreamDecoder::read_buf`] / [`StreamDecoder::commit`]), and it holds at
//!   most one partial frame once every complete one has been polled out.
//! * **Compression is the caller's business.** The codec passes `flags` through
//!   (after the reserved-bit check); bodies flagged [`flags::COMPRESSED`] are
//!   decompressed with [`crate::compress`], which bounds their decompressed size.
//!
//! # Example
//!
//! The frame worked through in `docs/protocol.md`:
//!
//! ```
//! use bluewren_engine::frame::{decode, encode, FrameLimits, Header};
//!
//! let header = Header { kind: 1, flags: 0, conv: 7, seq: 42, cmid: 0x1122_3344_5566_7788 };
//! let mut wire = Vec::new();
//! encode(&mut wire, &header, b"hello");
//! assert_eq!(
//!     wire,
//!     b"\x01\x01\x00\x00\x00\x00\x00\x05\
//!       \x00\x00\x00\x00\x00\x00\x00\x07\
//!       \x00\x00\x00\x00\x00\x00\x00\x2a\
//!       \x11\x22\x33\x44\x55\x66\x77\x88\
//!       hello"
//! );
//! let (frame, used) = decode(&wire, &FrameLimits::default())?.expect("a whole frame");
//! assert_eq!((frame.header, frame.body, used), (header, &b"hello"[..], 37));
//! # Ok::<(), bluewren_engine::frame::FrameError>(())
//! ```

use std::fmt;
use std::iter::FusedIterator;

/// The only frame version this codec reads and writes (header byte 0).
pub const VERSION: u8 = 1;

/// Length of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 32;

/// Default [`FrameLimits::max_body`]: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Bits of the header's `flags` byte.
pub mod flags {
    /// The body is a zstd frame.
    pub const COMPRESSED: u8 = 0x01;
    /// The body was compressed with the shipped dictionary (only meaningful
    /// together with [`COMPRESSED`]).
    pub const DICT: u8 = 0x02;
    /// Bits 2-7: reserved, must be zero.
    pub const RESERVED: u8 = 0xFC;
}

/// The header fields a frame carries besides its version and body length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Header {
    /// Command or event kind. Any value passes the codec.
    pub kind: u8,
    /// [`flags`] bits; the [`flags::RESERVED`] bits must be zero.
    pub flags: u8,
    /// Conversation id, 0 for none.
    pub conv: u64,
    /// Sequence number within the conversation, 0 for none.
    pub seq: u64,
    /// Client message id, 0 for none.
    pub cmid: u64,
}

/// A decoded frame whose body borrows from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The validated header.
    pub header: Header,
    /// The body, exactly `body_len` bytes, still compressed if the header says so.
    pub body: &'a [u8],
}

/// Limits enforced on every decoded frame, before its body is buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest accepted `body_len` in bytes (on the wire, before decompression).
    pub max_body: usize,
}

impl Default for FrameLimits {
    /// `max_body` = [`DEFAULT_MAX_BODY`] (1 MiB).
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Why bytes are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside a frame: `have` bytes of it are present, the
    /// frame needs `need` (the header alone if the header is incomplete).
    Truncated {
        /// Bytes of the frame present.
        have: usize,
        /// Bytes the frame needs (header plus body once the header is known).
        need: usize,
    },
    /// Header byte 0 is not [`VERSION`].
    BadVersion(u8),
    /// A [`flags::RESERVED`] bit or the reserved header byte 3 is set.
    ReservedBits,
    /// `body_len` exceeds [`FrameLimits::max_body`].
    TooLarge {
        /// The declared body length.
        len: usize,
        /// The limit it exceeds.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { have, need } => write!(
                f,
                "truncated BlueWren frame: {have} of its {need} bytes present; \
                 a message must end on a frame boundary"
            ),
            Self::BadVersion(v) => write!(
                f,
                "unsupported BlueWren frame version {v}: header byte 0 must be {VERSION}"
            ),
            Self::ReservedBits => f.write_str(
                "reserved BlueWren header bits set: flags bits 2-7 (byte 2) and byte 3 must be 0",
            ),
            Self::TooLarge { len, max } => write!(
                f,
                "BlueWren frame body of {len} bytes exceeds the {max}-byte limit: \
                 split the payload or raise max_body"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Total encoded size of a frame with a `body_len`-byte body (saturates).
#[inline]
pub const fn encoded_len(body_len: usize) -> usize {
    HEADER_LEN.saturating_add(body_len)
}

/// The 32 header bytes of a frame with `header` and a `body_len`-byte body.
///
/// For senders that write the header and a shared body separately
/// (vectored writes); [`encode`] appends both to one buffer.
/// `header.flags` must not have [`flags::RESERVED`] bits set (checked by a
/// debug assertion): a receiver would reject the frame.
#[inline]
pub fn encode_header(header: &Header, body_len: u32) -> [u8; HEADER_LEN] {
    debug_assert_eq!(header.flags & flags::RESERVED, 0, "reserved flag bits set");
    let mut b = [0; HEADER_LEN];
    b[0] = VERSION;
    b[1] = header.kind;
    b[2] = header.flags;
    b[4..8].copy_from_slice(&body_len.to_be_bytes());
    b[8..16].copy_from_slice(&header.conv.to_be_bytes());
    b[16..24].copy_from_slice(&header.seq.to_be_bytes());
    b[24..32].copy_from_slice(&header.cmid.to_be_bytes());
    b
}

/// Appends one encoded frame to `out`; never panics in release builds.
///
/// A body longer than `u32::MAX` bytes cannot be framed: that is a caller bug,
/// caught by a debug assertion (release builds write a truncated `body_len`).
/// Bodies should in any case respect the receiver's [`FrameLimits`].
#[inline]
pub fn encode(out: &mut Vec<u8>, header: &Header, body: &[u8]) {
    debug_assert!(
        u32::try_from(body.len()).is_ok(),
        "frame body of {} bytes exceeds u32::MAX",
        body.len()
    );
    out.reserve(encoded_len(body.len()));
    out.extend_from_slice(&encode_header(header, body.len() as u32));
    out.extend_from_slice(body);
}

#[inline(always)]
fn be_u64(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(word)
}

/// Validates a frame header and returns it with its body length.
///
/// Checks, in this order: version, reserved bits, body length against
/// `limits`. This is all [`decode`] looks at before the body arrives.
#[inline]
pub fn decode_header(
    bytes: &[u8; HEADER_LEN],
    limits: &FrameLimits,
) -> Result<(Header, usize), FrameError> {
    let [version, kind, flag_bits, reserved, l0, l1, l2, l3, ..] = *bytes;
    if version != VERSION {
        return Err(FrameError::BadVersion(version));
    }
    if flag_bits & flags::RESERVED != 0 || reserved != 0 {
        return Err(FrameError::ReservedBits);
    }
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if len > limits.max_body {
        return Err(FrameError::TooLarge {
            len,
            max: limits.max_body,
        });
    }
    let header = Header {
        kind,
        flags: flag_bits,
        conv: be_u64(bytes, 8),
        seq: be_u64(bytes, 16),
        cmid: be_u64(bytes, 24),
    };
    Ok((header, len))
}

/// Outcome of looking for one frame at the start of a buffer.
enum Split<'a> {
    /// A whole frame and the bytes after it.
    Frame(FrameRef<'a>, &'a [u8]),
    /// Incomplete: the frame needs this many bytes in total.
    Need(usize),
}

#[inline(always)]
fn split<'a>(buf: &'a [u8], limits: &FrameLimits) -> Result<Split<'a>, FrameError> {
    let Some((head, tail)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Ok(Split::Need(HEADER_LEN));
    };
    let (header, len) = decode_header(head, limits)?;
    Ok(match tail.split_at_checked(len) {
        Some((body, rest)) => Split::Frame(FrameRef { header, body }, rest),
        None => Split::Need(encoded_len(len)),
    })
}

/// Decodes one frame from the start of `buf`.
///
/// Returns the frame and the number of bytes it occupies, or `Ok(None)` if
/// `buf` holds only part of it. The header is validated as soon as its 32
/// bytes are present, so an invalid or oversized frame fails without waiting
/// for its body. Never allocates.
#[inline]
pub fn decode<'a>(
    buf: &'a [u8],
    limits: &FrameLimits,
) -> Result<Option<(FrameRef<'a>, usize)>, FrameError> {
    Ok(match split(buf, limits)? {
        Split::Frame(frame, _) => Some((frame, HEADER_LEN + frame.body.len())),
        Split::Need(_) => None,
    })
}

/// Decodes every frame of a complete message (zero or more frames back to back).
///
/// A trailing partial frame is [`FrameError::Truncated`]; the first error
/// fails the whole message.
pub fn decode_all<'a>(
    buf: &'a [u8],
    limits: &FrameLimits,
) -> Result<Vec<FrameRef<'a>>, FrameError> {
    frames(buf, limits).collect()
}

/// Iterates over the frames of a complete message without allocating.
///
/// Yields each frame in order; a trailing partial frame yields
/// [`FrameError::Truncated`]. The iterator ends after the first error.
#[inline]
pub fn frames<'a>(buf: &'a [u8], limits: &FrameLimits) -> Frames<'a> {
    Frames {
        rest: buf,
        limits: *limits,
    }
}

/// Iterator returned by [`frames`].
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    rest: &'a [u8],
    limits: FrameLimits,
}

impl<'a> Frames<'a> {
    /// The bytes not yet decoded (empty after an error).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<FrameRef<'a>, FrameError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let have = self.rest.len();
        match split(self.rest, &self.limits) {
            Ok(Split::Frame(frame, rest)) => {
                self.rest = rest;
                Some(Ok(frame))
            }
            Ok(Split::Need(need)) => {
                self.rest = &[];
                Some(Err(FrameError::Truncated { have, need }))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for Frames<'_> {}

/// Read buffers larger than this are released once drained, so one large
/// frame does not pin its memory for the life of the connection.
const RETAIN_CAPACITY: usize = 64 * 1024;
/// Smallest allocation of the read buffer.
const INITIAL_CAPACITY: usize = 4096;

/// Incremental frame decoder for a byte stream that may split frames anywhere.
///
/// Either let the transport read into the decoder's own buffer
/// ([`read_buf`](Self::read_buf), then [`commit`](Self::commit) the count
/// read) or copy bytes in with [`feed`](Self::feed); then call
/// [`poll`](Self::poll) until it returns `Ok(None)`. A polled frame borrows
/// the buffer, so it is valid until the next call on the decoder.
///
/// Headers are validated as soon as they arrive, so with every complete
/// frame polled out the buffer holds at most one partial frame of at most
/// `HEADER_LEN + max_body` bytes, and it never grows past that plus the
/// space last asked for with `read_buf`. Errors are final: the stream cannot
/// be resynchronised, so every later `poll` returns the same error and the
/// connection should close.
pub struct StreamDecoder {
    /// Initialised storage; `buf[start..end]` is received, unpolled input.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limits: FrameLimits,
    error: Option<FrameError>,
}

impl StreamDecoder {
    /// An empty decoder enforcing `limits`; allocates nothing until data arrives.
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            limits,
            error: None,
        }
    }

    /// Writable space of at least `max(min, 1)` bytes after the buffered input,
    /// for the transport to read into (zero copy); follow with
    /// [`commit`](Self::commit).
    ///
    /// Compacts or grows the buffer only when the spare space is too small;
    /// growth doubles (amortised O(1) per byte) but stops at what the largest
    /// frame plus this read can need.
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        let min = min.max(1);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > RETAIN_CAPACITY && min <= RETAIN_CAPACITY {
                self.buf = Vec::new();
            }
        }
        if self.buf.len() - self.end < min {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < min {
                let bound = encoded_len(self.limits.max_body).saturating_add(min);
                let double = (2 * self.buf.len()).max(INITIAL_CAPACITY).min(bound);
                let len = self.end.saturating_add(min).max(double);
                self.buf.reserve_exact(len - self.buf.len());
                self.buf.resize(len, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes written into the last [`read_buf`](Self::read_buf)
    /// slice as received; `n` larger than that slice is clamped.
    pub fn commit(&mut self, n: usize) {
        self.end += n.min(self.buf.len() - self.end);
    }

    /// Gives the read buffer back if it holds no bytes (for idle connections).
    pub fn shrink(&mut self) {
        if self.start == self.end {
            (self.start, self.end, self.buf) = (0, 0, Vec::new());
        }
    }

    /// Copies `data` in as received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.read_buf(data.len())[..data.len()].copy_from_slice(data);
        self.commit(data.len());
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the
    /// error that ended the stream (returned again on every later call).
    #[inline]
    pub fn poll(&mut self) -> Result<Option<FrameRef<'_>>, FrameError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match split(&self.buf[self.start..self.end], &self.limits) {
            Ok(Split::Frame(frame, _)) => {
                self.start += HEADER_LEN + frame.body.len();
                Ok(Some(frame))
            }
            Ok(Split::Need(_)) => Ok(None),
            Err(e) => {
                self.error = Some(e);
                Err(e)
            }
        }
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &FrameLimits {
        &self.limits
    }
}

impl fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("buffered", &self.buffered())
            .field("capacity", &self.buf.len())
            .field("limits", &self.limits)
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits { max_body: 64 };

    fn header() -> Header {
        Header {
            kind: 7,
            flags: flags::COMPRESSED,
            conv: 0x0102_0304_0506_0708,
            seq: 42,
            cmid: u64::MAX,
        }
    }

    fn frame(header: &Header, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, header, body);
        out
    }

    /// A header-only frame with byte `at` replaced by `value`.
    fn patched(at: usize, value: u8) -> Vec<u8> {
        let mut bytes = frame(&Header::default(), b"");
        bytes[at] = value;
        bytes
    }

    #[test]
    fn encode_writes_big_endian_fields_at_their_offsets() {
        let bytes = frame(&header(), b"hi");
        let expected: [u8; 34] = [
            1, 7, 1, 0, // version, kind, flags, reserved
            0, 0, 0, 2, // body_len
            1, 2, 3, 4, 5, 6, 7, 8, // conv
            0, 0, 0, 0, 0, 0, 0, 42, // seq
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // cmid
            b'h', b'i',
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn encode_appends_to_existing_bytes() {
        let mut out = b"prefix".to_vec();
        encode(&mut out, &header(), b"body");
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(out[6..], frame(&header(), b"body"));
    }

    #[test]
    fn encode_header_matches_the_head_of_encode() {
        let bytes = frame(&header(), b"abc");
        assert_eq!(encode_header(&header(), 3), bytes[..HEADER_LEN]);
    }

    #[test]
    fn encoded_len_is_header_plus_body_and_saturates() {
        assert_eq!(encoded_len(0), 32);
        assert_eq!(encoded_len(5), 37);
        assert_eq!(encoded_len(usize::MAX), usize::MAX);
        assert_eq!(frame(&header(), b"hello").len(), encoded_len(5));
    }

    #[test]
    fn decode_round_trips_header_and_body() {
        let bytes = frame(&header(), b"payload");
        let (f, used) = decode(&bytes, &LIMITS).unwrap().unwrap();
        assert_eq!(f.header, header());
        assert_eq!(f.body, b"payload");
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn decode_consumes_only_the_first_frame() {
        let mut bytes = frame(&header(), b"one");
        let first = bytes.len();
        bytes.extend(frame(&Header::default(), b"two"));
        let (f, used) = decode(&bytes, &LIMITS).unwrap().unwrap();
        assert_eq!((f.body, used), (&b"one"[..], first));
        let (f, _) = decode(&bytes[used..], &LIMITS).unwrap().unwrap();
        assert_eq!(f.body, b"two");
    }

    #[test]
    fn body_of_exactly_max_body_is_accepted() {
        let body = [0xAB; 64];
        let bytes = frame(&header(), &body);
        let (f, _) = decode(&bytes, &LIMITS).unwrap().unwrap();
        assert_eq!(f.body, body);
    }

    #[test]
    fn body_one_over_max_body_is_rejected_from_the_header_alone() {
        let bytes = frame(&header(), &[0; 65]);
        let err = FrameError::TooLarge { len: 65, max: 64 };
        assert_eq!(decode(&bytes[..HEADER_LEN], &LIMITS), Err(err));
        assert_eq!(decode(&bytes, &LIMITS), Err(err));
    }

    #[test]
    fn body_len_is_read_as_a_full_u32() {
        let bytes = patched(4, 0x80); // body_len = 2^31
        let huge = FrameLimits {
            max_body: usize::MAX,
        };
        assert_eq!(decode(&bytes, &huge), Ok(None));
        let err = decode(&bytes, &LIMITS).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 1 << 31,
                max: 64
            }
        );
    }

    #[test]
    fn zero_length_body_decodes() {
        let bytes = frame(&header(), b"");
        let (f, used) = decode(&bytes, &LIMITS).unwrap().unwrap();
        assert_eq!((f.body.len(), used), (0, HEADER_LEN));
    }

    #[test]
    fn versions_zero_and_two_are_rejected() {
        for v in [0, 2, 0xFF] {
            assert_eq!(
                decode(&patched(0, v), &LIMITS),
                Err(FrameError::BadVersion(v))
            );
        }
    }

    #[test]
    fn each_reserved_flag_bit_is_rejected() {
        for bit in 2..8 {
            let bytes = patched(2, 1 << bit);
            assert_eq!(
                decode(&bytes, &LIMITS),
                Err(FrameError::ReservedBits),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn compressed_and_dict_flags_pass_through() {
        for f in [
            0,
            flags::COMPRESSED,
            flags::DICT,
            flags::COMPRESSED | flags::DICT,
        ] {
            let bytes = patched(2, f);
            let (frame, _) = decode(&bytes, &LIMITS).unwrap().unwrap();
            assert_eq!(frame.header.flags, f);
        }
    }

    #[test]
    fn nonzero_reserved_byte_is_rejected() {
        for v in [1, 0x80, 0xFF] {
            assert_eq!(
                decode(&patched(3, v), &LIMITS),
                Err(FrameError::ReservedBits)
            );
        }
    }

    #[test]
    fn every_kind_passes_through() {
        for kind in 0..=u8::MAX {
            let bytes = patched(1, kind);
            let (f, _) = decode(&bytes, &LIMITS).unwrap().unwrap();
            assert_eq!(f.header.kind, kind);
        }
    }

    #[test]
    fn version_is_checked_before_reserved_bits_and_size() {
        let mut bytes = patched(0, 9);
        bytes[2] = 0xFF;
        bytes[4] = 0xFF;
        assert_eq!(decode(&bytes, &LIMITS), Err(FrameError::BadVersion(9)));
        bytes[0] = VERSION;
        assert_eq!(decode(&bytes, &LIMITS), Err(FrameError::ReservedBits));
    }

    #[test]
    fn truncation_at_every_offset_waits_for_more_bytes() {
        let bytes = frame(&header(), b"0123456789");
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], &LIMITS), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn truncation_at_every_offset_fails_a_whole_message() {
        let bytes = frame(&header(), b"0123456789");
        for cut in 1..bytes.len() {
            let need = if cut < HEADER_LEN {
                HEADER_LEN
            } else {
                bytes.len()
            };
            let err = FrameError::Truncated { have: cut, need };
            assert_eq!(decode_all(&bytes[..cut], &LIMITS), Err(err), "cut at {cut}");
        }
    }

    #[test]
    fn truncated_second_frame_reports_its_own_lengths() {
        let mut bytes = frame(&header(), b"first");
        let second = frame(&header(), b"second");
        bytes.extend_from_slice(&second[..36]);
        let err = FrameError::Truncated {
            have: 36,
            need: second.len(),
        };
        assert_eq!(decode_all(&bytes, &LIMITS), Err(err));
    }

    #[test]
    fn decode_all_returns_every_frame_in_order() {
        let mut bytes = Vec::new();
        for i in 0..100u64 {
            let h = Header { seq: i, ..header() };
            encode(&mut bytes, &h, &i.to_be_bytes()[..(i % 9) as usize]);
        }
        let all = decode_all(&bytes, &LIMITS).unwrap();
        assert_eq!(all.len(), 100);
        for (i, f) in (0..100u64).zip(&all) {
            assert_eq!(f.header.seq, i);
            assert_eq!(f.body, &i.to_be_bytes()[..(i % 9) as usize]);
        }
    }

    #[test]
    fn decode_all_of_an_empty_message_is_empty() {
        assert_eq!(decode_all(&[], &LIMITS), Ok(vec![]));
    }

    #[test]
    fn frames_stop_after_the_first_error() {
        let mut bytes = frame(&header(), b"ok");
        bytes.extend(patched(0, 2));
        bytes.extend(frame(&header(), b"never"));
        let mut it = frames(&bytes, &LIMITS);
        assert_eq!(it.next().unwrap().unwrap().body, b"ok");
        assert_eq!(it.next(), Some(Err(FrameError::BadVersion(2))));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
        assert!(it.remainder().is_empty());
    }

    #[test]
    fn frames_remainder_is_the_undecoded_tail() {
        let mut bytes = frame(&header(), b"a");
        let tail = frame(&header(), b"b");
        bytes.extend_from_slice(&tail);
        let mut it = frames(&bytes, &LIMITS);
        it.next();
        assert_eq!(it.remainder(), tail);
    }

    #[test]
    fn error_messages_say_what_to_change() {
        let msg = |e: FrameError| e.to_string();
        assert!(msg(FrameError::BadVersion(2)).contains("must be 1"));
        assert!(msg(FrameError::ReservedBits).contains("must be 0"));
        assert!(msg(FrameError::TooLarge { len: 9, max: 8 }).contains("raise max_body"));
        assert!(msg(FrameError::Truncated { have: 3, need: 32 }).contains("3 of its 32"));
    }

    #[test]
    fn default_limit_is_one_mebibyte() {
        assert_eq!(FrameLimits::default().max_body, 1 << 20);
    }

    fn stream() -> (Vec<u8>, Vec<(Header, Vec<u8>)>) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for i in 0..20u8 {
            let h = Header {
                kind: i,
                seq: u64::from(i),
                ..header()
            };
            let body = vec![i; usize::from(i) * 3];
            encode(&mut bytes, &h, &body);
            want.push((h, body));
        }
        (bytes, want)
    }

    fn drain(d: &mut StreamDecoder, got: &mut Vec<(Header, Vec<u8>)>) {
        while let Some(f) = d.poll().unwrap() {
            got.push((f.header, f.body.to_vec()));
        }
    }

    #[test]
    fn stream_fed_one_byte_at_a_time_yields_each_frame_once() {
        let (bytes, want) = stream();
        let mut d = StreamDecoder::new(LIMITS);
        let mut got = Vec::new();
        for b in &bytes {
            d.feed(std::slice::from_ref(b));
            drain(&mut d, &mut got);
        }
        assert_eq!(got, want);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn stream_read_into_its_own_buffer_in_uneven_chunks() {
        let (bytes, want) = stream();
        let mut d = StreamDecoder::new(LIMITS);
        let mut got = Vec::new();
        let mut rest = &bytes[..];
        for size in [1, 31, 2, 100, 7, 64, 33].into_iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = size.min(rest.len());
            let buf = d.read_buf(n);
            assert!(buf.len() >= n);
            buf[..n].copy_from_slice(&rest[..n]);
            d.commit(n);
            rest = &rest[n..];
            drain(&mut d, &mut got);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn split_frame_across_reads_decodes_once() {
        let bytes = frame(&header(), b"split me");
        let mut d = StreamDecoder::new(LIMITS);
        d.feed(&bytes[..20]);
        assert_eq!(d.poll(), Ok(None));
        d.feed(&bytes[20..]);
        assert_eq!(d.poll().unwrap().unwrap().body, b"split me");
        assert_eq!(d.poll(), Ok(None));
    }

    #[test]
    fn stream_rejects_oversized_frame_once_the_header_arrives() {
        let bytes = frame(&header(), &[0; 65]);
        let mut d = StreamDecoder::new(LIMITS);
        d.feed(&bytes[..HEADER_LEN - 1]);
        assert_eq!(d.poll(), Ok(None));
        d.feed(&bytes[HEADER_LEN - 1..HEADER_LEN]);
        assert_eq!(d.poll(), Err(FrameError::TooLarge { len: 65, max: 64 }));
    }

    #[test]
    fn stream_errors_are_final() {
        let mut d = StreamDecoder::new(LIMITS);
        d.feed(&patched(3, 1));
        assert_eq!(d.poll(), Err(FrameError::ReservedBits));
        d.feed(&frame(&header(), b"fine"));
        assert_eq!(d.poll(), Err(FrameError::ReservedBits));
    }

    #[test]
    fn buffered_counts_unpolled_bytes() {
        let bytes = frame(&header(), b"abc");
        let mut d = StreamDecoder::new(LIMITS);
        assert_eq!(d.buffered(), 0);
        d.feed(&bytes);
        d.feed(&bytes[..5]);
        assert_eq!(d.buffered(), bytes.len() + 5);
        d.poll().unwrap().unwrap();
        assert_eq!(d.buffered(), 5);
    }

    #[test]
    fn read_buf_keeps_a_partial_frame_when_compacting() {
        let bytes = frame(&header(), b"0123456789");
        let mut d = StreamDecoder::new(LIMITS);
        d.feed(&bytes);
        d.feed(&bytes[..HEADER_LEN + 2]);
        d.poll().unwrap().unwrap();
        // Asking for more room than is left after the partial frame compacts it.
        let room = d.buf.len() - d.end + 1;
        d.read_buf(room);
        assert_eq!(d.start, 0);
        d.feed(&bytes[HEADER_LEN + 2..]);
        assert_eq!(d.poll().unwrap().unwrap().body, b"0123456789");
    }

    #[test]
    fn read_buf_returns_at_least_one_byte_of_room() {
        let mut d = StreamDecoder::new(LIMITS);
        assert!(!d.read_buf(0).is_empty());
        assert!(d.read_buf(1000).len() >= 1000);
    }

    #[test]
    fn large_read_buffer_is_released_once_drained() {
        let big = FrameLimits { max_body: 1 << 20 };
        let bytes = frame(&header(), &vec![1; 200_000]);
        let mut d = StreamDecoder::new(big);
        d.feed(&bytes);
        assert!(d.buf.len() >= bytes.len());
        d.poll().unwrap().unwrap();
        d.read_buf(4096);
        assert!(d.buf.len() <= RETAIN_CAPACITY, "kept {} bytes", d.buf.len());
    }

    #[test]
    fn commit_is_clamped_to_the_read_buffer() {
        let mut d = StreamDecoder::new(LIMITS);
        let len = d.read_buf(8).len();
        d.commit(len + 100);
        assert_eq!(d.buffered(), len);
    }

    #[test]
    fn read_buffer_growth_stops_at_the_largest_frame() {
        let mut d = StreamDecoder::new(LIMITS);
        let bytes = frame(&header(), &[5; 64]);
        for _ in 0..20 {
            d.feed(&bytes);
            d.poll().unwrap().unwrap();
        }
        // Doubling would pass 4 KiB; a 64-byte limit caps it at frame + read.
        assert!(d.buf.len() <= 2 * bytes.len(), "{}", d.buf.len());
        let mut d = StreamDecoder::new(FrameLimits { max_body: 1 << 30 });
        d.feed(&[1; 5000]);
        d.read_buf(10_000);
        assert_eq!(d.buf.len(), 15_000);
    }

    #[test]
    fn shrink_releases_an_empty_buffer_only() {
        let mut d = StreamDecoder::new(LIMITS);
        let bytes = frame(&header(), b"x");
        d.feed(&bytes[..10]);
        d.shrink();
        assert_eq!(d.buffered(), 10);
        d.feed(&bytes[10..]);
        d.poll().unwrap().unwrap();
        d.shrink();
        assert_eq!((d.buf.capacity(), d.buffered()), (0, 0));
        d.feed(&bytes);
        assert_eq!(d.poll().unwrap().unwrap().body, b"x");
    }

    #[test]
    fn commit_of_zero_changes_nothing() {
        let mut d = StreamDecoder::new(LIMITS);
        d.read_buf(64);
        d.commit(0);
        assert_eq!((d.buffered(), d.poll()), (0, Ok(None)));
    }
}
