//! `qwen-scope attributes`: attribute extraction (paper section 4.2) over relation files,
//! accuracy per (source layer, target layer), resumable.

use super::sweep::{progress, shard_label};
use anyhow::{Context, Result};
use qwen_scope::patchscope::demonstrations::{self, Demonstrations};
use qwen_scope::patchscope::extraction::{Extraction, ExtractionSettings, Record, Todo};
use qwen_scope::patchscope::relations::describe_dropped;
use qwen_scope::report::accuracy::{self, RelationSummary};
use qwen_scope::report::{journal::Journal, plot, shard::Shard, write_atomic};
use qwen_scope::Engine;
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct AttributesArgs {
    /// Relation files: LRE JSON (.json) or the official preprocessed TSVs (.tsv).
    #[arg(long, required = true, num_args = 1..)]
    pub relations: Vec<PathBuf>,
    /// Target prompt with the placeholder "x" (default: from each relation).
    #[arg(long)]
    pub target: Option<String>,
    /// Demonstrations before each LRE query: K other samples of the relation written with
    /// its template (never the row's own subject or object), then the template with "x";
    /// the source gets them too where the template starts with its slot, and a generation
    /// is correct iff its first line holds the object as whole words. Used where neither
    /// --target nor the file's target_templates give the target; 0: the template cut at its
    /// slot, without them.
    #[arg(long, default_value_t = demonstrations::DEFAULT_K, value_name = "K")]
    pub demonstrations: usize,
    /// Seed of the order in which each relation's samples are drawn as demonstrations.
    #[arg(long, default_value_t = demonstrations::DEFAULT_SEED, value_name = "S")]
    pub demo_seed: u64,
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
    /// Evaluate only shard K of N (counted from 0): a contiguous part of the rows of all
    /// the relation files, in whole batches; `qwen-scope merge` joins the N shard folders
    /// into the results of the whole run.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
}

impl AttributesArgs {
    fn settings(&self) -> ExtractionSettings {
        ExtractionSettings {
            relations: self.relations.clone(),
            target: self.target.clone(),
            demonstrations: Demonstrations {
                k: self.demonstrations,
                seed: self.demo_seed,
            },
            source_layers: self.source_layers.clone(),
            target_layers: self.target_layers.clone(),
            max_new: self.max_new,
            all_rows: self.all_rows,
            limit: self.limit,
            batch: self.batch,
        }
    }
}

pub fn attributes<E: Engine>(
    model: &E,
    run_model: &super::RunModel,
    a: &AttributesArgs,
) -> Result<()> {
    let num_layers = model.num_layers();
    let ext = Extraction::new(model, a.settings())?;
    let exp = &ext.exp;
    for r in &ext.relations {
        eprintln!(
            "{}: {} rows to evaluate; dropped: {}",
            r.name,
            r.rows.len(),
            r.describe_dropped()
        );
        if let Some((query, sets)) = ext.demonstration_sets(r) {
            let d = ext.settings.demonstrations;
            let first = sets.first().map_or(0, |(s, _)| s.len());
            let others: usize = sets.iter().skip(1).map(|(_, n)| n).sum();
            eprintln!(
                "{}: {first} demonstrations (seed {}) before {query:?}{}",
                r.name,
                d.seed,
                if others > 0 {
                    format!(
                        "; {others} rows meet one of them and get others ({} sets)",
                        sets.len()
                    )
                } else {
                    String::new()
                }
            );
        }
        // every target prompt is checked (and run once) before the results folder exists
        ext.check_targets(r)?;
    }
    let all = ext.todo();
    let mut run = serde_json::json!({
        "experiment": "attributes",
        "model": run_model.record(),
        "device": model.hardware(),
        "num_layers": num_layers,
        "relations": a.relations.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "relations_fingerprints": a.relations.iter().map(|p| qwen_scope::digest::file_fingerprint(p)).collect::<qwen_scope::Result<Vec<_>>>()?,
        "target": a.target,
        "demonstrations": ext.demonstrations_record(),
        "source_layers": exp.source_layers,
        "target_layers": exp.target_layers,
        "max_new": a.max_new,
        "only_correct": exp.only_correct,
        "limit": a.limit,
        "batch": a.batch,
    });
    let mine = super::shard_part(a.shard, all.len(), a.batch, "rows", &mut run);
    super::prepare_out(&a.out, &run, "rows.jsonl", a.resume)?;
    let journal_path = a.out.join("rows.jsonl");
    let (mut journal, mut done) = Journal::open::<Record>(&journal_path, !a.resume)?;
    let finished: std::collections::HashSet<(&str, usize)> = done
        .iter()
        .map(|d| (d.relation.as_str(), d.result.row))
        .collect();
    // each row with its place in the whole run, which fixes the batch it is evaluated in
    let todo: Vec<(usize, Todo)> = mine
        .clone()
        .map(|place| (place, all[place]))
        .filter(|(_, (name, row, _))| !finished.contains(&(*name, *row)))
        .collect();
    let bar = progress(todo.len(), &shard_label("rows", a.shard));
    let fresh = done.is_empty();
    let started = std::time::Instant::now();
    let mut cells = 0;
    for chunk in todo.chunk_by(|x, y| x.0 / a.batch == y.0 / a.batch) {
        let chunk: Vec<Todo> = chunk.iter().map(|&(_, row)| row).collect();
        let chunk = &chunk[..];
        let records = ext
            .evaluate(chunk)
            .with_context(|| Extraction::<E>::describe(chunk));
        let records = match records {
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
        cells += ext.cells(&records);
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
    let summary = accuracy::summarize(
        &accuracy::relation_names(&ext.relations),
        &done,
        &exp.source_layers,
        &exp.target_layers,
    );
    report(&a.out, &run, &summary, num_layers)
}

pub fn report(
    out: &std::path::Path,
    run: &serde_json::Value,
    summaries: &[RelationSummary],
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
    for s in summaries {
        let name = s.relation.as_str();
        for &(ls, lt, acc) in &s.accuracy {
            w.write_record([
                name.to_string(),
                ls.to_string(),
                lt.to_string(),
                s.evaluated.to_string(),
                format!("{acc:.6}"),
            ])?;
        }
        println!(
            "{name}: {} of {} rows known unpatched, {} evaluated{}; dropped from the file: {}; best accuracy {}",
            s.known_unpatched,
            s.rows,
            s.evaluated,
            if s.skipped > 0 { format!(" ({} skipped: no source token)", s.skipped) } else { String::new() },
            describe_dropped(&s.dropped),
            s.best().map_or("n/a (no row evaluated)".into(), |(s, t, v)| format!(
                "{v:.3} at source layer {s} -> target layer {t}"
            ))
        );
        if s.evaluated > 0 {
            let file = format!(
                "accuracy_{}.png",
                name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            );
            let title = format!("{name}: accuracy over {} rows", s.evaluated);
            plot::heatmap(&out.join(&file), &title, num_layers, &s.accuracy)?;
        }
        summary.push(serde_json::json!({
            "relation": name,
            "rows": s.rows,
            "known_unpatched": s.known_unpatched,
            "evaluated": s.evaluated,
            "skipped": s.skipped,
            "dropped": s.dropped,
            "accuracy": s.accuracy,
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
