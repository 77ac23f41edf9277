//! `decompress`: the bounded zstd [`Decompressor`], with no dictionary, a
//! trained one and a raw-content one.
//!
//! Input: `[limit_lo, limit_hi, dictionary, mode, body..]`. The body is
//! decompressed by two fresh decompressors, one with a small `max_output`
//! (`limit % 4097`, so 0..=4096 bytes) and one with [`BIG_LIMIT`], both using
//! dictionary `dictionary % 3` of [`Dictionaries`], then once more by the
//! small one. When `mode` bit 0 is set the body is also compressed (with the
//! same dictionary) and decompressed by both again.
//!
//! Invariants:
//! - no output is longer than its decompressor's `max_output`, and
//!   `TooLarge` names that limit;
//! - the two limits agree: when the small one succeeds the big one returns
//!   the same bytes; when the big one succeeds the small one returns the same
//!   bytes if they fit and `TooLarge` if not;
//! - a compressed body decompresses to itself, or `TooLarge` past the limit.
//!
//! Known issues, checked only with [`KnownIssues::Check`], all because a
//! corrupt body can be reported `TooLarge`:
//! - when the big limit finds the output too large so does the small one;
//! - a context answers the same body the same way the second time;
//! - `TooLarge` never comes from a body whose frames all declare their sizes
//!   and declare no more than the limit in total.

use bluewren_engine::compress::{train_dictionary, CompressError, Compressor, Decompressor};
use zstd::zstd_safe;

use crate::input::Input;
use crate::known_issues::KnownIssues;

/// `max_output` of the long-lived decompressors.
pub const BIG_LIMIT: usize = 1 << 16;

/// Largest small `max_output`.
const SMALL_LIMIT: usize = 4096;

/// The dictionaries a body can be decompressed with, selected by index:
/// none, one trained from [`samples`], and [`RAW_DICTIONARY`] as raw content.
pub struct Dictionaries([Option<Vec<u8>>; 3]);

impl Dictionaries {
    /// Trains the dictionary; the same samples always give the same one.
    pub fn new() -> Self {
        let samples = samples();
        let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
        let trained = train_dictionary(&refs, 4096).expect("fixed samples train a dictionary");
        Self([None, Some(trained), Some(RAW_DICTIONARY.to_vec())])
    }

    /// Dictionary `index % 3`, `None` meaning no dictionary.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.0[index % 3].as_deref()
    }
}

impl Default for Dictionaries {
    fn default() -> Self {
        Self::new()
    }
}

/// A dictionary that is not in zstd's dictionary format, which zstd takes as
/// raw content to match against.
pub const RAW_DICTIONARY: &[u8] = br#"{"type":"message","conv":1,"from":"user-1","text":"hello","ts":1700000000}{"type":"typing","conv":2,"from":"user-2"}{"type":"receipt","conv":3,"seq":42}"#;

/// Chat-like JSON bodies, the kind of traffic the shipped dictionary is for.
pub fn samples() -> Vec<Vec<u8>> {
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

/// What every input shares: the dictionaries and one compressor per
/// dictionary. Decompressors are made afresh for every input, so that an
/// input's outcome never depends on the inputs run before it.
pub struct Harness {
    dictionaries: Dictionaries,
    compressors: Vec<Compressor>,
    known_issues: KnownIssues,
}

impl Harness {
    /// Trains the dictionary and creates one compressor per dictionary.
    pub fn new(known_issues: KnownIssues) -> Self {
        let dictionaries = Dictionaries::new();
        let compressors = (0..3)
            .map(|i| Compressor::new(3, dictionaries.get(i)).expect("dictionary loads"))
            .collect();
        Self {
            dictionaries,
            compressors,
            known_issues,
        }
    }

    /// Runs every invariant of this target on one fuzz input; panics on a breach.
    pub fn check(&mut self, data: &[u8]) {
        let mut input = Input::new(data);
        let limit = usize::from(input.u16()) % (SMALL_LIMIT + 1);
        let which = usize::from(input.byte() % 3);
        let mode = input.byte();
        let body = input.rest();

        let dict = self.dictionaries.get(which);
        let mut small = Decompressor::new(dict, limit).expect("dictionary loads");
        let mut big = Decompressor::new(dict, BIG_LIMIT).expect("dictionary loads");
        assert_eq!(small.max_output(), limit);

        let from_small = bounded(&mut small, body);
        let from_big = bounded(&mut big, body);
        match (&from_small, &from_big) {
            (Ok(out), _) => assert_eq!(&from_big, &Ok(out.clone()), "a larger limit changed Ok"),
            (_, Ok(out)) if out.len() <= limit => {
                panic!(
                    "{} bytes fit the limit of {limit} but gave {from_small:?}",
                    out.len()
                )
            }
            (_, Ok(_)) => assert_eq!(
                from_small,
                Err(CompressError::TooLarge { limit }),
                "output past the small limit"
            ),
            _ => {}
        }

        let again = bounded(&mut small, body);
        if self.known_issues == KnownIssues::Check {
            if let Err(CompressError::TooLarge { .. }) = from_big {
                assert_eq!(
                    from_small,
                    Err(CompressError::TooLarge { limit }),
                    "too large for the big limit but not for the small one"
                );
            }
            // Contexts live for many bodies: a second look must give the same
            // answer (zstd's diagnostic text inside `Corrupt` may differ).
            assert!(
                same_answer(&again, &from_small),
                "the same context answered differently: {again:?} then {from_small:?}"
            );
            if let Some(total) = declared_total(body) {
                for result in [&from_small, &from_big, &again] {
                    if let Err(CompressError::TooLarge { limit }) = result {
                        assert!(
                            total > *limit as u64,
                            "TooLarge {{ limit: {limit} }} for frames declaring {total} bytes"
                        );
                    }
                }
            }
        }

        if mode & 1 != 0 {
            let packed = self.compressors[which]
                .compress(body)
                .expect("compression cannot fail");
            let expected = |limit: usize| {
                if body.len() <= limit {
                    Ok(body.to_vec())
                } else {
                    Err(CompressError::TooLarge { limit })
                }
            };
            // Both contexts have decoded before: valid bodies must not care.
            assert_eq!(bounded(&mut small, &packed), expected(limit), "round trip");
            assert_eq!(
                bounded(&mut big, &packed),
                expected(BIG_LIMIT),
                "round trip"
            );
        }
    }
}

impl Default for Harness {
    /// A harness that skips the known issues.
    fn default() -> Self {
        Self::new(KnownIssues::Skip)
    }
}

/// The content size all frames of `src` declare together, if `src` is whole
/// frames that all declare one (a skippable frame declares 0).
fn declared_total(src: &[u8]) -> Option<u64> {
    let (mut rest, mut total) = (src, 0u64);
    while !rest.is_empty() {
        let size = zstd_safe::get_frame_content_size(rest).ok()??;
        let len = zstd_safe::find_frame_compressed_size(rest).ok()?;
        if len == 0 || len > rest.len() {
            return None;
        }
        total = total.checked_add(size)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// Decompresses `src`, checking the result against the decompressor's limit.
fn bounded(dec: &mut Decompressor, src: &[u8]) -> Result<Vec<u8>, CompressError> {
    let limit = dec.max_output();
    let result = dec.decompress(src);
    match &result {
        Ok(out) => assert!(
            out.len() <= limit,
            "{} bytes past the limit {limit}",
            out.len()
        ),
        Err(CompressError::TooLarge { limit: named }) => assert_eq!(*named, limit),
        Err(_) => {}
    }
    result
}

/// Whether two results are the same answer: equal output, or the same kind of
/// error (and the same limit for `TooLarge`), whatever zstd's message says.
fn same_answer(a: &Result<Vec<u8>, CompressError>, b: &Result<Vec<u8>, CompressError>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(CompressError::Corrupt(_)), Err(CompressError::Corrupt(_))) => true,
        (Err(x), Err(y)) => x == y,
        _ => false,
    }
}
