//! zstd for frame bodies, with an optional trained dictionary and a hard cap
//! on decompressed size.
//!
//! A body flagged [`crate::frame::flags::COMPRESSED`] is one zstd frame (or
//! several back to back); [`crate::frame::flags::DICT`] says it was
//! compressed with the dictionary the node ships, which chat traffic (short,
//! repetitive JSON) needs to compress well at all. [`train_dictionary`] builds
//! such a dictionary from sample bodies.
//!
//! # Bounded decompression
//!
//! Compressed input is attacker-controlled, so [`Decompressor`] never trusts it
//! to size anything beyond its `max_output` limit:
//!
//! * A frame whose header declares more than `max_output` bytes is refused
//!   with [`CompressError::TooLarge`] before any work or allocation.
//! * A lone frame that declares its size is decoded in one pass into a buffer
//!   of exactly that size. zstd checks the content against the declaration, so
//!   a header that lies either way is [`CompressError::Corrupt`].
//! * Anything else (no declared size, several frames) is decoded into a buffer
//!   of `max_output` bytes, shrunk afterwards; output that would not fit is
//!   [`CompressError::TooLarge`], found after decoding at most `max_output`
//!   bytes. A decompression bomb therefore costs one bounded buffer and a
//!   bounded amount of work.
//!
//! Decoding is one-shot into the output buffer, so zstd allocates no window of
//! its own, whatever window size the frame asks for. Contexts are reused across
//! calls; a dictionary is digested once, when the context is created.
//!
//! # Example
//!
//! ```
//! use bluewren_engine::compress::{CompressError, Compressor, Decompressor};
//!
//! let body = b"hello hello hello hello hello";
//! let packed = Compressor::new(3, None)?.compress(body)?;
//! assert_eq!(Decompressor::new(None, 1 << 20)?.decompress(&packed)?, body);
//! // One byte under the body's size is over the limit.
//! let mut strict = Decompressor::new(None, body.len() - 1)?;
//! assert_eq!(strict.decompress(&packed), Err(CompressError::TooLarge { limit: body.len() - 1 }));
//! # Ok::<(), CompressError>(())
//! ```

use std::fmt;
use std::io::Cursor;

use zstd::zstd_safe::{self, zstd_sys::ZSTD_ErrorCode, CCtx, CParameter, DCtx};

/// Why a body could not be compressed or decompressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompressError {
    /// The decompressed body would exceed `limit` bytes.
    TooLarge {
        /// The decompressor's `max_output`.
        limit: usize,
    },
    /// The input is not valid zstd data (or, never expected, zstd failed
    /// while compressing); the message is zstd's diagnosis.
    Corrupt(String),
    /// The dictionary is unusable, does not match the data, or could not be
    /// trained.
    Dictionary(String),
}

impl fmt::Display for CompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { limit } => write!(
                f,
                "zstd body decompresses past the {limit}-byte limit: \
                 send a smaller body or raise the decompression limit"
            ),
            Self::Corrupt(why) => write!(f, "corrupt zstd body: {why}"),
            Self::Dictionary(why) => write!(f, "zstd dictionary error: {why}"),
        }
    }
}

impl std::error::Error for CompressError {}

/// zstd error codes are negated `ZSTD_ErrorCode` values (stable since zstd 1.3.1).
const fn zstd_code(e: ZSTD_ErrorCode) -> usize {
    (e as usize).wrapping_neg()
}

const DST_TOO_SMALL: usize = zstd_code(ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall);
const DICT_WRONG: usize = zstd_code(ZSTD_ErrorCode::ZSTD_error_dictionary_wrong);
const DICT_CORRUPTED: usize = zstd_code(ZSTD_ErrorCode::ZSTD_error_dictionary_corrupted);

fn zstd_error(code: usize) -> CompressError {
    let name = zstd_safe::get_error_name(code);
    match code {
        DICT_WRONG => CompressError::Dictionary(format!(
            "{name}: the body was compressed with another dictionary, or none"
        )),
        DICT_CORRUPTED => bad_dictionary(code),
        _ => CompressError::Corrupt(name.to_owned()),
    }
}

/// zstd reports a dictionary it cannot digest variously (even as an
/// allocation failure), so every error while loading one lands here.
fn bad_dictionary(code: usize) -> CompressError {
    CompressError::Dictionary(format!(
        "zstd cannot load the dictionary ({}): pass it exactly as trained",
        zstd_safe::get_error_name(code)
    ))
}

/// Reusable zstd compressor for bodies, optionally with a dictionary.
///
/// Every output is a single zstd frame that declares its content size, which
/// lets [`Decompressor`] size its buffer exactly. The context keeps the
/// workspace its largest input needed (about 26 KiB for chat-sized bodies,
/// 1.3 MiB after a 1 MiB body at level 3): keep one per thread, not one per
/// connection.
pub struct Compressor {
    cctx: CCtx<'static>,
}

impl Compressor {
    /// A compressor at zstd `level` (1 fast .. 19 small, negative for faster
    /// still, 0 for zstd's default of 3; out-of-range levels are clamped),
    /// with `dict` (copied) if given.
    pub fn new(level: i32, dict: Option<&[u8]>) -> Result<Self, CompressError> {
        let mut cctx = CCtx::create();
        cctx.set_parameter(CParameter::CompressionLevel(level))
            .map_err(zstd_error)?;
        if let Some(dict) = dict {
            cctx.load_dictionary(dict).map_err(bad_dictionary)?;
            // zstd digests a dictionary lazily; compress nothing once so that
            // a bad one fails here rather than on the first real body.
            let mut probe = [0; 64];
            cctx.compress2(&mut probe[..], &[])
                .map_err(bad_dictionary)?;
        }
        Ok(Self { cctx })
    }

    /// Compresses `src` into a new buffer.
    pub fn compress(&mut self, src: &[u8]) -> Result<Vec<u8>, CompressError> {
        let mut out = Vec::new();
        self.compress_into(src, &mut out)?;
        Ok(out)
    }

    /// Appends the compressed form of `src` to `out` and returns its length.
    ///
    /// Reserves zstd's worst-case bound up front; on error `out` is unchanged.
    pub fn compress_into(&mut self, src: &[u8], out: &mut Vec<u8>) -> Result<usize, CompressError> {
        let start = out.len();
        out.reserve(zstd_safe::compress_bound(src.len()));
        let mut dst = Cursor::new(out);
        dst.set_position(start as u64);
        self.cctx.compress2(&mut dst, src).map_err(zstd_error)
    }
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

/// Reusable zstd decompressor that never produces more than `max_output` bytes.
///
/// Holds one zstd context (about 94 KiB) and nothing else between calls;
/// keep one per thread rather than one per connection.
pub struct Decompressor {
    dctx: DCtx<'static>,
    max_output: usize,
}

impl Decompressor {
    /// A decompressor with `dict` (copied) if given, refusing any body that
    /// decompresses to more than `max_output` bytes.
    ///
    /// A body that does not declare its size is decoded into a `max_output`
    /// buffer (only the pages written are touched), so set the limit to what
    /// one body may really need.
    pub fn new(dict: Option<&[u8]>, max_output: usize) -> Result<Self, CompressError> {
        let mut dctx = DCtx::create();
        if let Some(dict) = dict {
            dctx.load_dictionary(dict).map_err(bad_dictionary)?;
        }
        Ok(Self { dctx, max_output })
    }

    /// Decompresses `src`, one or more zstd frames.
    ///
    /// Never allocates or produces more than [`max_output`](Self::max_output)
    /// bytes, whatever the frame header claims: larger output is
    /// [`CompressError::TooLarge`], invalid input [`CompressError::Corrupt`]
    /// (including a header that misstates the content size), a dictionary
    /// mismatch [`CompressError::Dictionary`]. Never panics.
    pub fn decompress(&mut self, src: &[u8]) -> Result<Vec<u8>, CompressError> {
        let limit = self.max_output;
        let too_large = || CompressError::TooLarge { limit };
        // The declared size may only shrink the buffer below the limit, never
        // grow it: zstd verifies the content against the declaration.
        let (capacity, declared) = match zstd_safe::get_frame_content_size(src) {
            Err(_) => {
                return Err(CompressError::Corrupt(
                    "not a zstd frame: unknown magic number or truncated frame header".into(),
                ))
            }
            Ok(Some(n)) if n > limit as u64 => return Err(too_large()),
            Ok(Some(n)) if zstd_safe::find_frame_compressed_size(src) == Ok(src.len()) => {
                (n as usize, true)
            }
            Ok(_) => (limit, false),
        };
        let mut out = Vec::new();
        out.try_reserve_exact(capacity).map_err(|_| too_large())?;
        match self.dctx.decompress(&mut out, src) {
            Ok(_) => {
                if !declared {
                    out.shrink_to_fit();
                }
                Ok(out)
            }
            Err(DST_TOO_SMALL) if declared => Err(CompressError::Corrupt(
                "the frame holds more data than its header declares".into(),
            )),
            Err(DST_TOO_SMALL) => Err(self.overflow_or_corrupt(src)),
            Err(code) => Err(zstd_error(code)),
        }
    }

    /// zstd answers "destination too small" both for a body that really
    /// decompresses past the limit and for some corrupt ones (a frame that
    /// overruns its own declared size), and which one it says can depend on
    /// the buffer size and the context's history. Decode again as a stream,
    /// counting the output in a small scratch buffer, to tell them apart: the
    /// answer is then a property of the body and the limit alone.
    fn overflow_or_corrupt(&mut self, src: &[u8]) -> CompressError {
        let limit = self.max_output;
        // A session reset keeps the loaded dictionary.
        if let Err(code) = self.dctx.reset(zstd_safe::ResetDirective::SessionOnly) {
            return zstd_error(code);
        }
        let mut scratch = [0u8; 4096];
        let mut input = zstd_safe::InBuffer::around(src);
        let mut produced = 0usize;
        loop {
            let before = input.pos();
            let mut output = zstd_safe::OutBuffer::around(&mut scratch[..]);
            match self.dctx.decompress_stream(&mut output, &mut input) {
                Ok(_) => {}
                Err(DST_TOO_SMALL) => break,
                Err(code) => return zstd_error(code),
            }
            let wrote = output.pos();
            produced += wrote;
            if produced > limit {
                return CompressError::TooLarge { limit };
            }
            if wrote == 0 && input.pos() == before {
                break;
            }
        }
        // The body ended, stalled or overran a frame within the limit: the
        // failure was the body's fault, not the limit's.
        CompressError::Corrupt("the body is malformed: a frame overruns its declared size".into())
    }

    /// The most bytes [`decompress`](Self::decompress) will produce.
    pub fn max_output(&self) -> usize {
        self.max_output
    }
}

impl fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decompressor")
            .field("max_output", &self.max_output)
            .finish_non_exhaustive()
    }
}

/// Trains a zstd dictionary of at most `max_size` bytes from sample bodies.
///
/// Wants many samples (hundreds or more) that resemble real traffic, and
/// `max_size` of a few KiB upwards; too few or too uniform samples fail with
/// [`CompressError::Dictionary`].
pub fn train_dictionary(samples: &[&[u8]], max_size: usize) -> Result<Vec<u8>, CompressError> {
    zstd::dict::from_samples(samples, max_size).map_err(|e| {
        CompressError::Dictionary(format!(
            "training failed ({e}): give more, more varied samples or a larger max_size"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 4096;

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"the quick brown fox "[i % 20]).collect()
    }

    fn compress(src: &[u8]) -> Vec<u8> {
        Compressor::new(3, None).unwrap().compress(src).unwrap()
    }

    fn decompressor() -> Decompressor {
        Decompressor::new(None, LIMIT).unwrap()
    }

    /// `frame` (single segment, no dictionary id) with its content size field
    /// rewritten to `size`, which must fit the field's width.
    fn with_declared_size(frame: &[u8], size: u64) -> Vec<u8> {
        let descriptor = frame[4];
        assert_eq!(
            descriptor & 0x23,
            0x20,
            "expects single segment, no dict id"
        );
        let mut out = frame.to_vec();
        match descriptor >> 6 {
            0 => out[5] = u8::try_from(size).unwrap(),
            1 => out[5..7].copy_from_slice(&u16::try_from(size - 256).unwrap().to_le_bytes()),
            2 => out[5..9].copy_from_slice(&u32::try_from(size).unwrap().to_le_bytes()),
            _ => out[5..13].copy_from_slice(&size.to_le_bytes()),
        }
        out
    }

    #[test]
    fn lying_header_followed_by_another_frame_is_corrupt_not_too_large() {
        let mut packed = with_declared_size(&compress(&text(3000)), 1000);
        packed.extend(compress(b""));
        for limit in [4096, 10_000, 1 << 20] {
            let err = Decompressor::new(None, limit)
                .unwrap()
                .decompress(&packed)
                .unwrap_err();
            assert!(
                matches!(err, CompressError::Corrupt(_)),
                "limit {limit}: {err:?}"
            );
        }
    }

    #[test]
    fn a_reused_context_answers_a_corrupt_body_the_same_way() {
        const RAW: &[u8] = br#"{"type":"message","conv":1,"from":"user-1","text":"hello","ts":1700000000}{"type":"typing","conv":2,"from":"user-2"}{"type":"receipt","conv":3,"seq":42}"#;
        let body: Vec<u8> = (0..54)
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(
                    &"28b52ffd64ff008c00006400000028b52ffd020000640000009bfe"[i..i + 2],
                    16,
                )
                .unwrap()
            })
            .collect();
        let mut d = Decompressor::new(Some(RAW), 1 << 20).unwrap();
        for call in 0..3 {
            let got = d.decompress(&body);
            assert!(
                matches!(got, Err(CompressError::Corrupt(_))),
                "call {call}: {got:?}"
            );
        }
    }

    /// `data` as one frame that does not declare its size.
    fn without_declared_size(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.write_all(data).unwrap();
        let frame = enc.finish().unwrap();
        assert!(matches!(
            zstd_safe::get_frame_content_size(&frame),
            Ok(None)
        ));
        frame
    }

    fn samples() -> Vec<Vec<u8>> {
        (0..500u32)
            .map(|i| {
                format!(
                    r#"{{"type":"message","conv":{},"from":"user-{}","text":"hello number {}","ts":{}}}"#,
                    i % 17,
                    i % 31,
                    i * 7,
                    1_700_000_000 + i * 13
                )
                .into_bytes()
            })
            .collect()
    }

    fn dictionary() -> Vec<u8> {
        let samples = samples();
        let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
        train_dictionary(&refs, 4096).unwrap()
    }

    #[test]
    fn round_trip_without_dictionary() {
        let data = text(3000);
        let packed = compress(&data);
        assert!(packed.len() < data.len() / 10);
        assert_eq!(decompressor().decompress(&packed).unwrap(), data);
    }

    #[test]
    fn round_trip_of_empty_body() {
        assert_eq!(decompressor().decompress(&compress(b"")).unwrap(), b"");
    }

    #[test]
    fn round_trip_with_dictionary_beats_plain_compression() {
        let dict = dictionary();
        let body = br#"{"type":"message","conv":3,"from":"user-9","text":"hello number 12345","ts":1700001234}"#;
        let mut c = Compressor::new(3, Some(&dict)).unwrap();
        let packed = c.compress(body).unwrap();
        assert!(
            packed.len() < compress(body).len(),
            "dictionary did not help"
        );
        let mut d = Decompressor::new(Some(&dict), LIMIT).unwrap();
        assert_eq!(d.decompress(&packed).unwrap(), body);
    }

    #[test]
    fn dictionary_body_without_the_dictionary_is_a_dictionary_error() {
        let dict = dictionary();
        let packed = Compressor::new(3, Some(&dict))
            .unwrap()
            .compress(&samples()[0])
            .unwrap();
        let err = decompressor().decompress(&packed).unwrap_err();
        assert!(matches!(err, CompressError::Dictionary(_)), "{err:?}");
    }

    #[test]
    fn corrupt_trained_dictionary_is_refused_at_construction() {
        let mut dict = dictionary();
        // Keep the magic number and id, wreck the entropy tables behind them.
        dict[8..64].fill(0xFF);
        assert!(matches!(
            Compressor::new(3, Some(&dict)),
            Err(CompressError::Dictionary(_))
        ));
        assert!(matches!(
            Decompressor::new(Some(&dict), LIMIT),
            Err(CompressError::Dictionary(_))
        ));
    }

    #[test]
    fn training_on_too_few_samples_is_a_dictionary_error() {
        let err = train_dictionary(&[b"one", b"two"], 4096).unwrap_err();
        assert!(matches!(err, CompressError::Dictionary(_)));
    }

    #[test]
    fn compress_into_appends_and_returns_the_length() {
        let data = text(500);
        let mut c = Compressor::new(3, None).unwrap();
        let mut out = b"head".to_vec();
        let n = c.compress_into(&data, &mut out).unwrap();
        assert_eq!(&out[..4], b"head");
        assert_eq!(out.len(), 4 + n);
        assert_eq!(out[4..], c.compress(&data).unwrap());
    }

    #[test]
    fn output_of_exactly_max_output_is_accepted() {
        let data = text(LIMIT);
        assert_eq!(decompressor().decompress(&compress(&data)).unwrap(), data);
        let undeclared = without_declared_size(&data);
        assert_eq!(decompressor().decompress(&undeclared).unwrap(), data);
    }

    #[test]
    fn output_one_byte_over_max_output_is_too_large() {
        let data = text(LIMIT + 1);
        let err = CompressError::TooLarge { limit: LIMIT };
        assert_eq!(
            decompressor().decompress(&compress(&data)),
            Err(err.clone())
        );
        assert_eq!(
            decompressor().decompress(&without_declared_size(&data)),
            Err(err)
        );
    }

    #[test]
    fn header_declaring_less_than_the_content_is_corrupt() {
        let frame = compress(&text(1000));
        let lying = with_declared_size(&frame, 999);
        assert!(matches!(
            decompressor().decompress(&lying),
            Err(CompressError::Corrupt(_))
        ));
    }

    #[test]
    fn header_declaring_more_than_the_content_is_corrupt() {
        let frame = compress(&text(1000));
        let lying = with_declared_size(&frame, 2000);
        assert!(matches!(
            decompressor().decompress(&lying),
            Err(CompressError::Corrupt(_))
        ));
    }

    #[test]
    fn header_declaring_more_than_the_limit_is_too_large_without_decoding() {
        let frame = compress(&text(1000));
        let mut lying = with_declared_size(&frame, 60_000);
        // Wreck the blocks: the refusal must come from the header alone.
        let end = lying.len();
        lying[7..end].fill(0);
        let err = decompressor().decompress(&lying).unwrap_err();
        assert_eq!(err, CompressError::TooLarge { limit: LIMIT });
    }

    #[test]
    fn bomb_without_declared_size_stops_at_the_limit() {
        let bomb = without_declared_size(&vec![0; 10 << 20]);
        assert!(bomb.len() < 2048);
        let err = decompressor().decompress(&bomb).unwrap_err();
        assert_eq!(err, CompressError::TooLarge { limit: LIMIT });
    }

    #[test]
    fn concatenated_frames_decode_as_one_body() {
        let mut two = compress(b"hello, ");
        two.extend(compress(b"world"));
        assert_eq!(decompressor().decompress(&two).unwrap(), b"hello, world");
    }

    #[test]
    fn concatenated_frames_past_the_limit_are_too_large() {
        let half = compress(&text(LIMIT / 2 + 1));
        let two = [half.clone(), half].concat();
        assert_eq!(
            decompressor().decompress(&two),
            Err(CompressError::TooLarge { limit: LIMIT })
        );
    }

    #[test]
    fn garbage_and_empty_input_are_corrupt() {
        for bad in [&b""[..], b"\x28\xb5\x2f", b"not zstd at all", &[0xFF; 100]] {
            let err = decompressor().decompress(bad).unwrap_err();
            assert!(matches!(err, CompressError::Corrupt(_)), "{bad:?}: {err:?}");
        }
    }

    #[test]
    fn truncated_frame_is_corrupt() {
        let frame = compress(&text(2000));
        for cut in [frame.len() - 1, frame.len() / 2, 7] {
            let err = decompressor().decompress(&frame[..cut]).unwrap_err();
            assert!(
                matches!(err, CompressError::Corrupt(_)),
                "cut {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn trailing_garbage_after_a_frame_is_corrupt() {
        let mut frame = compress(b"body");
        frame.extend_from_slice(b"junk");
        assert!(matches!(
            decompressor().decompress(&frame),
            Err(CompressError::Corrupt(_))
        ));
    }

    #[test]
    fn context_is_reusable_after_an_error() {
        let mut d = decompressor();
        let good = compress(b"fine");
        let mut bad = good.clone();
        bad.truncate(bad.len() - 2);
        assert!(d.decompress(&bad).is_err());
        assert!(d.decompress(&compress(&text(LIMIT + 1))).is_err());
        assert_eq!(d.decompress(&good).unwrap(), b"fine");
    }

    #[test]
    fn undeclared_output_buffer_is_shrunk_to_fit() {
        let out = decompressor()
            .decompress(&without_declared_size(b"tiny"))
            .unwrap();
        assert_eq!(out, b"tiny");
        assert!(out.capacity() < LIMIT);
    }

    #[test]
    fn zero_limit_accepts_only_empty_bodies() {
        let mut d = Decompressor::new(None, 0).unwrap();
        assert_eq!(d.decompress(&compress(b"")).unwrap(), b"");
        assert_eq!(d.decompress(&without_declared_size(b"")).unwrap(), b"");
        assert_eq!(
            d.decompress(&compress(b"x")),
            Err(CompressError::TooLarge { limit: 0 })
        );
        assert_eq!(d.max_output(), 0);
    }

    #[test]
    fn error_messages_say_what_to_change() {
        let msg = CompressError::TooLarge { limit: 10 }.to_string();
        assert!(
            msg.contains("10-byte limit") && msg.contains("raise"),
            "{msg}"
        );
        assert!(CompressError::Corrupt("x".into())
            .to_string()
            .contains("corrupt"));
    }
}
