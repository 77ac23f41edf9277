//! `ws_decoder`: the RFC 6455 frame decoder ([`Decoder`]), both roles.
//!
//! Input: `[frame_limit, message_limit, split_lo, split_hi, read_min, bytes..]`.
//! `max_frame_size` is `2 * frame_limit` and `max_message_size` is
//! `8 * message_limit`, so limits of 0..=510 and 0..=2040 bytes are hit often.
//! For each [`Role`] the bytes are decoded twice: in one feed, and in two
//! feeds cut at `split % (len + 1)`, the second written through
//! [`Decoder::read_buf`] (asking for at least `read_min` bytes) and
//! [`Decoder::commit`]. After every feed `poll` is drained.
//!
//! Invariants:
//! - how the bytes are split changes nothing: both runs yield the same
//!   messages and end the same way (same error, or closed, or waiting);
//! - text is valid UTF-8; data messages are at most `max_message_size`
//!   bytes, pings and pongs at most 125, close reasons at most 123, and a
//!   close code is one allowed on the wire;
//! - after an `Err` the same `Err` repeats, also after more bytes arrive,
//!   and its close code is 1002, 1007 or 1009; after a close every poll is
//!   `Ok(None)` and later bytes are dropped;
//! - every message decoded so far, re-encoded as single frames with the
//!   engine's encoder, decodes to the same messages.

use bluewren_engine::ws::{
    close_code, encode_close, encode_frame, Decoder, Event, OpCode, Role, WsError, WsLimits,
    MAX_CLOSE_REASON, MAX_CONTROL_PAYLOAD,
};

use crate::input::Input;

/// The masking key of re-encoded client frames.
const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// A valid frame fed after the end, to check that nothing is read past it.
const LATE: &[u8] = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";

/// A decoded event, owned so that runs can be compared.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Message {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// Everything a decoder made of its input.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<WsError>,
    closed: bool,
}

/// Runs every invariant of this target on one fuzz input; panics on a breach.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let limits = WsLimits {
        max_frame_size: usize::from(input.byte()) * 2,
        max_message_size: usize::from(input.byte()) * 8,
    };
    let split = usize::from(input.u16());
    let read_min = usize::from(input.byte());
    let bytes = input.rest();
    let (head, tail) = bytes.split_at(split % (bytes.len() + 1));

    for role in [Role::Server, Role::Client] {
        let whole = run(role, limits, &[bytes], read_min);
        let split = run(role, limits, &[head, tail], read_min);
        assert_eq!(
            whole,
            split,
            "{role:?}: splitting the input after {} bytes changed the outcome",
            head.len()
        );
        round_trip(role, limits, &whole.messages);
    }
}

/// Decodes `parts` fed one after the other, draining `poll` after each.
fn run(role: Role, limits: WsLimits, parts: &[&[u8]], read_min: usize) -> Outcome {
    let mut dec = Decoder::new(role, limits);
    let mut outcome = Outcome::default();
    for (i, part) in parts.iter().enumerate() {
        if outcome.error.is_some() || outcome.closed {
            break;
        }
        if i == 0 {
            dec.feed(part);
        } else {
            let want = part.len().max(read_min);
            let spare = dec.read_buf(want);
            assert!(spare.len() >= want, "read_buf({want}) gave {}", spare.len());
            spare[..part.len()].copy_from_slice(part);
            dec.commit(part.len());
        }
        drain(&mut dec, limits, &mut outcome);
    }
    if let Some(err) = outcome.error {
        assert!(
            matches!(
                err.close_code,
                close_code::PROTOCOL_ERROR
                    | close_code::INVALID_PAYLOAD
                    | close_code::MESSAGE_TOO_BIG
            ),
            "unexpected close code in {err:?}"
        );
        assert_eq!(dec.poll(), Err(err), "error is not sticky");
        dec.feed(LATE);
        assert_eq!(dec.poll(), Err(err), "error is not sticky after more bytes");
    } else if outcome.closed {
        let before = dec.buffered();
        dec.feed(LATE);
        assert_eq!(dec.buffered(), before, "bytes after a close were buffered");
        assert_eq!(dec.poll(), Ok(None), "an event after a close");
    }
    outcome
}

/// Polls until the decoder wants more bytes, fails or closes.
fn drain(dec: &mut Decoder, limits: WsLimits, outcome: &mut Outcome) {
    // Every event consumes at least one 2-byte frame header.
    let budget = dec.buffered() / 2 + 1;
    for _ in 0..=budget {
        let message = match dec.poll() {
            Ok(None) => return,
            Err(err) => {
                outcome.error = Some(err);
                return;
            }
            Ok(Some(event)) => owned(event, limits),
        };
        let closed = matches!(message, Message::Close(..));
        outcome.messages.push(message);
        if closed {
            outcome.closed = true;
            return;
        }
    }
    panic!("poll yielded more events than the buffered bytes can hold");
}

/// Copies an event out of the decoder, checking its size and content rules.
fn owned(event: Event<'_>, limits: WsLimits) -> Message {
    match event {
        Event::Text(p) => {
            assert!(p.len() <= limits.max_message_size, "text of {}", p.len());
            assert!(std::str::from_utf8(p).is_ok(), "text is not UTF-8");
            Message::Text(p.to_vec())
        }
        Event::Binary(p) => {
            assert!(p.len() <= limits.max_message_size, "binary of {}", p.len());
            Message::Binary(p.to_vec())
        }
        Event::Ping(p) => {
            assert!(p.len() <= MAX_CONTROL_PAYLOAD, "ping of {}", p.len());
            Message::Ping(p.to_vec())
        }
        Event::Pong(p) => {
            assert!(p.len() <= MAX_CONTROL_PAYLOAD, "pong of {}", p.len());
            Message::Pong(p.to_vec())
        }
        Event::Close { code, reason } => {
            assert!(
                reason.len() <= MAX_CLOSE_REASON,
                "reason of {}",
                reason.len()
            );
            match code {
                Some(code) => assert!(close_code::is_valid_on_wire(code), "close code {code}"),
                None => assert!(reason.is_empty(), "a reason without a code"),
            }
            Message::Close(code, reason.to_owned())
        }
    }
}

/// Re-encodes `messages` one frame each and checks they decode unchanged.
fn round_trip(role: Role, limits: WsLimits, messages: &[Message]) {
    let mask = match role {
        Role::Server => Some(KEY),
        Role::Client => None,
    };
    let mut wire = Vec::new();
    for message in messages {
        match message {
            Message::Text(p) => encode_frame(&mut wire, OpCode::Text, p, true, mask),
            Message::Binary(p) => encode_frame(&mut wire, OpCode::Binary, p, true, mask),
            Message::Ping(p) => encode_frame(&mut wire, OpCode::Ping, p, true, mask),
            Message::Pong(p) => encode_frame(&mut wire, OpCode::Pong, p, true, mask),
            Message::Close(code, reason) => {
                let code = code.unwrap_or(close_code::NO_STATUS);
                encode_close(&mut wire, code, reason, mask);
            }
        }
    }
    // A reassembled message may be larger than one frame was allowed to be.
    let unfragmented = WsLimits {
        max_frame_size: limits.max_message_size,
        ..limits
    };
    let again = run(role, unfragmented, &[&wire], 0);
    assert_eq!(again.error, None, "re-encoded messages fail to decode");
    assert_eq!(
        again.messages, messages,
        "re-encoded messages decode differently"
    );
}
