//! Frame encoding and masking.
//!
//! Every function appends to a caller-owned `Vec<u8>`, reserving the exact
//! frame size once, so a connection reuses one output buffer for all its
//! writes. Masking is done in place on the appended bytes.

use super::{close_code, OpCode};

/// Largest payload of a control frame (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest close reason in bytes: a control payload minus the 2-byte code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Bytes of the frame header for a payload of `payload_len` bytes: 2, plus 2
/// or 8 for an extended length, plus 4 for a masking key.
pub const fn frame_header_len(payload_len: usize, masked: bool) -> usize {
    let ext = match payload_len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// Appends just the header of a frame with a `payload_len`-byte payload.
///
/// For writing a shared, already-encoded payload after it (vectored write).
/// A masked frame's payload must be masked by the caller with the same key.
pub fn write_frame_header(
    out: &mut Vec<u8>,
    opcode: OpCode,
    payload_len: usize,
    fin: bool,
    mask: Option<[u8; 4]>,
) {
    let mut header = [0u8; 14];
    header[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = 2;
    match payload_len {
        0..=125 => header[1] = mask_bit | payload_len as u8,
        126..=0xFFFF => {
            header[1] = mask_bit | 126;
            header[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            n = 4;
        }
        _ => {
            header[1] = mask_bit | 127;
            header[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            n = 10;
        }
    }
    if let Some(key) = mask {
        header[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    out.extend_from_slice(&header[..n]);
}

/// Appends one frame to `out`.
///
/// `mask` is `Some(key)` for client frames (use a fresh random key per frame)
/// and `None` for server frames. Control frames must have `fin` set and at
/// most [`MAX_CONTROL_PAYLOAD`] bytes; that is the caller's contract and is not
/// checked here.
pub fn encode_frame(
    out: &mut Vec<u8>,
    opcode: OpCode,
    payload: &[u8],
    fin: bool,
    mask: Option<[u8; 4]>,
) {
    out.reserve(frame_header_len(payload.len(), mask.is_some()) + payload.len());
    write_frame_header(out, opcode, payload.len(), fin, mask);
    append_payload(out, &[payload], mask);
}

/// Appends a close frame with `code` and `reason`.
///
/// The reason is cut at a character boundary to fit [`MAX_CLOSE_REASON`]
/// bytes. [`close_code::NO_STATUS`] stands for "no code" and yields an empty
/// close payload, which is how to echo a [`Close`](super::Event::Close) event
/// whose code was `None`.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    if code == close_code::NO_STATUS {
        encode_frame(out, OpCode::Close, &[], true, mask);
        return;
    }
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let len = 2 + reason.len();
    out.reserve(frame_header_len(len, mask.is_some()) + len);
    write_frame_header(out, OpCode::Close, len, true, mask);
    append_payload(out, &[&code.to_be_bytes(), reason], mask);
}

fn append_payload(out: &mut Vec<u8>, parts: &[&[u8]], mask: Option<[u8; 4]>) {
    let start = out.len();
    for part in parts {
        out.extend_from_slice(part);
    }
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

/// XORs `buf` with the masking key, in place (masking and unmasking are the
/// same operation).
///
/// `offset` is the position of `buf[0]` within the frame's payload, so a
/// payload can be unmasked in pieces as it arrives. Works 8 bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let key: [u8; 4] = std::array::from_fn(|i| mask[(i + offset) % 4]);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8])) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[(i + offset) % 4];
        }
    }

    #[test]
    fn apply_mask_matches_bytewise_xor_at_every_offset_and_length() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for offset in 0..8 {
            for len in 0..40 {
                let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(31)).collect();
                let (mut fast, mut slow) = (data.clone(), data);
                apply_mask(&mut fast, mask, offset);
                naive_mask(&mut slow, mask, offset);
                assert_eq!(fast, slow, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_at_once() {
        let mask = [1, 2, 3, 4];
        let data: Vec<u8> = (0..100).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        let mut pieces = data;
        let (a, rest) = pieces.split_at_mut(7);
        let (b, c) = rest.split_at_mut(29);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 7);
        apply_mask(c, mask, 36);
        assert_eq!(pieces, whole);
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 section 5.7: a single-frame masked text message "Hello".
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            OpCode::Text,
            b"Hello",
            true,
            Some([0x37, 0xfa, 0x21, 0x3d]),
        );
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn rfc_example_unmasked_fragments() {
        let mut out = Vec::new();
        encode_frame(&mut out, OpCode::Text, b"Hel", false, None);
        encode_frame(&mut out, OpCode::Continuation, b"lo", true, None);
        assert_eq!(out, [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]);
    }

    #[test]
    fn length_uses_the_shortest_encoding() {
        for (len, header) in [
            (125usize, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65535, vec![0x82, 126, 0xff, 0xff]),
            (65536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            encode_frame(&mut out, OpCode::Binary, &vec![0; len], true, None);
            assert_eq!(out[..header.len()], header[..], "len {len}");
            assert_eq!(out.len(), frame_header_len(len, false) + len);
        }
    }

    #[test]
    fn header_len_counts_extension_and_mask() {
        assert_eq!(frame_header_len(0, false), 2);
        assert_eq!(frame_header_len(125, true), 6);
        assert_eq!(frame_header_len(126, false), 4);
        assert_eq!(frame_header_len(65535, true), 8);
        assert_eq!(frame_header_len(65536, false), 10);
        assert_eq!(frame_header_len(usize::MAX, true), 14);
    }

    #[test]
    fn encode_appends_without_touching_existing_bytes() {
        let mut out = b"prefix".to_vec();
        encode_frame(&mut out, OpCode::Ping, b"x", true, None);
        assert_eq!(out, b"prefix\x89\x01x");
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(70); // 140 bytes, 2 per char
        let mut out = Vec::new();
        encode_close(&mut out, 1000, &reason, None);
        assert_eq!(out[1] as usize, 2 + 122);
        assert_eq!(&out[2..4], &1000u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn close_with_no_status_is_empty() {
        let mut out = Vec::new();
        encode_close(&mut out, close_code::NO_STATUS, "ignored", None);
        assert_eq!(out, [0x88, 0x00]);
    }

    #[test]
    fn masked_close_unmasks_to_code_and_reason() {
        let key = [9, 8, 7, 6];
        let mut out = Vec::new();
        encode_close(&mut out, 4000, "bye", Some(key));
        assert_eq!(out[..2], [0x88, 0x80 | 5]);
        assert_eq!(out[2..6], key);
        let mut payload = out[6..].to_vec();
        apply_mask(&mut payload, key, 0);
        assert_eq!(payload, b"\x0f\xa0bye");
    }
}
