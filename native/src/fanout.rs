//! `Outbox` and `FanOut` over `bluewren_engine::outbox`.
//!
//! `FanOut.publish` copies the frame once into a shared buffer and queues a
//! reference to it for every recipient, with the GIL released for large
//! recipient lists; `drain` then hands each connection its whole queue as one
//! `bytes` for one `transport.write`.

use std::sync::Arc;

use bluewren_engine::outbox::{self, OutboxLimits, Push, SharedFrame};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::gil::detach_if;

fn limits(low_water: usize, high_water: usize, max_bytes: usize) -> PyResult<OutboxLimits> {
    let l = OutboxLimits {
        low_water,
        high_water,
        max_bytes,
    };
    l.validate()
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok(l)
}

/// `push` results, as module constants: queued, queued and above the high
/// watermark (pause the producer), not queued because the outbox is full.
const QUEUED: u8 = 0;
const ABOVE_HIGH: u8 = 1;
const OVERFLOW: u8 = 2;

fn push_code(p: Push) -> u8 {
    match p {
        Push::Queued => QUEUED,
        Push::AboveHigh => ABOVE_HIGH,
        Push::Overflow => OVERFLOW,
    }
}

fn drain_bytes<'py>(py: Python<'py>, ob: &mut outbox::Outbox) -> Bound<'py, PyBytes> {
    let mut out = Vec::with_capacity(ob.queued_bytes());
    ob.drain_into(&mut out);
    PyBytes::new(py, &out)
}

/// One connection's queue of outgoing frames, with byte watermarks and a hard limit.
#[pyclass(name = "Outbox", module = "bluewren._native")]
pub struct PyOutbox {
    inner: outbox::Outbox,
}

#[pymethods]
impl PyOutbox {
    #[new]
    #[pyo3(signature = (low_water = OutboxLimits::default().low_water, high_water = OutboxLimits::default().high_water, max_bytes = OutboxLimits::default().max_bytes))]
    fn new(low_water: usize, high_water: usize, max_bytes: usize) -> PyResult<Self> {
        Ok(Self {
            inner: outbox::Outbox::new(limits(low_water, high_water, max_bytes)?),
        })
    }

    /// Queues a copy of `data`; returns PUSH_QUEUED, PUSH_ABOVE_HIGH or PUSH_OVERFLOW.
    fn push(&mut self, data: &[u8]) -> u8 {
        push_code(self.inner.push_copy(data))
    }

    /// Everything queued, in order, as one `bytes`; the outbox is then empty.
    fn drain<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        drain_bytes(py, &mut self.inner)
    }

    #[getter]
    fn queued_bytes(&self) -> usize {
        self.inner.queued_bytes()
    }

    #[getter]
    fn below_low_water(&self) -> bool {
        self.inner.below_low_water()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// Outboxes of many connections keyed by integer id, with encode-once publish.
#[pyclass(name = "FanOut", module = "bluewren._native")]
pub struct PyFanOut {
    inner: outbox::FanOut,
}

#[pymethods]
impl PyFanOut {
    #[new]
    fn new() -> Self {
        Self {
            inner: outbox::FanOut::new(),
        }
    }

    /// Registers connection `conn`; False if it already was.
    #[pyo3(signature = (conn, low_water = OutboxLimits::default().low_water, high_water = OutboxLimits::default().high_water, max_bytes = OutboxLimits::default().max_bytes))]
    fn register(
        &mut self,
        conn: u64,
        low_water: usize,
        high_water: usize,
        max_bytes: usize,
    ) -> PyResult<bool> {
        Ok(self
            .inner
            .register(conn, limits(low_water, high_water, max_bytes)?))
    }

    /// Forgets `conn` and drops its queue; False if unknown.
    fn unregister(&mut self, conn: u64) -> bool {
        self.inner.unregister(conn).is_some()
    }

    /// Queues one shared copy of `frame` for every recipient. Returns
    /// `(queued, paused, overflowed)`: how many outboxes took it, the ids now
    /// above their high watermark, and the ids whose outbox was full (frame
    /// not queued: close them as slow consumers). Unknown ids are skipped.
    fn publish(
        &mut self,
        py: Python<'_>,
        frame: &[u8],
        recipients: Vec<u64>,
    ) -> (usize, Vec<u64>, Vec<u64>) {
        let shared: SharedFrame = Arc::from(frame);
        let inner = &mut self.inner;
        let report = detach_if(py, recipients.len(), || inner.publish(&shared, &recipients));
        (report.queued, report.paused, report.overflowed)
    }

    /// Queues a copy of `data` for one connection; None if unknown.
    fn send(&mut self, conn: u64, data: &[u8]) -> Option<u8> {
        self.inner.send(conn, data).map(push_code)
    }

    /// Ids whose outbox became non-empty since the last call, each once.
    fn take_ready(&mut self) -> Vec<u64> {
        self.inner.take_ready()
    }

    /// Everything queued for `conn` as one `bytes` (empty if none or unknown).
    fn drain<'py>(&mut self, py: Python<'py>, conn: u64) -> Bound<'py, PyBytes> {
        match self.inner.outbox_mut(conn) {
            Some(ob) => drain_bytes(py, ob),
            None => PyBytes::new(py, b""),
        }
    }

    /// Bytes queued for `conn` (0 if unknown).
    fn queued_bytes(&self, conn: u64) -> usize {
        self.inner
            .outbox(conn)
            .map_or(0, outbox::Outbox::queued_bytes)
    }

    /// Bytes queued across all connections.
    #[getter]
    fn total_queued_bytes(&self) -> usize {
        self.inner.queued_bytes()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, conn: u64) -> bool {
        self.inner.outbox(conn).is_some()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PUSH_QUEUED", QUEUED)?;
    m.add("PUSH_ABOVE_HIGH", ABOVE_HIGH)?;
    m.add("PUSH_OVERFLOW", OVERFLOW)?;
    m.add_class::<PyOutbox>()?;
    m.add_class::<PyFanOut>()?;
    Ok(())
}
