//! # bluewren-engine
//!
//! The byte core of BlueWren. Everything here is plain Rust with no Python:
//! it builds and tests with `cargo test`, and the `native` crate exposes it to
//! Python (PyO3) and to the Cython event-loop protocol (a small C ABI).
//!
//! | module | job |
//! |---|---|
//! | [`conn`] | server side of one WebSocket connection: handshake, then frames, replies queued |
//! | [`ws`] | RFC 6455 WebSocket: opening handshake, incremental frame decoder, frame encoder |
//! | [`frame`] | the BlueWren binary frame: 32-byte header + body, many per message |
//! | [`compress`] | zstd for frame bodies, optional trained dictionary, bounded output |
//! | [`ring`] | consistent-hash ring (xxh3, virtual nodes, weights, bounded load) |
//! | [`outbox`] | per-connection outboxes and encode-once fan-out |
//!
//! Limits are checked before any allocation: nothing a peer sends can make the
//! engine allocate more than the configured limit.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod compress;
pub mod conn;
pub mod frame;
pub mod outbox;
pub mod ring;
pub mod ws;
