//! Property and resource tests for body compression: round trips, the output
//! limit as an exact boundary, no panic on any input, and decompression bombs
//! refused with the Rust heap staying within the limit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::sync::OnceLock;

use bluewren_engine::compress::{train_dictionary, CompressError, Compressor, Decompressor};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Tracks live and peak heap bytes per thread, so a test can measure what
/// one call allocates while other tests run on other threads.
struct PeakTracking;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // try_with: the allocator may run while thread-locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping only touches const-initialised thread-locals, which never
// allocate.
unsafe impl GlobalAlloc for PeakTracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: PeakTracking = PeakTracking;

/// Runs `f` and returns its result with the most heap it held at once.
fn peak_heap<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, (PEAK.with(Cell::get) - base) as usize)
}

const MIB: usize = 1 << 20;

/// `total` zero bytes compressed as one frame, written in 1 MiB pieces so the
/// test never holds them; the header declares the size only if `declare`.
fn zeros_frame(total: usize, declare: bool) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    if declare {
        enc.set_pledged_src_size(Some(total as u64)).unwrap();
    } else {
        enc.include_contentsize(false).unwrap();
    }
    let chunk = vec![0; MIB];
    let mut left = total;
    while left > 0 {
        let n = left.min(MIB);
        enc.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    enc.finish().unwrap()
}

/// Rewrites the content size field of a frame without a dictionary id.
fn declare_size(frame: &mut [u8], size: u64) {
    let descriptor = frame[4];
    assert_eq!(descriptor & 0x03, 0, "expects no dictionary id");
    let single_segment = descriptor & 0x20 != 0;
    let at = if single_segment { 5 } else { 6 };
    match descriptor >> 6 {
        2 => frame[at..at + 4].copy_from_slice(&u32::try_from(size).unwrap().to_le_bytes()),
        3 => frame[at..at + 8].copy_from_slice(&size.to_le_bytes()),
        flag => panic!("content size field flag {flag} too narrow for this test"),
    }
}

#[test]
fn hundred_mib_bomb_declaring_its_size_is_refused_without_allocating() {
    let bomb = zeros_frame(100 * MIB, true);
    assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    let mut d = Decompressor::new(None, MIB).unwrap();
    let (res, peak) = peak_heap(|| d.decompress(&bomb));
    assert_eq!(res, Err(CompressError::TooLarge { limit: MIB }));
    assert!(peak < 4096, "held {peak} bytes");
}

#[test]
fn hundred_mib_bomb_hiding_its_size_is_refused_within_the_limit() {
    let bomb = zeros_frame(100 * MIB, false);
    let mut d = Decompressor::new(None, MIB).unwrap();
    let (res, peak) = peak_heap(|| d.decompress(&bomb));
    assert_eq!(res, Err(CompressError::TooLarge { limit: MIB }));
    assert!(peak <= MIB + 4096, "held {peak} bytes");
}

#[test]
fn hundred_mib_bomb_understating_its_size_is_corrupt_within_the_claim() {
    let mut bomb = zeros_frame(100 * MIB, true);
    declare_size(&mut bomb, 64 * 1024);
    let mut d = Decompressor::new(None, MIB).unwrap();
    let (res, peak) = peak_heap(|| d.decompress(&bomb));
    assert!(matches!(res, Err(CompressError::Corrupt(_))), "{res:?}");
    assert!(peak <= 64 * 1024 + 4096, "held {peak} bytes");
}

#[test]
fn small_body_allocates_only_its_own_size() {
    let body = vec![7; 10_000];
    let packed = Compressor::new(3, None).unwrap().compress(&body).unwrap();
    let mut d = Decompressor::new(None, 64 * MIB).unwrap();
    let (res, peak) = peak_heap(|| d.decompress(&packed));
    assert_eq!(res.unwrap(), body);
    assert!(peak <= body.len() + 4096, "held {peak} bytes");
}

#[test]
fn huge_window_in_a_small_frame_costs_no_window_memory() {
    // A streaming producer may ask for a 128 MiB window for a tiny body;
    // one-shot decoding writes straight into the output and needs none.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.window_log(27).unwrap();
    enc.write_all(b"small body, big window").unwrap();
    let frame = enc.finish().unwrap();
    let mut d = Decompressor::new(None, 1024).unwrap();
    assert_eq!(d.decompress(&frame).unwrap(), b"small body, big window");
}

fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let samples: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| {
                format!(
                    r#"{{"op":"send","conv":{},"cmid":{},"text":"message {}"}}"#,
                    i % 50,
                    i,
                    i * 31
                )
                .into_bytes()
            })
            .collect();
        let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
        train_dictionary(&refs, 8192).unwrap()
    })
}

/// Bytes with runs and repeats, so that compression has something to find.
fn compressible() -> impl Strategy<Value = Vec<u8>> {
    vec((any::<u8>(), 1usize..40), 0..200).prop_map(|runs| {
        runs.into_iter()
            .flat_map(|(b, n)| std::iter::repeat_n(b, n))
            .collect()
    })
}

proptest! {
    // Failing cases are kept beside this file, in regressions/.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn round_trips_at_any_level(data in prop_oneof![compressible(), vec(any::<u8>(), 0..4000)], level in -5i32..=9) {
        let packed = Compressor::new(level, None).unwrap().compress(&data).unwrap();
        let mut d = Decompressor::new(None, data.len()).unwrap();
        prop_assert_eq!(d.decompress(&packed).unwrap(), data);
    }

    #[test]
    fn round_trips_with_the_dictionary(conv in any::<u32>(), text in "[ -~]{0,200}") {
        let body = format!(r#"{{"op":"send","conv":{conv},"cmid":1,"text":"{text}"}}"#).into_bytes();
        let packed = Compressor::new(3, Some(dictionary())).unwrap().compress(&body).unwrap();
        let mut d = Decompressor::new(Some(dictionary()), body.len()).unwrap();
        prop_assert_eq!(d.decompress(&packed).unwrap(), body);
    }

    #[test]
    fn limit_is_an_exact_boundary(data in compressible(), limit in 0usize..8000) {
        let packed = Compressor::new(1, None).unwrap().compress(&data).unwrap();
        let got = Decompressor::new(None, limit).unwrap().decompress(&packed);
        if data.len() <= limit {
            prop_assert_eq!(got.unwrap(), data);
        } else {
            prop_assert_eq!(got, Err(CompressError::TooLarge { limit }));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..600),
            // Real frames with a few bytes overwritten get past the magic number.
            (compressible(), vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)).prop_map(|(data, edits)| {
                let mut frame = Compressor::new(3, None).unwrap().compress(&data).unwrap();
                for (at, v) in edits {
                    let at = at.index(frame.len());
                    frame[at] = v;
                }
                frame
            }),
        ],
        limit in 0usize..10_000,
        with_dict in any::<bool>(),
    ) {
        let dict = with_dict.then(dictionary);
        let mut d = Decompressor::new(dict, limit).unwrap();
        if let Ok(out) = d.decompress(&bytes) {
            prop_assert!(out.len() <= limit);
        }
    }
}
