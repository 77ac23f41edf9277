//! Streaming UTF-8 validation that fails fast.
//!
//! Text arrives in pieces (fragments, partial reads), and a code point may be
//! split between two pieces. Each piece is split into a body that must be
//! complete UTF-8, checked with SIMD by [`simdutf8`], and a tail of at most 3
//! bytes that starts a code point the piece does not finish. The tail is
//! checked with `std`, whose [`Utf8Error::error_len`](std::str::Utf8Error::error_len)
//! tells a valid-but-incomplete prefix (`None`) from bytes that no
//! continuation can repair (`Some`). A valid prefix is carried into the next
//! piece; anything else is reported at once.

/// The received text can no longer be valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InvalidUtf8;

/// Incremental validator; [`Default`] is the start of a message.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Utf8Stream {
    /// The start of a code point the previous piece did not finish.
    carry: [u8; 4],
    carry_len: usize,
}

impl Utf8Stream {
    /// Validates the next piece of text.
    pub(crate) fn push(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            let have = self.carry_len;
            let take = (sequence_len(self.carry[0]) - have).min(data.len());
            let mut seq = self.carry;
            seq[have..have + take].copy_from_slice(&data[..take]);
            self.carry_len = 0;
            self.check_tail(&seq[..have + take])?;
            if self.carry_len > 0 {
                return Ok(()); // `data` ended inside the same code point.
            }
            data = &data[take..];
        }
        // Short messages are mostly ASCII (JSON), and below 64 bytes simdutf8
        // falls back to scalar code: a word-at-a-time ASCII scan wins there.
        // It stops at the first non-ASCII byte, so it costs little otherwise.
        if data.is_ascii() {
            return Ok(());
        }
        let split = incomplete_tail_start(data);
        simdutf8::basic::from_utf8(&data[..split]).map_err(|_| InvalidUtf8)?;
        if split == data.len() {
            return Ok(());
        }
        self.check_tail(&data[split..])
    }

    /// Checks that the text ended on a code point boundary.
    pub(crate) fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.carry_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }

    /// Checks at most 3 bytes that begin a code point, carrying them if they
    /// are a valid prefix of one.
    fn check_tail(&mut self, tail: &[u8]) -> Result<(), InvalidUtf8> {
        match std::str::from_utf8(tail) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                // A valid prefix always starts at a lead byte (valid_up_to == 0).
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len();
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }
}

/// The length of the code point a lead byte announces (1 for anything that
/// cannot lead a multi-byte sequence; `std` rejects those later).
const fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// Where the last code point starts if `data` ends before it does, else
/// `data.len()`. Only the last 3 bytes are looked at.
fn incomplete_tail_start(data: &[u8]) -> usize {
    let len = data.len();
    for back in 1..=len.min(3) {
        let b = data[len - back];
        if b & 0xC0 != 0x80 {
            return if sequence_len(b) > back {
                len - back
            } else {
                len
            };
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_in_pieces(text: &[u8], cuts: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Stream::default();
        let mut at = 0;
        for &cut in cuts.iter().chain([&text.len()]) {
            v.push(&text[at..cut])?;
            at = cut;
        }
        v.finish()
    }

    #[test]
    fn code_point_split_at_every_byte_is_valid() {
        let text = "aé€😀z".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert_eq!(valid_in_pieces(text, &[i, j]), Ok(()), "cuts {i} {j}");
            }
        }
    }

    #[test]
    fn one_byte_pieces_of_a_four_byte_code_point_are_valid() {
        assert_eq!(valid_in_pieces("😀".as_bytes(), &[1, 2, 3]), Ok(()));
    }

    #[test]
    fn truncated_code_point_fails_only_at_finish() {
        let mut v = Utf8Stream::default();
        assert_eq!(v.push(&[b'a', 0xF0, 0x9F]), Ok(()));
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    #[test]
    fn impossible_prefix_fails_before_the_code_point_ends() {
        // E0 80 can never start a valid sequence (overlong), ED A0 is a surrogate.
        for bad in [
            &[0xE0, 0x80][..],
            &[0xED, 0xA0],
            &[0xF4, 0x90],
            &[0xF5],
            &[0xC0],
            &[0xFF],
        ] {
            let mut v = Utf8Stream::default();
            assert_eq!(v.push(bad), Err(InvalidUtf8), "{bad:x?}");
        }
    }

    #[test]
    fn invalid_continuation_after_carry_fails_fast() {
        let mut v = Utf8Stream::default();
        assert_eq!(v.push(&[0xE2]), Ok(()));
        assert_eq!(v.push(&[0x82]), Ok(()));
        assert_eq!(v.push(b"A"), Err(InvalidUtf8));
    }

    #[test]
    fn invalid_byte_in_body_fails() {
        let mut v = Utf8Stream::default();
        assert_eq!(v.push(b"hello \xFF world"), Err(InvalidUtf8));
        let mut v = Utf8Stream::default();
        assert_eq!(v.push(b"lone continuation \x80 here"), Err(InvalidUtf8));
    }

    #[test]
    fn agrees_with_std_on_every_two_piece_split() {
        let samples: [&[u8]; 5] = [
            b"\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5",
            b"\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80edited",
            b"\xF4\x8F\xBF\xBF\xF4\x90\x80\x80",
            b"ab\xF0\x90\x80",
            b"\xC2\xC2\x80",
        ];
        for s in samples {
            let expect = std::str::from_utf8(s).is_ok();
            for i in 0..=s.len() {
                assert_eq!(valid_in_pieces(s, &[i]).is_ok(), expect, "{s:x?} cut {i}");
            }
        }
    }
}
