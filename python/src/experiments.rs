//! The experiments, run by the library's own runners (the CLI's code) and handed back as
//! columns: the Python side turns each dict of columns into a DataFrame.

use crate::errors::{run, Progress};
use crate::model::NativeModel;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use qwen_scope::data::Prompts;
use qwen_scope::patchscope::demonstrations::{Demonstrations, DEFAULT_K, DEFAULT_SEED};
use qwen_scope::patchscope::extraction::{Extraction, ExtractionSettings, Record};
use qwen_scope::patchscope::inspect::{inspect as run_inspect, InspectSettings, Inspection};
use qwen_scope::patchscope::mapping::load_affines;
use qwen_scope::patchscope::next_token::{PhaseTimes, SampleResult};
use qwen_scope::patchscope::sweep::{LensPositions, Sweep, SweepSettings};
use qwen_scope::report::accuracy::{self, RelationSummary};
use qwen_scope::report::summary::{self, LayerSummary};
use qwen_scope::{with_engine, Engine};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a sweep's prompts come from.
#[derive(FromPyObject)]
pub enum PromptSource {
    List(Vec<String>),
    File(PathBuf),
}

/// The next-token sweep (`qwen-scope sweep` without the results folder). Returns
/// {"samples": columns of samples.csv, "summary": columns of summary.csv}.
#[pyfunction]
#[pyo3(signature = (model, prompts, train, val, seed, grid, target_prompt, batch, lens_positions, reference, progress))]
#[allow(clippy::too_many_arguments)]
pub fn sweep<'py>(
    py: Python<'py>,
    model: &Bound<'py, NativeModel>,
    prompts: Option<PromptSource>,
    train: Option<usize>,
    val: Option<usize>,
    seed: u64,
    grid: bool,
    target_prompt: String,
    batch: usize,
    lens_positions: &str,
    reference: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let lens_positions = match lens_positions {
        "all" => LensPositions::All,
        "one" => LensPositions::One,
        other => {
            return Err(PyValueError::new_err(format!(
                "lens_positions={other:?}: use \"all\" or \"one\""
            )))
        }
    };
    let settings = SweepSettings {
        train,
        val,
        seed,
        grid,
        target_prompt,
        batch,
        lens_positions,
        reference,
    };
    let progress = Progress::new(progress);
    let native = model.get();
    let result = run(py, None, || {
        let prompts = match prompts {
            Some(PromptSource::List(p)) => Prompts::from_list(p),
            Some(PromptSource::File(f)) => Prompts::load(&f)?,
            None => Prompts::default_set(),
        };
        with_engine!(&native.loaded, |m| run_sweep(
            m, &prompts, settings, &progress
        ))
    });
    let (results, sum, tokens) = progress.finish(result)?;
    let d = PyDict::new(py);
    d.set_item("samples", samples_columns(py, &results, &tokens)?)?;
    d.set_item("summary", summary_columns(py, &sum)?)?;
    Ok(d)
}

/// Attribute extraction (`qwen-scope attributes` without the results folder). Returns
/// {"cells": one row per (row, source layer, target layer) evaluated, "rows": one row
/// per relation row, "summary": the columns of summary.csv}.
#[pyfunction]
#[pyo3(signature = (model, relations, target, source_layers, target_layers, max_new, all_rows, limit, batch, progress, demonstrations=DEFAULT_K, demo_seed=DEFAULT_SEED))]
#[allow(clippy::too_many_arguments)]
pub fn attributes<'py>(
    py: Python<'py>,
    model: &Bound<'py, NativeModel>,
    relations: Vec<PathBuf>,
    target: Option<String>,
    source_layers: String,
    target_layers: String,
    max_new: usize,
    all_rows: bool,
    limit: Option<usize>,
    batch: usize,
    progress: Option<Py<PyAny>>,
    demonstrations: usize,
    demo_seed: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let settings = ExtractionSettings {
        relations,
        target,
        demonstrations: Demonstrations {
            k: demonstrations,
            seed: demo_seed,
        },
        source_layers,
        target_layers,
        max_new,
        all_rows,
        limit,
        batch,
    };
    let progress = Progress::new(progress);
    let native = model.get();
    let result = run(py, None, || {
        with_engine!(&native.loaded, |m| run_attributes(m, settings, &progress))
    });
    let (records, layers, summaries) = progress.finish(result)?;
    let d = PyDict::new(py);
    d.set_item("cells", cells_columns(py, &records, &layers)?)?;
    d.set_item("rows", rows_columns(py, &records)?)?;
    d.set_item("summary", accuracy_columns(py, &summaries)?)?;
    Ok(d)
}

/// One patchscope by hand (`qwen-scope inspect`). Returns {"position", "source_token",
/// "patch_pos", "rows": columns source_layer, target_layer, text, tokens}.
#[pyfunction]
#[pyo3(signature = (model, source, position, target, layers, target_layer, max_new, mapping))]
#[allow(clippy::too_many_arguments)]
pub fn inspect<'py>(
    py: Python<'py>,
    model: &Bound<'py, NativeModel>,
    source: String,
    position: i64,
    target: String,
    layers: String,
    target_layer: Option<usize>,
    max_new: usize,
    mapping: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let native = model.get();
    let r: Inspection = run(py, None, || {
        let settings = InspectSettings {
            source,
            position,
            target,
            layers,
            target_layer,
            max_new,
            mapping: mapping.as_deref().map(load_affines).transpose()?,
        };
        with_engine!(&native.loaded, |m| run_inspect(m, &settings))
    })?;
    let d = PyDict::new(py);
    d.set_item("position", r.position)?;
    d.set_item("source_token", r.source_token)?;
    d.set_item("patch_pos", r.patch_pos)?;
    let rows = PyDict::new(py);
    rows.set_item(
        "source_layer",
        r.rows.iter().map(|x| x.source_layer).collect::<Vec<_>>(),
    )?;
    rows.set_item(
        "target_layer",
        r.rows.iter().map(|x| x.target_layer).collect::<Vec<_>>(),
    )?;
    rows.set_item(
        "text",
        r.rows.iter().map(|x| x.text.clone()).collect::<Vec<_>>(),
    )?;
    rows.set_item(
        "tokens",
        r.rows.into_iter().map(|x| x.tokens).collect::<Vec<_>>(),
    )?;
    d.set_item("rows", rows)?;
    Ok(d)
}

type SweepOut = (Vec<SampleResult>, Vec<LayerSummary>, BTreeMap<u32, String>);

/// What `qwen-scope sweep` computes, in the same order and by the same calls.
fn run_sweep<E: Engine>(
    model: &E,
    prompts: &Prompts,
    settings: SweepSettings,
    progress: &Progress,
) -> qwen_scope::Result<SweepOut> {
    let sweep = Sweep::new(model, prompts, settings)?;
    let (train, val) = (sweep.train_set.len(), sweep.val_set.len());
    let mut done = 0;
    progress.report("tuned lens", 0, train)?;
    let fit = sweep.fit_lens(&mut |n| {
        done += n;
        // a raised callback stops the run at the evaluation's first batch
        let _ = progress.report("tuned lens", done, train);
    })?;
    let experiment = sweep.experiment(fit.maps)?;
    let mut results = Vec::with_capacity(val);
    progress.report("evaluating", 0, val)?;
    sweep.evaluate(
        &experiment,
        &sweep.val_set,
        &mut PhaseTimes::default(),
        &mut |batch| {
            results.extend(batch);
            progress.report("evaluating", results.len(), val)
        },
    )?;
    results.sort_by_key(|r| r.index);
    let sum = summary::summarize(&results);
    // decoded like samples.csv: one token at a time, empty when it does not decode
    let mut tokens = BTreeMap::new();
    for r in &results {
        for t in
            std::iter::once(r.source_top1).chain(summary::cells(r).into_iter().map(|c| c.3.pred))
        {
            tokens
                .entry(t)
                .or_insert_with(|| model.tokenizer().decode(&[t]).unwrap_or_default());
        }
    }
    Ok((results, sum, tokens))
}

type AttributesOut = (Vec<Record>, (Vec<usize>, Vec<usize>), Vec<RelationSummary>);

/// What `qwen-scope attributes` computes, in the same order and by the same calls.
fn run_attributes<E: Engine>(
    model: &E,
    settings: ExtractionSettings,
    progress: &Progress,
) -> qwen_scope::Result<AttributesOut> {
    let ext = Extraction::new(model, settings)?;
    for r in &ext.relations {
        ext.check_targets(r)?;
    }
    let todo = ext.todo();
    let mut done: Vec<Record> = Vec::with_capacity(todo.len());
    progress.report("rows", 0, todo.len())?;
    for chunk in todo.chunks(ext.settings.batch) {
        let records = ext.evaluate(chunk).map_err(|e| match e {
            qwen_scope::Error::Input(m) => {
                qwen_scope::Error::Input(format!("{}: {m}", Extraction::<E>::describe(chunk)))
            }
            other => other,
        })?;
        done.extend(records);
        progress.report("rows", done.len(), todo.len())?;
    }
    done.sort_by(|x, y| (&x.relation, x.result.row).cmp(&(&y.relation, y.result.row)));
    let (sl, tl) = (ext.exp.source_layers.clone(), ext.exp.target_layers.clone());
    let summaries = accuracy::summarize(&accuracy::relation_names(&ext.relations), &done, &sl, &tl);
    Ok((done, (sl, tl), summaries))
}

fn samples_columns<'py>(
    py: Python<'py>,
    results: &[SampleResult],
    tokens: &BTreeMap<u32, String>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut c = SampleCols::default();
    for r in results {
        for (method, l, lt, cell) in summary::cells(r) {
            c.index.push(r.index);
            c.position.push(r.position);
            c.num_tokens.push(r.num_tokens);
            c.method.push(method);
            c.source_layer.push(l);
            c.target_layer.push(lt);
            c.source_top1.push(r.source_top1);
            c.source_token.push(tokens[&r.source_top1].as_str());
            c.pred.push(cell.pred);
            c.pred_token.push(tokens[&cell.pred].as_str());
            c.prec1.push(cell.prec1);
            c.surprisal.push(cell.surprisal as f64);
        }
    }
    let d = PyDict::new(py);
    d.set_item("index", c.index)?;
    d.set_item("position", c.position)?;
    d.set_item("num_tokens", c.num_tokens)?;
    d.set_item("method", c.method)?;
    d.set_item("source_layer", c.source_layer)?;
    d.set_item("target_layer", c.target_layer)?;
    d.set_item("source_top1", c.source_top1)?;
    d.set_item("source_token", c.source_token)?;
    d.set_item("pred", c.pred)?;
    d.set_item("pred_token", c.pred_token)?;
    d.set_item("prec1", c.prec1)?;
    d.set_item("surprisal", c.surprisal)?;
    Ok(d)
}

#[derive(Default)]
struct SampleCols<'a> {
    index: Vec<usize>,
    position: Vec<usize>,
    num_tokens: Vec<usize>,
    method: Vec<&'static str>,
    source_layer: Vec<usize>,
    target_layer: Vec<usize>,
    source_top1: Vec<u32>,
    source_token: Vec<&'a str>,
    pred: Vec<u32>,
    pred_token: Vec<&'a str>,
    prec1: Vec<bool>,
    surprisal: Vec<f64>,
}

/// Sets `d[name]` to one column: a value per record.
fn column<'py, 'r, R, T: IntoPyObject<'py>>(
    d: &Bound<'py, PyDict>,
    name: &str,
    records: &'r [R],
    value: impl Fn(&'r R) -> T,
) -> PyResult<()> {
    d.set_item(name, records.iter().map(value).collect::<Vec<_>>())
}

fn summary_columns<'py>(py: Python<'py>, sum: &[LayerSummary]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    column(&d, "method", sum, |s| s.method)?;
    column(&d, "source_layer", sum, |s| s.source_layer)?;
    column(&d, "target_layer", sum, |s| s.target_layer)?;
    column(&d, "samples", sum, |s| s.samples)?;
    column(&d, "precision_at_1", sum, |s| s.precision_at_1)?;
    column(&d, "surprisal", sum, |s| s.surprisal)?;
    Ok(d)
}

fn cells_columns<'py>(
    py: Python<'py>,
    records: &[Record],
    (sl, tl): &(Vec<usize>, Vec<usize>),
) -> PyResult<Bound<'py, PyDict>> {
    let (mut relation, mut row, mut source_layer, mut target_layer) =
        (vec![], vec![], vec![], vec![]);
    let (mut correct, mut generation) = (vec![], vec![]);
    for rec in records.iter().filter(|r| r.result.evaluated) {
        for (si, &ls) in sl.iter().enumerate() {
            for (ti, &lt) in tl.iter().enumerate() {
                relation.push(rec.relation.as_str());
                row.push(rec.result.row);
                source_layer.push(ls);
                target_layer.push(lt);
                correct.push(rec.result.correct[si][ti]);
                generation.push(rec.result.generations[si][ti].as_str());
            }
        }
    }
    let d = PyDict::new(py);
    d.set_item("relation", relation)?;
    d.set_item("row", row)?;
    d.set_item("source_layer", source_layer)?;
    d.set_item("target_layer", target_layer)?;
    d.set_item("correct", correct)?;
    d.set_item("generation", generation)?;
    Ok(d)
}

fn rows_columns<'py>(py: Python<'py>, records: &[Record]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    column(&d, "relation", records, |r| r.relation.as_str())?;
    column(&d, "row", records, |r| r.result.row)?;
    column(&d, "line", records, |r| r.result.line)?;
    column(&d, "subject", records, |r| r.result.subject.as_str())?;
    column(&d, "object", records, |r| r.result.object.as_str())?;
    column(&d, "baseline", records, |r| r.result.baseline.as_str())?;
    column(&d, "baseline_correct", records, |r| {
        r.result.baseline_correct
    })?;
    column(&d, "evaluated", records, |r| r.result.evaluated)?;
    column(&d, "skipped", records, |r| r.result.skipped.clone())?;
    // "subject => object" per demonstration, one line each ("" without them)
    column(&d, "demonstrations", records, |r| {
        r.result
            .demonstrations
            .iter()
            .map(|d| format!("{} => {}", d.subject, d.object))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(d)
}

fn accuracy_columns<'py>(
    py: Python<'py>,
    sums: &[RelationSummary],
) -> PyResult<Bound<'py, PyDict>> {
    let (mut relation, mut sl, mut tl, mut evaluated, mut acc) =
        (vec![], vec![], vec![], vec![], vec![]);
    for s in sums {
        for &(ls, lt, a) in &s.accuracy {
            relation.push(s.relation.as_str());
            sl.push(ls);
            tl.push(lt);
            evaluated.push(s.evaluated);
            acc.push(a);
        }
    }
    let d = PyDict::new(py);
    d.set_item("relation", relation)?;
    d.set_item("source_layer", sl)?;
    d.set_item("target_layer", tl)?;
    d.set_item("evaluated", evaluated)?;
    d.set_item("accuracy", acc)?;
    Ok(d)
}
