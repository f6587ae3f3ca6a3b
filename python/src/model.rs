//! `NativeModel`: a model on its backend, its config and tokenizer, and the raw forward
//! and generate calls.

use crate::errors::run;
use crate::sites::site;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use qwen_scope::device::{DTypeSpec, DeviceSpec, Loaded};
use qwen_scope::{
    with_engine, CpuModel, Engine, LogitsAt, Output, Positions, Request, Site, WriteOp,
};
use std::str::FromStr;

#[pyclass(module = "qwen_scope._native", frozen)]
pub struct NativeModel {
    pub loaded: Loaded,
}

/// A read as Python sends it: (site name, row, "all" | "last" | "at", positions).
type ReadSpec = (String, usize, String, Vec<usize>);
/// A write: (site name, row, position, vector, add instead of replace).
type WriteSpec<'py> = (String, usize, usize, PyReadonlyArray1<'py, f32>, bool);

impl NativeModel {
    fn num_layers(&self) -> usize {
        with_engine!(&self.loaded, |m| m.num_layers())
    }

    fn hidden_size(&self) -> usize {
        with_engine!(&self.loaded, |m| m.config().hidden_size)
    }

    pub fn tokenizer(&self) -> &qwen_scope::tokenizer::Tokenizer {
        with_engine!(&self.loaded, |m| m.tokenizer())
    }

    fn site(&self, name: &str) -> PyResult<Site> {
        site(name, self.num_layers()).map_err(PyValueError::new_err)
    }

    /// A request from Python's reads and writes (checked here for what the library
    /// cannot know: names, and the length of each written vector).
    fn request(
        &self,
        rows: Vec<Vec<u32>>,
        reads: Vec<ReadSpec>,
        writes: Vec<WriteSpec<'_>>,
    ) -> PyResult<Request> {
        let hidden = self.hidden_size();
        let mut req = Request::tokens(rows);
        for (name, row, kind, at) in reads {
            let positions = match kind.as_str() {
                "all" => Positions::All,
                "last" => Positions::Last,
                "at" => Positions::At(at),
                other => {
                    return Err(PyValueError::new_err(format!(
                        "read positions {other:?}: use \"all\", \"last\", or positions"
                    )))
                }
            };
            req = req.read(self.site(&name)?, row, positions);
        }
        for (name, row, pos, vector, add) in writes {
            let values = vector.as_slice()?.to_vec();
            if values.len() != hidden {
                return Err(PyValueError::new_err(format!(
                    "write at {name} row {row} position {pos}: a vector of {} values for hidden size {hidden}",
                    values.len()
                )));
            }
            let op = if add {
                WriteOp::Add(values)
            } else {
                WriteOp::Replace(values)
            };
            req = req.write(self.site(&name)?, row, pos, op);
        }
        Ok(req)
    }
}

/// Rows of `width` values as one [rows, width] array.
fn matrix(rows: Vec<Vec<f32>>, width: usize) -> Array2<f32> {
    let n = rows.len();
    Array2::from_shape_vec((n, width), rows.concat()).expect("rows of equal width")
}

/// (row, position) pairs as an [n, 2] int64 array.
fn index(pairs: impl Iterator<Item = (usize, usize)>) -> Array2<i64> {
    let flat: Vec<i64> = pairs.flat_map(|(r, p)| [r as i64, p as i64]).collect();
    Array2::from_shape_vec((flat.len() / 2, 2), flat).expect("pairs")
}

#[pymethods]
impl NativeModel {
    /// Loads a model folder or hub repo id (the CLI's rules: HF_HOME, HF_HUB_OFFLINE,
    /// revision) and places it on `device` ("cpu", "cuda", "cuda:N", "auto") with `dtype`
    /// ("auto", "f32", "f16", "bf16"); `note` receives what the CLI prints to stderr.
    #[new]
    #[pyo3(signature = (spec, device="auto", dtype="auto", revision=None, note=None))]
    fn new(
        py: Python<'_>,
        spec: &str,
        device: &str,
        dtype: &str,
        revision: Option<&str>,
        note: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let device = DeviceSpec::from_str(device).map_err(PyValueError::new_err)?;
        let dtype = DTypeSpec::from_str(dtype).map_err(PyValueError::new_err)?;
        let context = format!("cannot load model {spec}");
        let subject = spec.trim_end_matches('/');
        let host = run(py, Some((&context, subject)), || {
            CpuModel::load(spec, revision)
        })?;
        let mut notes = Vec::new();
        let loaded = run(py, None, || {
            Loaded::place(host, device, dtype, &mut |n| notes.push(n))
        })?;
        if let Some(note) = note {
            for n in notes {
                note.call1(py, (n,))?;
            }
        }
        Ok(NativeModel { loaded })
    }

    /// The config as a dict (the names of `qwen_scope::Config`).
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = with_engine!(&self.loaded, |m| m.config().clone());
        let d = PyDict::new(py);
        d.set_item("arch", format!("{:?}", c.arch))?;
        d.set_item("hidden_size", c.hidden_size)?;
        d.set_item("intermediate_size", c.intermediate_size)?;
        d.set_item("num_layers", c.num_layers)?;
        d.set_item("num_heads", c.num_heads)?;
        d.set_item("num_kv_heads", c.num_kv_heads)?;
        d.set_item("head_dim", c.head_dim)?;
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("max_position_embeddings", c.max_position_embeddings)?;
        d.set_item("rms_norm_eps", c.rms_norm_eps)?;
        d.set_item("rope_theta", c.rope_theta)?;
        d.set_item("tie_word_embeddings", c.tie_word_embeddings)?;
        d.set_item("qkv_bias", c.qkv_bias)?;
        d.set_item("dtype", c.dtype)?;
        Ok(d)
    }

    /// Where the pass runs ("cpu f32", "cuda:0 NVIDIA H100 (sm_90) F16").
    fn describe(&self) -> String {
        with_engine!(&self.loaded, |m| m.describe())
    }

    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        run(py, None, || self.tokenizer().encode(text))
    }

    fn decode(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<String> {
        run(py, None, || self.tokenizer().decode(&ids))
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer().token_to_id(token)
    }

    /// One pass from fresh caches. `logits` is "none", "last", "all" or "at" (with `at`).
    /// Returns {"logits": [n, vocab] or None, "logit_index": [n, 2] (row, position),
    /// "states": {site: ([k, hidden], [k, 2] (row, position))}}.
    #[pyo3(signature = (rows, reads, writes, logits, at))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        rows: Vec<Vec<u32>>,
        reads: Vec<ReadSpec>,
        writes: Vec<WriteSpec<'py>>,
        logits: &str,
        at: Vec<(usize, usize)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let logits = match logits {
            "none" => LogitsAt::None,
            "last" => LogitsAt::Last,
            "all" => LogitsAt::All,
            "at" => LogitsAt::At(at),
            other => {
                return Err(PyValueError::new_err(format!(
                    "logits={other:?}: use \"last\", \"all\", None, or a list of (row, position)"
                )))
            }
        };
        let n = rows.len();
        let req = self.request(rows, reads, writes)?.logits(logits);
        let out: Output = run(py, None, || {
            with_engine!(&self.loaded, |m| {
                let mut caches: Vec<_> = (0..n).map(|_| m.new_cache()).collect();
                m.forward(&mut caches, &req)
            })
        })?;
        self.output(py, out)
    }

    /// Greedy generation: `rows` run once with `writes` (so the patch stays in the KV
    /// cache), then each row's argmax is fed back until `max_new` new tokens per row.
    fn generate(
        &self,
        py: Python<'_>,
        rows: Vec<Vec<u32>>,
        writes: Vec<WriteSpec<'_>>,
        max_new: usize,
    ) -> PyResult<Vec<Vec<u32>>> {
        let n = rows.len();
        let req = self.request(rows, Vec::new(), writes)?;
        run(py, None, || {
            with_engine!(&self.loaded, |m| {
                let mut caches: Vec<_> = (0..n).map(|_| m.new_cache()).collect();
                m.greedy(&mut caches, req, max_new)
            })
        })
    }
}

impl NativeModel {
    fn output<'py>(&self, py: Python<'py>, out: Output) -> PyResult<Bound<'py, PyDict>> {
        let hidden = self.hidden_size();
        let d = PyDict::new(py);
        if out.logits.is_empty() {
            d.set_item("logits", py.None())?;
        } else {
            let vocab = out.logits[0].values.len();
            d.set_item(
                "logit_index",
                index(out.logits.iter().map(|l| (l.row, l.pos))).into_pyarray(py),
            )?;
            let values = out.logits.into_iter().map(|l| l.values).collect();
            d.set_item("logits", matrix(values, vocab).into_pyarray(py))?;
        }
        // states come site by site: group them, keeping each site's order
        let states = PyDict::new(py);
        let mut sites: Vec<Site> = Vec::new();
        for s in &out.states {
            if !sites.contains(&s.site) {
                sites.push(s.site);
            }
        }
        let mut all = out.states;
        for site in sites {
            let (mine, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|s| s.site == site);
            all = rest;
            let idx = index(mine.iter().map(|s| (s.row, s.pos)));
            let values = matrix(mine.into_iter().map(|s| s.values).collect(), hidden);
            states.set_item(
                site.to_string(),
                (values.into_pyarray(py), idx.into_pyarray(py)),
            )?;
        }
        d.set_item("states", states)?;
        Ok(d)
    }
}
