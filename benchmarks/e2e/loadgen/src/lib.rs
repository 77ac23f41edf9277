//! # bluewren-loadgen
//!
//! The native load generator of BlueWren's end-to-end benchmarks
//! (`benchmarks/e2e`), and `bluewren-room-baseline`, the one-write-per-recipient
//! reference server of the room protocol. The plan and result formats are
//! described in `benchmarks/e2e/loadgen/README.md`.

pub mod baseline;
pub mod body;
pub mod client;
pub mod hist;
pub mod plan;
pub mod sys;
