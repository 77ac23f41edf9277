//! Python exceptions for engine errors. All derive from `ValueError`: they
//! report bad input, and each message says what was wrong with it.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

create_exception!(
    bluewren._native,
    FrameError,
    PyValueError,
    "A BlueWren frame is malformed or over a limit."
);
create_exception!(
    bluewren._native,
    WebSocketError,
    PyValueError,
    "The WebSocket peer violated RFC 6455; `close_code` says how to close."
);
create_exception!(
    bluewren._native,
    HandshakeError,
    PyValueError,
    "The WebSocket opening handshake is invalid; `status` is the HTTP status to answer."
);
create_exception!(
    bluewren._native,
    CompressionError,
    PyValueError,
    "Compressed data is corrupt or decompresses past its limit."
);
create_exception!(
    bluewren._native,
    RingError,
    PyValueError,
    "A hash-ring operation was given an invalid node or weight."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FrameError", py.get_type::<FrameError>())?;
    m.add("WebSocketError", py.get_type::<WebSocketError>())?;
    m.add("HandshakeError", py.get_type::<HandshakeError>())?;
    m.add("CompressionError", py.get_type::<CompressionError>())?;
    m.add("RingError", py.get_type::<RingError>())?;
    Ok(())
}

/// An exception instance with extra attributes set (e.g. `close_code`).
pub fn with_attrs<E: pyo3::PyTypeInfo>(
    py: Python<'_>,
    message: String,
    attrs: &[(&str, Py<PyAny>)],
) -> PyErr {
    let err = PyErr::new::<E, _>(message);
    let value = err.value(py);
    for (name, v) in attrs {
        // Setting an attribute on a fresh exception instance cannot fail.
        let _ = value.setattr(*name, v);
    }
    err
}
