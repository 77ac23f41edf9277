//! Fuzz target `ws_handshake`: see `bluewren_engine_fuzz::ws_handshake` for the input layout
//! and the invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bluewren_engine_fuzz::ws_handshake::check(data));
