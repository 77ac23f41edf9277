//! Invariant checks for the fuzz targets of `bluewren-engine`.
//!
//! Each module is one target: its `check` (or `Harness::check`) reads a few
//! configuration bytes from the front of the input, drives one decoder
//! through its public API and panics when an invariant breaks. The targets in
//! `fuzz_targets/` are one line each around these checks, and the engine's
//! `tests/fuzz_corpus_replay.rs` compiles these same files to replay the
//! committed corpora under plain `cargo test`, so a fuzz target and its
//! regression test can never drift apart. The modules therefore use only
//! `bluewren_engine`, `zstd` and each other.
//!
//! | module | target | decoder |
//! |---|---|---|
//! | [`ws_decoder`] | `ws_decoder` | `ws::Decoder`, both roles |
//! | [`ws_handshake`] | `ws_handshake` | `ws::parse_request`, `ws::parse_response` |
//! | [`frame_stream`] | `frame_stream` | `frame::StreamDecoder` against `frame::frames` |
//! | [`decompress`] | `decompress` | `compress::Decompressor`, with and without dictionaries |
//! | [`server_conn`] | `server_conn` | `conn::ServerConn`, handshake then frames |

#![warn(missing_docs)]

pub mod decompress;
pub mod frame_stream;
pub mod input;
pub mod known_issues;
pub mod seeds;
pub mod server_conn;
pub mod ws_decoder;
pub mod ws_handshake;
