//! Per-sample and per-layer tables of a next-token sweep, as CSV and JSON.

use super::write_atomic;
use crate::error::{Error, Result};
use crate::patchscope::next_token::{Cell, SampleResult};
use serde::Serialize;
use std::path::Path;

pub const METHODS: [&str; 3] = ["token_identity", "logit_lens", "tuned_lens"];

/// Mean metrics of one method at one (source layer, target layer).
#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    pub method: &'static str,
    pub source_layer: usize,
    pub target_layer: usize,
    pub samples: usize,
    pub precision_at_1: f64,
    pub surprisal: f64,
}

/// Every (method, source layer, target layer, cell) of one sample. Lenses read out at the
/// last layer, so their target layer is L-1.
pub fn cells(r: &SampleResult) -> Vec<(&'static str, usize, usize, Cell)> {
    let num_layers = r.logit_lens.len();
    let mut out = Vec::new();
    for (l, row) in r.token_identity.iter().enumerate() {
        for (slot, &c) in row.iter().enumerate() {
            let target = if row.len() == 1 { l } else { slot };
            out.push((METHODS[0], l, target, c));
        }
    }
    for (m, lens) in [(METHODS[1], &r.logit_lens), (METHODS[2], &r.tuned_lens)] {
        for (l, &c) in lens.iter().enumerate() {
            out.push((m, l, num_layers - 1, c));
        }
    }
    out
}

/// Means over samples, in the order cells() lists them.
pub fn summarize(results: &[SampleResult]) -> Vec<LayerSummary> {
    let Some(first) = results.first() else {
        return Vec::new();
    };
    let mut sums: Vec<LayerSummary> = cells(first)
        .into_iter()
        .map(|(method, source_layer, target_layer, _)| LayerSummary {
            method,
            source_layer,
            target_layer,
            samples: 0,
            precision_at_1: 0.0,
            surprisal: 0.0,
        })
        .collect();
    for r in results {
        for (s, (_, _, _, c)) in sums.iter_mut().zip(cells(r)) {
            s.samples += 1;
            s.precision_at_1 += c.prec1 as u8 as f64;
            s.surprisal += c.surprisal as f64;
        }
    }
    for s in &mut sums {
        s.precision_at_1 /= s.samples as f64;
        s.surprisal /= s.samples as f64;
    }
    sums
}

/// samples.csv: one row per (sample, method, source layer, target layer).
pub fn write_samples_csv(
    path: &Path,
    results: &[SampleResult],
    decode: &dyn Fn(u32) -> String,
) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "index",
        "position",
        "num_tokens",
        "method",
        "source_layer",
        "target_layer",
        "source_top1",
        "source_token",
        "pred",
        "pred_token",
        "prec1",
        "surprisal",
    ];
    let csv_err = |e: csv::Error| Error::input(format!("{}: {e}", path.display()));
    w.write_record(header).map_err(csv_err)?;
    for r in results {
        let source_token = decode(r.source_top1);
        for (method, l, lt, c) in cells(r) {
            w.write_record([
                r.index.to_string(),
                r.position.to_string(),
                r.num_tokens.to_string(),
                method.to_string(),
                l.to_string(),
                lt.to_string(),
                r.source_top1.to_string(),
                source_token.clone(),
                c.pred.to_string(),
                decode(c.pred),
                (c.prec1 as u8).to_string(),
                format!("{:.6}", c.surprisal),
            ])
            .map_err(csv_err)?;
        }
    }
    let bytes = w.into_inner().map_err(|e| Error::input(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// The samples.csv of a run split into parts (shards, in order): their rows, one header.
pub fn merge_samples_csv(path: &Path, parts: &[std::path::PathBuf]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Option<csv::ByteRecord> = None;
    for part in parts {
        let csv_err = |e: csv::Error| Error::input(format!("{}: {e}", part.display()));
        let mut r = csv::Reader::from_path(part).map_err(csv_err)?;
        let h = r.byte_headers().map_err(csv_err)?.clone();
        match &header {
            None => {
                w.write_byte_record(&h).map_err(csv_err)?;
                header = Some(h);
            }
            Some(first) if *first != h => {
                return Err(Error::input(format!(
                    "{}: other columns than {}",
                    part.display(),
                    parts[0].display()
                )))
            }
            Some(_) => {}
        }
        for record in r.byte_records() {
            w.write_byte_record(&record.map_err(csv_err)?)
                .map_err(csv_err)?;
        }
    }
    let bytes = w.into_inner().map_err(|e| Error::input(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// summary.csv: the per-layer means.
pub fn write_summary_csv(path: &Path, summary: &[LayerSummary]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for s in summary {
        w.serialize(s)
            .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    }
    let bytes = w.into_inner().map_err(|e| Error::input(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// summary.json: the run description and the per-layer means.
pub fn write_summary_json(
    path: &Path,
    run: &serde_json::Value,
    summary: &[LayerSummary],
) -> Result<()> {
    let json = serde_json::json!({ "run": run, "summary": summary });
    write_atomic(path, &serde_json::to_vec_pretty(&json).expect("json"))
}
