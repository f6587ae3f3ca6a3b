//! Library errors as Python exceptions, and the one way the bindings run library code:
//! with the GIL released and panics caught, so no panic crosses into Python.

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use qwen_scope::Error;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

/// The exception a user expects for each kind of failure: a missing file or model is
/// FileNotFoundError, anything wrong with what was asked or with the files' contents is
/// ValueError, and the machine's failures (hub, GPU) and qwen-scope's own bugs
/// (`Error::Internal`) are RuntimeError. The message is the
/// CLI's, optionally behind `(context, subject)` ("cannot load model X: ..."), which is left
/// out when the message names the subject already (no message says a thing twice).
pub fn to_py(e: Error, context: Option<(&str, &str)>) -> PyErr {
    let msg = match context {
        Some((c, subject)) if !e.to_string().contains(subject) => format!("{c}: {e}"),
        _ => e.to_string(),
    };
    match &e {
        Error::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Io { .. } | Error::Write { .. } => PyOSError::new_err(msg),
        Error::ModelNotFound(_) => PyFileNotFoundError::new_err(msg),
        Error::Config { .. }
        | Error::UnknownArchitecture(_)
        | Error::Safetensors { .. }
        | Error::Tensor { .. }
        | Error::Tokenizer(_)
        | Error::Input(_) => PyValueError::new_err(msg),
        Error::Hub(_) | Error::Cuda(_) | Error::Internal(_) => PyRuntimeError::new_err(msg),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f` without the GIL (other Python threads, and Ctrl-C handling between progress
/// callbacks, go on meanwhile), turning its error into the matching exception and a
/// panic into a RuntimeError.
pub fn run<T: Send>(
    py: Python<'_>,
    context: Option<(&str, &str)>,
    f: impl FnOnce() -> qwen_scope::Result<T> + Send,
) -> PyResult<T> {
    match py.detach(move || catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(e, context)),
        Err(p) => Err(PyRuntimeError::new_err(format!(
            "qwen-scope internal error (please report it): {}",
            panic_message(p)
        ))),
    }
}

/// A Python progress callback `f(phase, done, total)` called from a run without the GIL.
/// An exception it raises (KeyboardInterrupt from Ctrl-C included) stops the run at the
/// next batch and is re-raised as it was.
pub struct Progress {
    callback: Option<Py<PyAny>>,
    raised: Mutex<Option<PyErr>>,
}

/// What a stopped run returns inside the library; [`Progress::finish`] replaces it with
/// the callback's own exception.
const STOPPED: &str = "stopped by an exception in the progress callback";

impl Progress {
    pub fn new(callback: Option<Py<PyAny>>) -> Self {
        Progress {
            callback,
            raised: Mutex::new(None),
        }
    }

    /// Reports `done` of `total` in `phase`; Err once the callback has raised.
    pub fn report(&self, phase: &str, done: usize, total: usize) -> qwen_scope::Result<()> {
        let mut raised = self.raised.lock().unwrap_or_else(|p| p.into_inner());
        if raised.is_some() {
            return Err(Error::Input(STOPPED.into()));
        }
        // Ctrl-C is noticed here even without a callback: Python's signal handlers only
        // run when some thread holds the GIL and asks
        let result = Python::attach(|py| {
            py.check_signals()?;
            match &self.callback {
                Some(cb) => cb.call1(py, (phase, done, total)).map(|_| ()),
                None => Ok(()),
            }
        });
        if let Err(e) = result {
            *raised = Some(e);
            return Err(Error::Input(STOPPED.into()));
        }
        Ok(())
    }

    /// The run's result, with the callback's exception in place of the stop it caused.
    pub fn finish<T>(self, result: PyResult<T>) -> PyResult<T> {
        let raised = self.raised.into_inner().unwrap_or_else(|p| p.into_inner());
        match raised {
            Some(e) => Err(e),
            None => result,
        }
    }
}
