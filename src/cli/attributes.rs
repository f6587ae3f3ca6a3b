//! `qwen-scope attributes`: attribute extraction (paper section 4.2) over relation files,
//! accuracy per (source layer, target layer), resumable.

use super::sweep::progress;
use anyhow::{ensure, Context, Result};
use qwen_scope::patchscope::attributes::{parse_layers, Attributes, RowResult};
use qwen_scope::patchscope::relations::{describe_dropped, load_relation, AttributeRow, Relation};
use qwen_scope::report::{journal::Journal, plot, write_atomic};
use qwen_scope::Engine;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct AttributesArgs {
    /// Relation files: LRE JSON (.json) or the official preprocessed TSVs (.tsv).
    #[arg(long, required = true, num_args = 1..)]
    pub relations: Vec<PathBuf>,
    /// Target prompt with the placeholder "x" (default: from each relation).
    #[arg(long)]
    pub target: Option<String>,
    /// Source layers: all, 3, 0-5, 0,4,8-10, 0-23:4.
    #[arg(long, default_value = "all")]
    pub source_layers: String,
    /// Target layers, same syntax.
    #[arg(long, default_value = "all")]
    pub target_layers: String,
    /// Greedy tokens generated per cell (the official runs use 10).
    #[arg(long, default_value_t = 10)]
    pub max_new: usize,
    /// Evaluate rows the model gets wrong without patching too (the official runs drop them).
    #[arg(long)]
    pub all_rows: bool,
    /// Only the first N kept rows of each relation file, in file order.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value = "results/attributes")]
    pub out: PathBuf,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    pub resume: bool,
    /// Rows evaluated together (their cells share generations; one journal flush each).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

#[derive(Serialize, Deserialize)]
struct Record {
    relation: String,
    #[serde(flatten)]
    result: RowResult,
}

pub fn attributes<E: Engine>(
    model: &E,
    run_model: &super::RunModel,
    a: &AttributesArgs,
) -> Result<()> {
    let num_layers = model.num_layers();
    ensure!(a.max_new > 0, "--max-new must be at least 1");
    ensure!(a.limit != Some(0), "--limit must be at least 1");
    ensure!(a.batch > 0, "--batch must be at least 1");
    let exp = Attributes::new(
        model,
        parse_layers(&a.source_layers, num_layers)?,
        parse_layers(&a.target_layers, num_layers)?,
        a.max_new,
        !a.all_rows,
    );
    let relations = a
        .relations
        .iter()
        .map(|p| load_relation(p, a.target.as_deref()))
        .collect::<qwen_scope::Result<Vec<_>>>()?;
    for r in &relations {
        eprintln!(
            "{}: {} rows to evaluate; dropped: {}",
            r.name,
            r.rows.len(),
            describe_dropped(&r.dropped)
        );
        // every target prompt is checked (and run once) before the results folder exists
        for row in r.rows.iter().take(a.limit.unwrap_or(usize::MAX)) {
            exp.target(&row.target)
                .with_context(|| format!("relation {}, line {}", r.name, row.line))?;
        }
    }
    let run = serde_json::json!({
        "experiment": "attributes",
        "model": run_model.record(),
        "device": model.describe(),
        "relations": a.relations.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "target": a.target,
        "source_layers": exp.source_layers,
        "target_layers": exp.target_layers,
        "max_new": a.max_new,
        "only_correct": exp.only_correct,
        "limit": a.limit,
    });
    super::prepare_out(&a.out, &run, "rows.jsonl", a.resume)?;
    let journal_path = a.out.join("rows.jsonl");
    let (mut journal, mut done) = Journal::open::<Record>(&journal_path, !a.resume)?;
    let todo: Vec<(&str, usize, &AttributeRow)> = relations
        .iter()
        .flat_map(|r| {
            r.rows
                .iter()
                .enumerate()
                .take(a.limit.unwrap_or(usize::MAX))
                .map(move |(i, row)| (r.name.as_str(), i, row))
        })
        .filter(|(name, i, _)| {
            !done
                .iter()
                .any(|d| d.relation == *name && d.result.row == *i)
        })
        .collect();
    let bar = progress(todo.len(), "rows");
    let fresh = done.is_empty();
    let started = std::time::Instant::now();
    let mut cells = 0;
    for chunk in todo.chunks(a.batch) {
        let rows: Vec<(usize, &AttributeRow)> = chunk.iter().map(|&(_, i, row)| (i, row)).collect();
        let results = exp.evaluate(&rows).with_context(|| {
            let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
            format!(
                "relation {} line {} .. relation {} line {}",
                first.0, first.2.line, last.0, last.2.line
            )
        });
        let results = match results {
            Ok(r) => r,
            Err(e) => {
                // a run that failed before its first row leaves no folder behind it
                if fresh && done.is_empty() {
                    drop(journal);
                    let _ = std::fs::remove_file(&journal_path);
                    let _ = std::fs::remove_file(a.out.join("run.json"));
                    let _ = std::fs::remove_dir(&a.out);
                }
                return Err(e);
            }
        };
        let records: Vec<Record> = chunk
            .iter()
            .zip(results)
            .map(|(&(name, _, _), result)| Record {
                relation: name.to_string(),
                result,
            })
            .collect();
        cells += records.iter().filter(|r| r.result.evaluated).count()
            * exp.source_layers.len()
            * exp.target_layers.len();
        journal.append(&records)?;
        done.extend(records);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "evaluated {} rows ({cells} cells, baselines and source passes included) in {secs:.1}s: {:.2} cells/s",
        todo.len(),
        cells as f64 / secs.max(1e-9)
    );
    done.sort_by(|x, y| (&x.relation, x.result.row).cmp(&(&y.relation, y.result.row)));
    report(&a.out, &run, &exp, &relations, &done, num_layers)
}

fn report<E: Engine>(
    out: &std::path::Path,
    run: &serde_json::Value,
    exp: &Attributes<E>,
    relations: &[Relation],
    done: &[Record],
    num_layers: usize,
) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "relation",
        "source_layer",
        "target_layer",
        "evaluated",
        "accuracy",
    ])?;
    let mut summary = Vec::new();
    let names = relations
        .iter()
        .map(|r| Some(r.name.as_str()))
        .chain(std::iter::once(None));
    for name in names {
        let mine: Vec<&RowResult> = done
            .iter()
            .filter(|d| name.is_none_or(|n| d.relation == n))
            .map(|d| &d.result)
            .collect();
        let rows: Vec<&RowResult> = mine.iter().copied().filter(|r| r.evaluated).collect();
        let known = mine.iter().filter(|r| r.baseline_correct).count();
        let skipped = mine.iter().filter(|r| r.skipped.is_some()).count();
        let mut dropped = qwen_scope::patchscope::relations::Dropped::new();
        for r in relations
            .iter()
            .filter(|r| name.is_none_or(|n| r.name == n))
        {
            for (reason, n) in &r.dropped {
                *dropped.entry(reason.clone()).or_default() += n;
            }
        }
        let name = name.unwrap_or("all");
        let mut cells = Vec::new();
        for (si, &ls) in exp.source_layers.iter().enumerate() {
            for (ti, &lt) in exp.target_layers.iter().enumerate() {
                let hits = rows.iter().filter(|r| r.correct[si][ti]).count();
                let acc = if rows.is_empty() {
                    f64::NAN
                } else {
                    hits as f64 / rows.len() as f64
                };
                w.write_record([
                    name.to_string(),
                    ls.to_string(),
                    lt.to_string(),
                    rows.len().to_string(),
                    format!("{acc:.6}"),
                ])?;
                cells.push((ls, lt, acc));
            }
        }
        let best = cells.iter().copied().filter(|c| c.2.is_finite()).fold(
            None,
            |b: Option<(usize, usize, f64)>, c| match b {
                Some(b) if b.2 >= c.2 => Some(b),
                _ => Some(c),
            },
        );
        println!(
            "{name}: {known} of {} rows known unpatched, {} evaluated{}; dropped from the file: {}; best accuracy {}",
            mine.len(),
            rows.len(),
            if skipped > 0 { format!(" ({skipped} skipped: no source token)") } else { String::new() },
            describe_dropped(&dropped),
            best.map_or("n/a (no row evaluated)".into(), |(s, t, v)| format!(
                "{v:.3} at source layer {s} -> target layer {t}"
            ))
        );
        if !rows.is_empty() {
            let file = format!(
                "accuracy_{}.png",
                name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            );
            let title = format!("{name}: accuracy over {} rows", rows.len());
            plot::heatmap(&out.join(&file), &title, num_layers, &cells)?;
        }
        summary.push(serde_json::json!({
            "relation": name,
            "rows": mine.len(),
            "known_unpatched": known,
            "evaluated": rows.len(),
            "skipped": skipped,
            "dropped": dropped,
            "accuracy": cells,
        }));
    }
    write_atomic(&out.join("summary.csv"), &w.into_inner()?)?;
    let json = serde_json::json!({"run": run, "summary": summary});
    write_atomic(
        &out.join("summary.json"),
        &serde_json::to_vec_pretty(&json)?,
    )?;
    eprintln!("results in {}", out.display());
    Ok(())
}
