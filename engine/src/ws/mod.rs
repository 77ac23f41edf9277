//! RFC 6455 WebSocket: the opening handshake, an incremental frame decoder and
//! a frame encoder.
//!
//! # Wire format
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| payload len |    extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |           (16/64)             |
//! |N|V|V|V|       |S|             |  (if payload len == 126/127)  |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               | masking key, if MASK set      |
//! +-------------------------------+-------------------------------+
//! | masking key (continued)       |          payload data ...     |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! A length of 0..=125 is stored in the 7-bit field, up to 65535 in a 16-bit
//! extension (field = 126) and beyond in a 64-bit extension (field = 127), all
//! big-endian. The shortest form is mandatory and the 64-bit form must have its
//! top bit clear; anything else is a protocol error. Clients mask every frame
//! with a 4-byte key (`payload[i] ^= key[i % 4]`); servers never mask.
//!
//! A message is one data frame (`Text`/`Binary`) with FIN set, or a first data
//! frame without FIN followed by `Continuation` frames, the last with FIN.
//! Control frames (`Close`, `Ping`, `Pong`) carry at most 125 bytes, are never
//! fragmented and may appear between the fragments of a message. A close
//! payload is empty or a 2-byte code plus a UTF-8 reason.
//!
//! # Design
//!
//! - [`Decoder`] owns one read buffer. The socket reads straight into its spare
//!   capacity ([`Decoder::read_buf`] + [`Decoder::commit`]); [`Decoder::poll`]
//!   then yields events one by one. A message that arrives as a single frame
//!   is unmasked in place and returned as a slice of that buffer: no copy, no
//!   allocation. Only fragmented messages are reassembled, into a second buffer
//!   that is reused from message to message.
//! - Every limit ([`WsLimits`]) is checked against the header's declared length
//!   before a byte of the payload is stored, so nothing a peer announces can
//!   make the decoder allocate more than the limits allow. The read buffer is
//!   never sized from a declared length: it grows only as bytes arrive.
//! - Text is validated with SIMD ([`simdutf8`]) as it arrives, also across
//!   fragments and across partial reads of one frame, so invalid UTF-8 is
//!   reported as soon as the received prefix can no longer be valid.
//! - Any violation is a [`WsError`] carrying the close code to send; the
//!   decoder then stays failed. Nothing in this module panics on peer input.
//! - The encoder appends frames to a caller-owned `Vec<u8>`, so one buffer is
//!   reused for every write, and a server frame (never masked) can be encoded
//!   once and shared by every recipient.
//! - The handshake functions parse and write HTTP/1.1 upgrade requests and
//!   responses, for both roles, with bounded header bytes and header count.

mod decoder;
mod encoder;
mod handshake;
mod utf8;

use std::fmt;

pub use decoder::Decoder;
pub use encoder::{
    apply_mask, encode_close, encode_frame, frame_header_len, write_frame_header, MAX_CLOSE_REASON,
    MAX_CONTROL_PAYLOAD,
};
pub use handshake::{
    accept_key, client_key, parse_request, parse_response, select_subprotocol,
    write_client_request, write_rejection, write_response, HandshakeError, HandshakeLimits,
    Request, Response,
};

/// A frame's opcode. Values 3-7 and 11-15 are reserved and rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// A later fragment of a fragmented message.
    Continuation = 0,
    /// The first (or only) frame of a UTF-8 text message.
    Text = 1,
    /// The first (or only) frame of a binary message.
    Binary = 2,
    /// Close: empty, or a 2-byte code and a UTF-8 reason.
    Close = 8,
    /// Ping: the peer expects a Pong with the same payload.
    Ping = 9,
    /// Pong: the answer to a Ping, or an unsolicited heartbeat.
    Pong = 10,
}

impl OpCode {
    /// The opcode for the low 4 bits of a frame's first byte, or `None` if
    /// reserved.
    pub const fn from_u8(bits: u8) -> Option<Self> {
        Some(match bits {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            _ => return None,
        })
    }

    /// Whether this is a control opcode (`Close`, `Ping`, `Pong`).
    pub const fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// Which end of the connection this side is. It decides the masking rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Peer (client) frames must be masked; we send unmasked frames.
    Server,
    /// Peer (server) frames must not be masked; we send masked frames.
    Client,
}

/// Size limits enforced by the [`Decoder`] before anything is buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsLimits {
    /// Largest payload of one data frame. Control frames are bounded by the
    /// protocol (125 bytes) instead.
    pub max_frame_size: usize,
    /// Largest message: one frame's payload, or all fragments' together.
    pub max_message_size: usize,
}

impl Default for WsLimits {
    /// 1 MiB frames and 1 MiB messages.
    fn default() -> Self {
        Self {
            max_frame_size: 1 << 20,
            max_message_size: 1 << 20,
        }
    }
}

/// One thing the peer sent, as yielded by [`Decoder::poll`].
///
/// Payloads borrow the decoder and are valid until its next call.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message; the bytes are validated UTF-8.
    Text(&'a [u8]),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer's close frame: its code (`None` for an empty payload) and
    /// reason. Echo the code back and close the connection.
    Close {
        /// The close code, already checked with [`close_code::is_valid_on_wire`].
        code: Option<u16>,
        /// The close reason (possibly empty).
        reason: &'a str,
    },
}

/// A protocol violation by the peer: the close code to send and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsError {
    /// Close code for the close frame we send in answer (1002, 1007 or 1009).
    pub close_code: u16,
    /// Short human-readable cause, e.g. `"unmasked client frame"`; fits in a
    /// close reason.
    pub reason: &'static str,
}

impl WsError {
    pub(crate) const fn protocol(reason: &'static str) -> Self {
        Self {
            close_code: close_code::PROTOCOL_ERROR,
            reason,
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close code {})", self.reason, self.close_code)
    }
}

impl std::error::Error for WsError {}

/// Close codes (RFC 6455 section 7.4 and the IANA registry).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer sent a data type this endpoint does not accept.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// No code was present. Reported locally, never sent.
    pub const NO_STATUS: u16 = 1005;
    /// The connection dropped without a close frame. Reported locally, never sent.
    pub const ABNORMAL: u16 = 1006;
    /// A message's data was inconsistent with its type (invalid UTF-8 text).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The peer broke this endpoint's policy.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame or message exceeded the size limits.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The client needs an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: u16 = 1010;
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is restarting; reconnect later.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The server is overloaded; reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;

    /// Whether `code` may appear in a close frame on the wire: 1000-1003,
    /// 1007-1014 (1012-1014 registered with IANA) and 3000-4999 (registered
    /// and private use). 1004-1006 and 1015 are reserved and only ever
    /// reported locally.
    pub const fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_round_trips_through_its_bits() {
        for bits in 0..16u8 {
            match OpCode::from_u8(bits) {
                Some(op) => assert_eq!(op as u8, bits),
                None => assert!(matches!(bits, 3..=7 | 11..=15), "{bits} rejected"),
            }
        }
    }

    #[test]
    fn only_close_ping_pong_are_control() {
        let control: Vec<_> = [0, 1, 2, 8, 9, 10]
            .into_iter()
            .filter_map(OpCode::from_u8)
            .filter(|op| op.is_control())
            .collect();
        assert_eq!(control, [OpCode::Close, OpCode::Ping, OpCode::Pong]);
    }

    #[test]
    fn close_codes_valid_on_wire_match_the_registry() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ];
        for code in valid.into_iter().chain([3000, 3999, 4000, 4999]) {
            assert!(close_code::is_valid_on_wire(code), "{code}");
        }
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2000,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!close_code::is_valid_on_wire(code), "{code}");
        }
    }

    #[test]
    fn error_display_names_reason_and_code() {
        let err = WsError::protocol("unmasked client frame");
        assert_eq!(err.to_string(), "unmasked client frame (close code 1002)");
    }

    #[test]
    fn default_limits_are_one_mebibyte() {
        let l = WsLimits::default();
        assert_eq!((l.max_frame_size, l.max_message_size), (1 << 20, 1 << 20));
    }
}
