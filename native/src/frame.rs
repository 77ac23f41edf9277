//! BlueWren frame codec: `encode_frame`, `encode_frames`, `decode_frames`,
//! and `FrameDecoder` for byte streams.
//!
//! A decoded frame is the tuple `(kind, flags, conv, seq, cmid, body)`: tuples
//! are the cheapest object Python can build, and a batch of them comes back
//! from one call.

use bluewren_engine::frame::{self, FrameLimits, FrameRef, Header};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::errors::{with_attrs, FrameError};

fn to_tuple<'py>(py: Python<'py>, f: &FrameRef<'_>) -> PyResult<Bound<'py, PyTuple>> {
    let h = f.header;
    (
        h.kind,
        h.flags,
        h.conv,
        h.seq,
        h.cmid,
        PyBytes::new(py, f.body),
    )
        .into_pyobject(py)
}

fn check_flags(flags: u8) -> PyResult<()> {
    if flags & frame::flags::RESERVED != 0 {
        return Err(FrameError::new_err(format!(
            "flags 0x{flags:02x} set reserved bits: only COMPRESSED (0x01) and DICT (0x02) are defined"
        )));
    }
    Ok(())
}

fn check_body(body: &[u8]) -> PyResult<()> {
    if body.len() > u32::MAX as usize {
        return Err(FrameError::new_err(format!(
            "frame body of {} bytes exceeds the 4 GiB wire limit",
            body.len()
        )));
    }
    Ok(())
}

/// Encodes one frame.
#[pyfunction]
#[pyo3(signature = (kind, body = None, conv = 0, seq = 0, cmid = 0, flags = 0))]
fn encode_frame<'py>(
    py: Python<'py>,
    kind: u8,
    body: Option<&[u8]>,
    conv: u64,
    seq: u64,
    cmid: u64,
    flags: u8,
) -> PyResult<Bound<'py, PyBytes>> {
    let body = body.unwrap_or_default();
    check_flags(flags)?;
    check_body(body)?;
    let header = Header {
        kind,
        flags,
        conv,
        seq,
        cmid,
    };
    let mut out = Vec::with_capacity(frame::encoded_len(body.len()));
    frame::encode(&mut out, &header, body);
    Ok(PyBytes::new(py, &out))
}

/// Encodes many `(kind, flags, conv, seq, cmid, body)` frames into one buffer,
/// e.g. one WebSocket message.
#[pyfunction]
fn encode_frames<'py>(
    py: Python<'py>,
    frames: Vec<(u8, u8, u64, u64, u64, Vec<u8>)>,
) -> PyResult<Bound<'py, PyBytes>> {
    let total: usize = frames.iter().map(|f| frame::encoded_len(f.5.len())).sum();
    let mut out = Vec::with_capacity(total);
    for (kind, flags, conv, seq, cmid, body) in &frames {
        check_flags(*flags)?;
        check_body(body)?;
        frame::encode(
            &mut out,
            &Header {
                kind: *kind,
                flags: *flags,
                conv: *conv,
                seq: *seq,
                cmid: *cmid,
            },
            body,
        );
    }
    Ok(PyBytes::new(py, &out))
}

/// Decodes every frame in `data` (a whole message) into a list of tuples. On
/// bad input raises `FrameError` whose `frames` holds the frames before it.
#[pyfunction]
#[pyo3(signature = (data, max_body = FrameLimits::default().max_body))]
fn decode_frames<'py>(
    py: Python<'py>,
    data: &[u8],
    max_body: usize,
) -> PyResult<Bound<'py, PyList>> {
    let limits = FrameLimits { max_body };
    let list = PyList::empty(py);
    for f in frame::frames(data, &limits) {
        match f {
            Ok(f) => list.append(to_tuple(py, &f)?)?,
            Err(e) => {
                let attrs = [("frames", list.into_any().unbind())];
                return Err(with_attrs::<FrameError>(py, e.to_string(), &attrs));
            }
        }
    }
    Ok(list)
}

/// Incremental decoder for a stream of frames (the raw TCP listener).
#[pyclass(name = "FrameDecoder", module = "bluewren._native")]
pub struct PyFrameDecoder {
    inner: frame::StreamDecoder,
}

#[pymethods]
impl PyFrameDecoder {
    #[new]
    #[pyo3(signature = (max_body = FrameLimits::default().max_body))]
    fn new(max_body: usize) -> Self {
        Self {
            inner: frame::StreamDecoder::new(FrameLimits { max_body }),
        }
    }

    /// Adds bytes and returns every frame now complete. On bad input raises
    /// `FrameError` whose `frames` holds the frames decoded before the bad one;
    /// the decoder then keeps raising.
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        self.inner.feed(data);
        let list = PyList::empty(py);
        loop {
            match self.inner.poll() {
                Ok(Some(f)) => list.append(to_tuple(py, &f)?)?,
                Ok(None) => return Ok(list),
                Err(e) => {
                    let attrs = [("frames", list.into_any().unbind())];
                    return Err(with_attrs::<FrameError>(py, e.to_string(), &attrs));
                }
            }
        }
    }

    /// Bytes received but not yet part of a complete frame.
    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FRAME_VERSION", frame::VERSION)?;
    m.add("FRAME_HEADER_LEN", frame::HEADER_LEN)?;
    m.add("FLAG_COMPRESSED", frame::flags::COMPRESSED)?;
    m.add("FLAG_DICT", frame::flags::DICT)?;
    m.add_function(wrap_pyfunction!(encode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(encode_frames, m)?)?;
    m.add_function(wrap_pyfunction!(decode_frames, m)?)?;
    m.add_class::<PyFrameDecoder>()?;
    Ok(())
}
