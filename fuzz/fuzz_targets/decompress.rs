//! Fuzz target `decompress`: see `bluewren_engine_fuzz::decompress` for the
//! input layout and the invariants checked. Set `BLUEWREN_FUZZ_KNOWN_ISSUES=1`
//! to check the invariants the engine is known to break as well.

#![no_main]

use std::cell::RefCell;

use bluewren_engine_fuzz::decompress::Harness;
use bluewren_engine_fuzz::known_issues::KnownIssues;

thread_local! {
    // Training the dictionary and creating the compressors once per
    // process, not once per input, keeps the target fast.
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new(KnownIssues::from_env()));
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| HARNESS.with(|h| h.borrow_mut().check(data)));
