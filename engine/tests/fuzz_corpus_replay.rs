//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) and the seed
//! inputs through the fuzz targets' own invariant checks, so every input the
//! fuzzer kept is a regression test under plain `cargo test` (stable, no
//! libFuzzer).
//!
//! The checks are the very files the fuzz targets run (`fuzz/src/*.rs`,
//! compiled here as modules): one definition of each invariant, two drivers.
//! The reproducers of past findings, under
//! `fuzz/artifacts-regressions/<target>/`, are replayed too.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use known_issues::KnownIssues;

#[path = "../../fuzz/src/decompress.rs"]
mod decompress;
#[path = "../../fuzz/src/frame_stream.rs"]
mod frame_stream;
#[path = "../../fuzz/src/input.rs"]
mod input;
#[path = "../../fuzz/src/known_issues.rs"]
mod known_issues;
#[path = "../../fuzz/src/seeds.rs"]
mod seeds;
#[path = "../../fuzz/src/server_conn.rs"]
mod server_conn;
#[path = "../../fuzz/src/ws_decoder.rs"]
mod ws_decoder;
#[path = "../../fuzz/src/ws_handshake.rs"]
mod ws_handshake;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// One target's invariant checks, as a replay runs them.
type Check<'a> = Box<dyn FnMut(&[u8]) + 'a>;

/// The seeds of every target, built once (the dictionary is trained).
fn seeds() -> &'static [seeds::Seed] {
    static SEEDS: OnceLock<Vec<seeds::Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| seeds::all(&decompress::Dictionaries::new()))
}

/// Runs `check` on every file under `fuzz/<dir>/<target>/`; returns how
/// many files there were and the ones that broke an invariant.
fn replay_dir(dir: &str, target: &str, check: &mut dyn FnMut(&[u8])) -> (usize, Vec<String>) {
    let inputs = files(&fuzz_dir().join(dir).join(target));
    let mut broken = Vec::new();
    for path in &inputs {
        let data = fs::read(path).expect("readable corpus file");
        if panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            broken.push(format!("{dir}/{target}/{name}"));
        }
    }
    (inputs.len(), broken)
}

/// Replays the seeds and the committed corpus of `target`.
fn replay(target: &str, mut check: impl FnMut(&[u8])) {
    for seed in seeds().iter().filter(|s| s.target == target) {
        if panic::catch_unwind(AssertUnwindSafe(|| check(&seed.bytes))).is_err() {
            panic!("seed `{}` breaks an invariant of `{target}`", seed.name);
        }
    }
    let (replayed, broken) = replay_dir("corpus", target, &mut check);
    assert!(replayed > 0, "no corpus under fuzz/corpus/{target}/");
    assert!(
        broken.is_empty(),
        "inputs breaking an invariant of `{target}` (reproduce in fuzz/ with \
         `cargo +nightly fuzz run {target} FILE`): {broken:#?}"
    );
}

#[test]
fn ws_decoder_corpus_holds_its_invariants() {
    replay("ws_decoder", ws_decoder::check);
}

#[test]
fn ws_handshake_corpus_holds_its_invariants() {
    replay("ws_handshake", ws_handshake::check);
}

#[test]
fn frame_stream_corpus_holds_its_invariants() {
    replay("frame_stream", frame_stream::check);
}

#[test]
fn decompress_corpus_holds_its_invariants() {
    let mut harness = decompress::Harness::new(KnownIssues::from_env());
    replay("decompress", |data| harness.check(data));
}

#[test]
fn server_conn_corpus_holds_its_invariants() {
    replay("server_conn", |data| {
        server_conn::check(data, KnownIssues::from_env())
    });
}

#[test]
fn every_target_has_seeds_and_a_corpus() {
    for target in seeds::TARGETS {
        assert!(
            seeds().iter().any(|s| s.target == target),
            "no seeds for {target}"
        );
        assert!(
            !files(&fuzz_dir().join("corpus").join(target)).is_empty(),
            "no corpus for {target}"
        );
    }
}

#[test]
fn artifacts_regressions_hold_their_invariants() {
    let mut harness = decompress::Harness::new(KnownIssues::Check);
    let mut checks: [(&str, Check); 5] = [
        ("ws_decoder", Box::new(ws_decoder::check)),
        ("ws_handshake", Box::new(ws_handshake::check)),
        ("frame_stream", Box::new(frame_stream::check)),
        ("decompress", Box::new(move |d| harness.check(d))),
        (
            "server_conn",
            Box::new(|d| server_conn::check(d, KnownIssues::Check)),
        ),
    ];
    let mut broken = Vec::new();
    for (target, check) in &mut checks {
        broken.extend(replay_dir("artifacts-regressions", target, check.as_mut()).1);
    }
    assert!(
        broken.is_empty(),
        "reproducers breaking an invariant again (reproduce in fuzz/ with \
         `cargo +nightly fuzz run TARGET FILE`): {broken:#?}"
    );
}
