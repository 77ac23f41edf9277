//! `HashRing` and `BoundedLoad` over `bluewren_engine::ring`.

use bluewren_engine::ring;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::errors::RingError;
use crate::gil::detach_if;

fn ring_err(e: ring::RingError) -> PyErr {
    RingError::new_err(e.to_string())
}

/// Routing keys are `str` (hashed as UTF-8) or `bytes`.
fn key_bytes<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    if let Ok(s) = key.cast::<PyString>() {
        return s.to_str().map(str::as_bytes);
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "a routing key must be str or bytes, not {}",
        key.get_type().name()?
    )))
}

/// Consistent-hash ring: xxh3, virtual nodes, weights, minimal movement.
#[pyclass(name = "HashRing", module = "bluewren._native")]
#[derive(Clone)]
pub struct PyHashRing {
    inner: ring::HashRing,
}

#[pymethods]
impl PyHashRing {
    #[classattr]
    const DEFAULT_VNODES: u32 = ring::HashRing::DEFAULT_VNODES;

    #[new]
    #[pyo3(signature = (nodes = None, vnodes = ring::HashRing::DEFAULT_VNODES))]
    fn new(nodes: Option<Vec<(String, u32)>>, vnodes: u32) -> PyResult<Self> {
        let mut inner = ring::HashRing::new(vnodes);
        for (name, weight) in nodes.unwrap_or_default() {
            inner.add(&name, weight).map_err(ring_err)?;
        }
        Ok(Self { inner })
    }

    /// Adds `node` (or changes its weight).
    #[pyo3(signature = (node, weight = 1))]
    fn add(&mut self, py: Python<'_>, node: &str, weight: u32) -> PyResult<()> {
        let inner = &mut self.inner;
        detach_if(py, usize::MAX, || inner.add(node, weight)).map_err(ring_err)
    }

    /// Removes `node`; returns whether it was present.
    fn remove(&mut self, py: Python<'_>, node: &str) -> bool {
        let inner = &mut self.inner;
        detach_if(py, usize::MAX, || inner.remove(node))
    }

    /// The node owning `key`, or None on an empty ring.
    fn get(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<&str>> {
        Ok(self.inner.get(key_bytes(key)?))
    }

    /// The owners of many keys, in order: one call, GIL released for large batches.
    fn get_many(&self, py: Python<'_>, keys: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<Option<&str>>> {
        let raw: Vec<&[u8]> = keys.iter().map(key_bytes).collect::<PyResult<_>>()?;
        let inner = &self.inner;
        Ok(detach_if(py, raw.len(), || {
            raw.iter().map(|k| inner.get(k)).collect()
        }))
    }

    /// Up to `n` distinct nodes for `key`, primary first.
    fn get_n(&self, key: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<&str>> {
        Ok(self.inner.get_n(key_bytes(key)?, n))
    }

    /// `(name, weight)` pairs sorted by name.
    fn nodes(&self) -> Vec<(&str, u32)> {
        self.inner.nodes()
    }

    /// The exact fraction of the hash space each node owns.
    fn shares(&self) -> Vec<(&str, f64)> {
        self.inner.shares()
    }

    #[getter]
    fn vnodes(&self) -> u32 {
        self.inner.vnodes_per_weight()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, node: &str) -> bool {
        self.inner.contains(node)
    }

    fn __repr__(&self) -> String {
        format!(
            "HashRing(nodes={}, vnodes={})",
            self.inner.len(),
            self.inner.vnodes_per_weight()
        )
    }
}

/// Consistent hashing with bounded loads: no node above ceil((1+epsilon) * mean).
#[pyclass(name = "BoundedLoad", module = "bluewren._native")]
pub struct PyBoundedLoad {
    inner: ring::BoundedLoad,
}

#[pymethods]
impl PyBoundedLoad {
    #[new]
    #[pyo3(signature = (ring, epsilon = 0.25))]
    fn new(ring: &PyHashRing, epsilon: f64) -> PyResult<Self> {
        if !(epsilon > 0.0 && epsilon.is_finite()) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "epsilon must be a positive finite number, got {epsilon}"
            )));
        }
        Ok(Self {
            inner: ring::BoundedLoad::new(ring.inner.clone(), epsilon),
        })
    }

    /// Assigns `key` to a node under the load bound and counts it there.
    fn assign(&mut self, key: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        Ok(self.inner.assign(key_bytes(key)?).map(str::to_owned))
    }

    /// Releases one unit of load from `node`; returns whether it had any.
    fn release(&mut self, node: &str) -> bool {
        self.inner.release(node)
    }

    fn load(&self, node: &str) -> usize {
        self.inner.load(node)
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    #[getter]
    fn total(&self) -> usize {
        self.inner.total()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHashRing>()?;
    m.add_class::<PyBoundedLoad>()?;
    m.add_function(wrap_pyfunction!(key_hash, m)?)?;
    Ok(())
}

/// The ring's 64-bit hash of a key (xxh3).
#[pyfunction]
fn key_hash(key: &Bound<'_, PyAny>) -> PyResult<u64> {
    Ok(ring::key_hash(key_bytes(key)?))
}
