//! `qwen_scope._native`: the Rust side of the Python package. It is deliberately thin:
//! every call converts its arguments, runs the library with the GIL released and panics
//! caught, and hands back plain lists, dicts and numpy arrays; the Python side
//! (python/qwen_scope) builds DataFrames, progress bars and the friendly signatures.

mod errors;
mod experiments;
mod model;
mod sites;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::NativeModel>()?;
    m.add_function(wrap_pyfunction!(sites::parse_site, m)?)?;
    m.add_function(wrap_pyfunction!(experiments::sweep, m)?)?;
    m.add_function(wrap_pyfunction!(experiments::attributes, m)?)?;
    m.add_function(wrap_pyfunction!(experiments::inspect, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "TOKEN_IDENTITY_PROMPT",
        qwen_scope::patchscope::TOKEN_IDENTITY_PROMPT,
    )?;
    m.add(
        "ENTITY_DESCRIPTION_PROMPT",
        qwen_scope::patchscope::ENTITY_DESCRIPTION_PROMPT,
    )?;
    Ok(())
}

/// How the engine was built: whether the CUDA kernels are embedded, and for which GPUs
/// (so a notebook can tell a CPU-only wheel from one built with nvcc).
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let d = pyo3::types::PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item(
        "cuda_kernels",
        qwen_scope::backend::cuda::kernels_embedded(),
    )?;
    if let Some((compiler, sass, ptx)) = qwen_scope::backend::cuda::kernel_build_info() {
        d.set_item("compiler", compiler)?;
        d.set_item("sass", sass)?;
        d.set_item("ptx", ptx)?;
    }
    Ok(d)
}
