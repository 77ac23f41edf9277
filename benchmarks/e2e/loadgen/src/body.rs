//! Message bodies: the stamp every body starts with, and the DELIVER envelope
//! around it.
//!
//! ```text
//! body:     u64 LE send time (ns since the loadgen's start) | u32 LE sender index
//!           | u32 LE per-sender sequence | padding up to message_bytes
//! envelope: u16 BE sender len | sender | u16 BE device len | device | body
//! ```

/// Bytes of the stamp at the start of every body.
pub const STAMP_LEN: usize = 16;

/// What a body's stamp says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, ns since the loadgen started (monotonic).
    pub sent_ns: u64,
    /// Index of the sender among the plan's sending connections.
    pub sender: u32,
    /// The sender's sequence number for this message.
    pub seq: u32,
}

/// Writes the stamp over the first [`STAMP_LEN`] bytes of `body`.
///
/// # Panics
/// If `body` is shorter than the stamp (the plan forbids that).
#[inline]
pub fn stamp(body: &mut [u8], s: Stamp) {
    body[..8].copy_from_slice(&s.sent_ns.to_le_bytes());
    body[8..12].copy_from_slice(&s.sender.to_le_bytes());
    body[12..16].copy_from_slice(&s.seq.to_le_bytes());
}

/// Reads the stamp at the start of `body`, or `None` if it is too short.
#[inline]
pub fn read_stamp(body: &[u8]) -> Option<Stamp> {
    let b: &[u8; STAMP_LEN] = body.get(..STAMP_LEN)?.try_into().ok()?;
    let [t0, t1, t2, t3, t4, t5, t6, t7, s0, s1, s2, s3, q0, q1, q2, q3] = *b;
    Some(Stamp {
        sent_ns: u64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        sender: u32::from_le_bytes([s0, s1, s2, s3]),
        seq: u32::from_le_bytes([q0, q1, q2, q3]),
    })
}

/// The message body inside a DELIVER envelope, or `None` if the envelope is
/// malformed.
#[inline]
pub fn envelope_body(envelope: &[u8]) -> Option<&[u8]> {
    let (&[a, b], rest) = envelope.split_first_chunk::<2>()?;
    let rest = rest.get(usize::from(u16::from_be_bytes([a, b]))..)?;
    let (&[c, d], rest) = rest.split_first_chunk::<2>()?;
    rest.get(usize::from(u16::from_be_bytes([c, d]))..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_leaves_padding_alone() {
        let mut body = [0xAB; 40];
        let s = Stamp {
            sent_ns: 0x0102_0304_0506_0708,
            sender: 77,
            seq: u32::MAX - 1,
        };
        stamp(&mut body, s);
        assert_eq!(read_stamp(&body), Some(s));
        assert_eq!(&body[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&body[8..12], &77u32.to_le_bytes());
        assert!(body[STAMP_LEN..].iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn short_body_has_no_stamp() {
        assert_eq!(read_stamp(&[0; STAMP_LEN - 1]), None);
        assert!(read_stamp(&[0; STAMP_LEN]).is_some());
    }

    #[test]
    fn envelope_yields_the_body() {
        let mut env = b"\x00\x05owner\x00\x04send".to_vec();
        env.extend_from_slice(b"payload");
        assert_eq!(envelope_body(&env), Some(&b"payload"[..]));
        assert_eq!(envelope_body(b"\x00\x00\x00\x00"), Some(&b""[..]));
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x05own",
            b"\x00\x05owner",
            b"\x00\x05owner\x00",
            b"\x00\x05owner\x00\x04se",
        ] {
            assert_eq!(envelope_body(bad), None, "{bad:?}");
        }
    }
}
