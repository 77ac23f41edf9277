//! The one place the GIL is released.

use pyo3::marker::Ungil;
use pyo3::prelude::*;

/// Work below this many items (keys, bytes, recipients) runs with the GIL
/// held: releasing and re-taking it costs more than the work itself.
pub const DETACH_THRESHOLD: usize = 256;

/// Runs `f` without the GIL when `size` is large enough to be worth it.
pub fn detach_if<T: Ungil, F: Ungil + FnOnce() -> T>(py: Python<'_>, size: usize, f: F) -> T {
    if size >= DETACH_THRESHOLD {
        py.detach(f)
    } else {
        f()
    }
}
