//! Fuzz target `frame_stream`: see `bluewren_engine_fuzz::frame_stream` for the input layout
//! and the invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bluewren_engine_fuzz::frame_stream::check(data));
