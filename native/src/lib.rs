//! `bluewren._native`: the Python face of the BlueWren engine.
//!
//! This crate holds no logic. Each class wraps an engine type under its Python
//! name, converts arguments, releases the GIL around bulk work through
//! [`gil::detach_if`], and maps engine errors to the exceptions in [`errors`].
//! It also links the Cython modules (see `build.rs`) and initialises them as
//! `bluewren._protocol` and `bluewren._sqlite`.

mod cabi;
mod compress;
mod errors;
mod fanout;
mod frame;
mod gil;
mod ring;
mod ws;

use pyo3::prelude::*;
use pyo3::{ffi, types::PyDict};

extern "C" {
    fn PyInit__protocol() -> *mut ffi::PyObject;
    fn PyInit__sqlite() -> *mut ffi::PyObject;
}

/// Creates the Cython module `bluewren.<attr>`, whose init function is `init`,
/// the way the import system creates an extension module (multi-phase init
/// with a spec), and registers it in `sys.modules`, so `import bluewren.<attr>`
/// finds it.
fn init_cython(
    py: Python<'_>,
    parent: &Bound<'_, PyModule>,
    attr: &str,
    init: unsafe extern "C" fn() -> *mut ffi::PyObject,
) -> PyResult<()> {
    let name = format!("bluewren.{attr}");
    let spec = py
        .import("importlib.machinery")?
        .getattr("ModuleSpec")?
        .call1((&name, py.None()))?;
    // SAFETY: `init` is a Cython module's init function, linked in by
    // build.rs; it returns its PyModuleDef (multi-phase init), which
    // PyModule_FromDefAndSpec2 and PyModule_ExecDef turn into a module, exactly
    // as importlib's ExtensionFileLoader does.
    let module = unsafe {
        let def = init() as *mut ffi::PyModuleDef;
        if def.is_null() {
            return Err(PyErr::fetch(py));
        }
        let module = Bound::from_owned_ptr_or_err(
            py,
            ffi::PyModule_FromDefAndSpec2(def, spec.as_ptr(), ffi::PYTHON_API_VERSION),
        )?;
        if ffi::PyModule_ExecDef(module.as_ptr(), def) != 0 {
            return Err(PyErr::fetch(py));
        }
        module
    };
    let modules = py
        .import("sys")?
        .getattr("modules")?
        .cast_into::<PyDict>()?;
    modules.set_item(&name, &module)?;
    parent.add(attr, module)?;
    Ok(())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    ring::register(m)?;
    frame::register(m)?;
    ws::register(m)?;
    fanout::register(m)?;
    compress::register(m)?;
    init_cython(m.py(), m, "_protocol", PyInit__protocol)?;
    init_cython(m.py(), m, "_sqlite", PyInit__sqlite)?;
    Ok(())
}
