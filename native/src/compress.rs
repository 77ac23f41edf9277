//! zstd `Compressor`, `Decompressor` (bounded output) and `train_dictionary`.

use bluewren_engine::compress;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::CompressionError;
use crate::gil::detach_if;

fn err(e: compress::CompressError) -> PyErr {
    CompressionError::new_err(e.to_string())
}

/// Compresses frame bodies at `level`, optionally with a trained dictionary.
#[pyclass(name = "Compressor", module = "bluewren._native")]
pub struct PyCompressor {
    inner: compress::Compressor,
}

#[pymethods]
impl PyCompressor {
    #[new]
    #[pyo3(signature = (level = 3, dictionary = None))]
    fn new(level: i32, dictionary: Option<&[u8]>) -> PyResult<Self> {
        Ok(Self {
            inner: compress::Compressor::new(level, dictionary).map_err(err)?,
        })
    }

    fn compress<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.inner;
        let out = detach_if(py, data.len() / 64, || inner.compress(data)).map_err(err)?;
        Ok(PyBytes::new(py, &out))
    }
}

/// Decompresses frame bodies, never producing more than `max_output` bytes:
/// a larger result (a decompression bomb) raises `CompressionError`.
#[pyclass(name = "Decompressor", module = "bluewren._native")]
pub struct PyDecompressor {
    inner: compress::Decompressor,
}

#[pymethods]
impl PyDecompressor {
    #[new]
    #[pyo3(signature = (dictionary = None, max_output = 1 << 20))]
    fn new(dictionary: Option<&[u8]>, max_output: usize) -> PyResult<Self> {
        Ok(Self {
            inner: compress::Decompressor::new(dictionary, max_output).map_err(err)?,
        })
    }

    fn decompress<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.inner;
        let out = detach_if(py, data.len() / 16, || inner.decompress(data)).map_err(err)?;
        Ok(PyBytes::new(py, &out))
    }

    #[getter]
    fn max_output(&self) -> usize {
        self.inner.max_output()
    }
}

/// Trains a zstd dictionary of at most `max_size` bytes from sample bodies.
#[pyfunction]
fn train_dictionary<'py>(
    py: Python<'py>,
    samples: Vec<Vec<u8>>,
    max_size: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let dict = py
        .detach(|| {
            let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
            compress::train_dictionary(&refs, max_size)
        })
        .map_err(err)?;
    Ok(PyBytes::new(py, &dict))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCompressor>()?;
    m.add_class::<PyDecompressor>()?;
    m.add_function(wrap_pyfunction!(train_dictionary, m)?)?;
    Ok(())
}
