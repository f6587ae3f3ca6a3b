//! `qwen-scope attributes`: attribute extraction (paper section 4.2) over relation files,
//! accuracy per (source layer, target layer), resumable.

use super::sweep::progress;
use anyhow::{ensure, Context, Result};
use qwen_scope::patchscope::attributes::{load_relation, parse_layers, Attributes, RowResult};
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
    /// At most this many rows per relation.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value = "results/attributes")]
    pub out: PathBuf,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    pub resume: bool,
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
    let exp = Attributes {
        model,
        source_layers: parse_layers(&a.source_layers, num_layers)?,
        target_layers: parse_layers(&a.target_layers, num_layers)?,
        max_new: a.max_new,
        only_correct: !a.all_rows,
    };
    ensure!(a.max_new > 0, "--max-new must be at least 1");
    let relations = a
        .relations
        .iter()
        .map(|p| load_relation(p, a.target.as_deref()))
        .collect::<qwen_scope::Result<Vec<_>>>()?;
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
    super::sweep::prepare_out(&a.out, &run, "rows.jsonl", a.resume)?;
    let (mut journal, mut done) = Journal::open::<Record>(&a.out.join("rows.jsonl"), !a.resume)?;
    let todo: Vec<(
        String,
        usize,
        &qwen_scope::patchscope::attributes::AttributeRow,
    )> = relations
        .iter()
        .flat_map(|r| {
            r.rows
                .iter()
                .enumerate()
                .take(a.limit.unwrap_or(usize::MAX))
                .map(move |(i, row)| (r.name.clone(), i, row))
        })
        .filter(|(name, i, _)| {
            !done
                .iter()
                .any(|d| &d.relation == name && d.result.row == *i)
        })
        .collect();
    let bar = progress(todo.len(), "rows");
    for (name, i, row) in todo {
        let result = exp
            .evaluate(i, row)
            .with_context(|| format!("relation {name}, row {i}"))?;
        let record = Record {
            relation: name,
            result,
        };
        journal.append(std::slice::from_ref(&record))?;
        done.push(record);
        bar.inc(1);
    }
    bar.finish_and_clear();
    done.sort_by(|x, y| (&x.relation, x.result.row).cmp(&(&y.relation, y.result.row)));
    report(&a.out, &run, &exp, &done, num_layers)
}

fn report<E: Engine>(
    out: &std::path::Path,
    run: &serde_json::Value,
    exp: &Attributes<E>,
    done: &[Record],
    num_layers: usize,
) -> Result<()> {
    let mut names: Vec<&str> = done.iter().map(|d| d.relation.as_str()).collect();
    names.dedup();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "relation",
        "source_layer",
        "target_layer",
        "evaluated",
        "accuracy",
    ])?;
    let mut summary = Vec::new();
    for name in names.iter().copied().chain(std::iter::once("all")) {
        let rows: Vec<&RowResult> = done
            .iter()
            .filter(|d| (name == "all" || d.relation == name) && d.result.evaluated)
            .map(|d| &d.result)
            .collect();
        let total = done
            .iter()
            .filter(|d| name == "all" || d.relation == name)
            .count();
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
        let file = format!(
            "accuracy_{}.png",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let title = format!("{name}: accuracy ({} of {total} rows known)", rows.len());
        let drawable: Vec<_> = cells.iter().copied().filter(|c| c.2.is_finite()).collect();
        plot::heatmap(&out.join(&file), &title, num_layers, &drawable)?;
        let best = cells.iter().copied().filter(|c| c.2.is_finite()).fold(
            None,
            |b: Option<(usize, usize, f64)>, c| match b {
                Some(b) if b.2 >= c.2 => Some(b),
                _ => Some(c),
            },
        );
        println!(
            "{name}: {} of {total} rows known unpatched; best accuracy {}",
            rows.len(),
            best.map_or("n/a".into(), |(s, t, v)| format!(
                "{v:.3} at source layer {s} -> target layer {t}"
            ))
        );
        summary.push(serde_json::json!({"relation": name, "rows": total, "evaluated": rows.len(), "accuracy": cells}));
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
