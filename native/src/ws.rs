//! WebSocket codec for Python: `WsDecoder`, frame encoders and the opening
//! handshake. The event loop itself uses the Cython protocol; these serve
//! clients, tools, tests and benchmarks.

use bluewren_engine::ws::{self, Decoder, Event, HandshakeLimits, OpCode, Role, WsLimits};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::{with_attrs, HandshakeError, WebSocketError};

fn opcode(code: u8) -> PyResult<OpCode> {
    Ok(match code {
        0 => OpCode::Continuation,
        1 => OpCode::Text,
        2 => OpCode::Binary,
        8 => OpCode::Close,
        9 => OpCode::Ping,
        10 => OpCode::Pong,
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "opcode {other} is not a WebSocket opcode (0, 1, 2, 8, 9 or 10)"
            )))
        }
    })
}

fn mask_key(mask: Option<&[u8]>) -> PyResult<Option<[u8; 4]>> {
    mask.map(|m| {
        m.try_into().map_err(|_| {
            pyo3::exceptions::PyValueError::new_err(format!("a mask is 4 bytes, got {}", m.len()))
        })
    })
    .transpose()
}

fn handshake_err(py: Python<'_>, e: ws::HandshakeError) -> PyErr {
    let status = e.status().into_pyobject(py).map(|v| v.into_any().unbind());
    match status {
        Ok(s) => with_attrs::<HandshakeError>(py, e.to_string(), &[("status", s)]),
        Err(err) => err.into(),
    }
}

/// Incremental WebSocket decoder.
///
/// `feed(data)` returns the list of complete events as `(opcode, payload)`
/// tuples: 1 text (payload is valid UTF-8), 2 binary, 8 close (payload is the
/// raw close body: 2-byte code + reason), 9 ping, 10 pong. Fragmented messages
/// come out whole. On a protocol violation it raises `WebSocketError` with
/// `close_code` (the code to close with) and `events` (those decoded before the
/// violation).
#[pyclass(name = "WsDecoder", module = "bluewren._native")]
pub struct PyWsDecoder {
    inner: Decoder,
}

#[pymethods]
impl PyWsDecoder {
    #[new]
    #[pyo3(signature = (role = "server", max_frame_size = WsLimits::default().max_frame_size, max_message_size = WsLimits::default().max_message_size))]
    fn new(role: &str, max_frame_size: usize, max_message_size: usize) -> PyResult<Self> {
        let role = match role {
            "server" => Role::Server,
            "client" => Role::Client,
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "role must be 'server' or 'client', got {other:?}"
                )))
            }
        };
        Ok(Self {
            inner: Decoder::new(
                role,
                WsLimits {
                    max_frame_size,
                    max_message_size,
                },
            ),
        })
    }

    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        self.inner.feed(data);
        let events = PyList::empty(py);
        loop {
            let (op, payload): (u8, Bound<'py, PyBytes>) = match self.inner.poll() {
                Ok(None) => return Ok(events),
                Ok(Some(Event::Text(p))) => (1, PyBytes::new(py, p)),
                Ok(Some(Event::Binary(p))) => (2, PyBytes::new(py, p)),
                Ok(Some(Event::Ping(p))) => (9, PyBytes::new(py, p)),
                Ok(Some(Event::Pong(p))) => (10, PyBytes::new(py, p)),
                Ok(Some(Event::Close { code, reason })) => {
                    let mut body = Vec::with_capacity(2 + reason.len());
                    if let Some(c) = code {
                        body.extend_from_slice(&c.to_be_bytes());
                        body.extend_from_slice(reason.as_bytes());
                    }
                    (8, PyBytes::new(py, &body))
                }
                Err(e) => {
                    let code = e.close_code.into_pyobject(py)?.into_any().unbind();
                    let attrs = [("close_code", code), ("events", events.into_any().unbind())];
                    return Err(with_attrs::<WebSocketError>(py, e.to_string(), &attrs));
                }
            };
            events.append((op, payload))?;
        }
    }

    /// Bytes received but not yet consumed.
    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }
}

/// Encodes one WebSocket frame (masked when `mask` is given: client role).
#[pyfunction]
#[pyo3(signature = (opcode, payload, fin = true, mask = None))]
fn encode_ws_frame<'py>(
    py: Python<'py>,
    opcode: u8,
    payload: &[u8],
    fin: bool,
    mask: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    let op = self::opcode(opcode)?;
    if op.is_control() && (!fin || payload.len() > ws::MAX_CONTROL_PAYLOAD) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "control frames (opcode {opcode}) must be final and carry at most {} bytes, got fin={fin} and {} bytes",
            ws::MAX_CONTROL_PAYLOAD,
            payload.len()
        )));
    }
    let mask = mask_key(mask)?;
    let mut out =
        Vec::with_capacity(ws::frame_header_len(payload.len(), mask.is_some()) + payload.len());
    ws::encode_frame(&mut out, op, payload, fin, mask);
    Ok(PyBytes::new(py, &out))
}

/// Encodes a close frame.
#[pyfunction]
#[pyo3(signature = (code = 1000, reason = "", mask = None))]
fn encode_ws_close<'py>(
    py: Python<'py>,
    code: u16,
    reason: &str,
    mask: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    // 1005 (no status) is how to ask for an empty close payload.
    if !(ws::close_code::is_valid_on_wire(code) || code == ws::close_code::NO_STATUS) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "close code {code} may not be sent (use 1000-1003, 1007-1014, 3000-4999, or 1005 for an empty close)"
        )));
    }
    let mut out = Vec::new();
    ws::encode_close(&mut out, code, reason, mask_key(mask)?);
    Ok(PyBytes::new(py, &out))
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
#[pyfunction]
fn accept_key(key: &str) -> String {
    ws::accept_key(key)
}

/// Parses an upgrade request. Returns None if incomplete, else
/// `(request, consumed)` where request is a dict with path, host, origin, key,
/// protocols, extensions, headers. Raises `HandshakeError` (with `status`).
#[pyfunction]
#[pyo3(signature = (data, max_request_bytes = 8192, max_headers = 64))]
fn parse_handshake_request<'py>(
    py: Python<'py>,
    data: &[u8],
    max_request_bytes: usize,
    max_headers: usize,
) -> PyResult<Option<(Bound<'py, PyDict>, usize)>> {
    let limits = HandshakeLimits {
        max_request_bytes,
        max_headers,
    };
    let Some((req, used)) = ws::parse_request(data, &limits).map_err(|e| handshake_err(py, e))?
    else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    d.set_item("path", req.path)?;
    d.set_item("host", req.host)?;
    d.set_item("origin", req.origin)?;
    d.set_item("key", req.key)?;
    d.set_item("protocols", req.protocols)?;
    d.set_item("extensions", req.extensions)?;
    d.set_item("headers", req.headers)?;
    Ok(Some((d, used)))
}

/// Builds a client upgrade request.
#[pyfunction]
#[pyo3(signature = (host, path, key, protocols = Vec::new()))]
fn client_handshake<'py>(
    py: Python<'py>,
    host: &str,
    path: &str,
    key: &str,
    protocols: Vec<String>,
) -> Bound<'py, PyBytes> {
    let protos: Vec<&str> = protocols.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    ws::write_client_request(&mut out, host, path, key, &protos);
    PyBytes::new(py, &out)
}

/// Parses the server's upgrade response: None if incomplete, else
/// `(status, protocol, consumed)`. Raises `HandshakeError` on a bad response.
#[pyfunction]
fn parse_handshake_response(
    py: Python<'_>,
    data: &[u8],
    key: &str,
) -> PyResult<Option<(u16, Option<String>, usize)>> {
    let limits = HandshakeLimits::default();
    Ok(ws::parse_response(data, key, &limits)
        .map_err(|e| handshake_err(py, e))?
        .map(|(resp, used)| (resp.status, resp.protocol, used)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyWsDecoder>()?;
    m.add_function(wrap_pyfunction!(encode_ws_frame, m)?)?;
    m.add_function(wrap_pyfunction!(encode_ws_close, m)?)?;
    m.add_function(wrap_pyfunction!(accept_key, m)?)?;
    m.add_function(wrap_pyfunction!(parse_handshake_request, m)?)?;
    m.add_function(wrap_pyfunction!(client_handshake, m)?)?;
    m.add_function(wrap_pyfunction!(parse_handshake_response, m)?)?;
    Ok(())
}
