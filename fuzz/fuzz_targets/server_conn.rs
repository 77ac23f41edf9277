//! Fuzz target `server_conn`: see `bluewren_engine_fuzz::server_conn` for the input layout
//! and the invariants checked. Set `BLUEWREN_FUZZ_KNOWN_ISSUES=1` to check the
//! invariants the engine is known to break as well.

#![no_main]

use bluewren_engine_fuzz::known_issues::KnownIssues;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bluewren_engine_fuzz::server_conn::check(data, KnownIssues::from_env())
});
