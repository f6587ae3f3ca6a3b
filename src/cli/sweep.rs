//! `qwen-scope sweep`: the next-token experiment (paper section 4.1) over every layer,
//! with a resumable journal, CSV/JSON tables and plots.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use qwen_scope::data::Prompts;
use qwen_scope::patchscope::mapping::{load_affines, save_affines, Affine};
use qwen_scope::patchscope::next_token::{PhaseTimes, SampleResult};
pub use qwen_scope::patchscope::sweep::LensPositions;
use qwen_scope::patchscope::sweep::{Sweep, SweepSettings};
use qwen_scope::report::{journal::Journal, plot, shard::Shard, summary};
use qwen_scope::Engine;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Clone)]
pub struct SweepArgs {
    /// Prompts (.txt one per line, or .jsonl with {"text": ...}); default: the 300
    /// sentences shipped with qwen-scope.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Prompts used to fit the tuned lens (the first ones in the file). Default: half.
    #[arg(long)]
    pub train: Option<usize>,
    /// Prompts evaluated (the ones after the training prompts). Default: the rest.
    #[arg(long)]
    pub val: Option<usize>,
    /// Seed of the source positions.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Evaluate every (source layer, target layer) pair, not only the same layer.
    #[arg(long)]
    pub grid: bool,
    /// Target prompt of the token-identity patchscope, patched at its last token.
    #[arg(long, default_value = qwen_scope::patchscope::TOKEN_IDENTITY_PROMPT)]
    pub target_prompt: String,
    /// Results folder.
    #[arg(long, default_value = "results/sweep")]
    pub out: PathBuf,
    /// Continue an interrupted run in --out (same settings) instead of starting over.
    #[arg(long)]
    pub resume: bool,
    /// Source prompts per batch (one journal flush per batch).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tuned-lens training rows: `one` seeded position per training prompt (the official
    /// code, which has 10k texts), or `all` positions (enough rows for a determined fit
    /// from a few hundred prompts).
    #[arg(long, value_enum, default_value_t = LensPositions::All)]
    pub lens_positions: LensPositions,
    /// Use the reference path (one whole target forward per cell) instead of the fast one.
    #[arg(long)]
    pub reference: bool,
    /// Evaluate only shard K of N (counted from 0): a contiguous part of the evaluated
    /// prompts, in whole batches; `qwen-scope merge` joins the N shard folders into the
    /// results of the whole run. Every shard fits the tuned lens itself.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
}

impl SweepArgs {
    fn settings(&self) -> SweepSettings {
        SweepSettings {
            train: self.train,
            val: self.val,
            seed: self.seed,
            grid: self.grid,
            target_prompt: self.target_prompt.clone(),
            batch: self.batch,
            lens_positions: self.lens_positions,
            reference: self.reference,
        }
    }
}

pub fn sweep<E: Engine>(model: &E, run_model: &super::RunModel, a: &SweepArgs) -> Result<()> {
    let prompts = match &a.prompts {
        Some(p) => Prompts::load(p)?,
        None => Prompts::default_set(),
    };
    let (train, val) = a.settings().split(&prompts)?;
    let mut run = serde_json::json!({
        "experiment": "next_token",
        "model": run_model.record(),
        "device": model.hardware(),
        "num_layers": model.num_layers(),
        "prompts": a.prompts.as_ref().map(|p| p.display().to_string()).unwrap_or("default".into()),
        "prompts_digest": digest(&prompts.texts[..train + val]),
        "train": train,
        "val": val,
        "seed": a.seed,
        "grid": a.grid,
        "target_prompt": a.target_prompt,
        "lens_positions": if a.lens_positions == LensPositions::All { "all" } else { "one" },
        "path": if a.reference { "reference" } else { "fast" },
        "batch": a.batch,
    });
    let mine = super::shard_part(a.shard, val, a.batch, "prompts", &mut run);
    super::prepare_out(&a.out, &run, "samples.jsonl", a.resume)?;

    let sweep = Sweep::new(model, &prompts, a.settings())?;
    let tuned = tuned_lens(&sweep, a, &a.out.join("tuned_lens.safetensors"))?;
    let experiment = sweep.experiment(tuned)?;

    let (mut journal, mut results) =
        Journal::open::<SampleResult>(&a.out.join("samples.jsonl"), !a.resume)?;
    let done: std::collections::HashSet<usize> = results.iter().map(|r| r.index).collect();
    let todo: Vec<(usize, Vec<u32>)> = sweep.val_set[mine.clone()]
        .iter()
        .filter(|(i, _)| !done.contains(i))
        .cloned()
        .collect();
    if !done.is_empty() {
        eprintln!(
            "resuming: {} of {} samples already done",
            done.len(),
            mine.len()
        );
    }
    let bar = progress(todo.len(), &shard_label("evaluating", a.shard));
    let started = Instant::now();
    let mut times = PhaseTimes::default();
    sweep.evaluate(&experiment, &todo, &mut times, &mut |batch| {
        journal.append(&batch)?;
        bar.inc(batch.len() as u64);
        results.extend(batch);
        Ok(())
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let cells_per_sample = results.first().map_or(0, |r| summary::cells(r).len());
    eprintln!(
        "evaluated {} samples ({} cells) in {secs:.1}s: {:.1} cells/s",
        todo.len(),
        todo.len() * cells_per_sample,
        (todo.len() * cells_per_sample) as f64 / secs.max(1e-9)
    );
    if !a.reference && !todo.is_empty() {
        report_phases(&times, todo.len(), model.num_layers(), a.grid);
    }
    results.sort_by_key(|r| r.index);
    if results.is_empty() {
        // a shard that owns no prompts: its folder records that, for the merge
        return Ok(());
    }
    let decode = |t: u32| model.tokenizer().decode(&[t]).unwrap_or_default();
    summary::write_samples_csv(&a.out.join("samples.csv"), &results, &decode)?;
    write_summaries(&a.out, &run, &results)
}

/// A progress bar's message, naming the shard where there is one.
pub fn shard_label(what: &str, shard: Option<Shard>) -> String {
    match shard {
        Some(s) => format!("shard {s}: {what}"),
        None => what.to_string(),
    }
}

/// Prints where the fast path's time went, and the token-identity patchscope's own
/// throughput: its cells over the source passes plus its batched target passes.
fn report_phases(t: &PhaseTimes, samples: usize, num_layers: usize, grid: bool) {
    let ti_cells = samples * num_layers * if grid { num_layers } else { 1 };
    let ti_secs = (t.sources + t.token_identity).as_secs_f64();
    eprintln!(
        "time by phase: source passes {:.2}s, token identity {:.2}s, logit lens {:.2}s, tuned lens {:.2}s",
        t.sources.as_secs_f64(),
        t.token_identity.as_secs_f64(),
        t.logit_lens.as_secs_f64(),
        t.tuned_lens.as_secs_f64()
    );
    eprintln!(
        "token identity alone: {ti_cells} cells in {ti_secs:.3}s (source passes included): {:.1} cells/s",
        ti_cells as f64 / ti_secs.max(1e-9)
    );
}

/// Fits the tuned lens on the training prompts, or reloads the fit of the run being resumed.
fn tuned_lens<E: Engine>(sweep: &Sweep<E>, a: &SweepArgs, path: &Path) -> Result<Vec<Affine>> {
    if a.resume && path.exists() {
        return Ok(load_affines(path)?);
    }
    let bar = progress(
        sweep.train_set.len(),
        &shard_label("tuned lens: training passes", a.shard),
    );
    let fit = sweep.fit_lens(&mut |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let (n, unknowns) = (fit.rows, fit.unknowns);
    if n < unknowns {
        eprintln!(
            "warning: the tuned lens is under-determined ({n} training rows for {unknowns} unknowns per output): \
             its fit interpolates the training rows; use more --train prompts or --lens-positions all"
        );
    }
    eprintln!(
        "tuned lens: fitted {} affine maps on {n} rows in {:.1}s",
        fit.maps.len(),
        fit.fit_time.as_secs_f64()
    );
    save_affines(path, &fit.maps)?;
    Ok(fit.maps)
}

/// The tables and plots of a run's results (samples.csv aside, which needs the tokenizer),
/// from its run record: the whole run's after a merge, or one shard's.
pub fn write_summaries(
    out: &Path,
    run: &serde_json::Value,
    results: &[SampleResult],
) -> Result<()> {
    let grid = run["grid"].as_bool().unwrap_or(false);
    let num_layers = run["num_layers"].as_u64().unwrap_or(0) as usize;
    let sum = summary::summarize(results);
    summary::write_summary_csv(&out.join("summary.csv"), &sum)?;
    summary::write_summary_json(&out.join("summary.json"), run, &sum)?;
    let title = format!(
        "next-token decoding: {}",
        run["model"]["name"].as_str().unwrap_or("")
    );
    plot::layer_curves(&out.join("next_token.png"), &title, &sum)?;
    if grid {
        let cells: Vec<(usize, usize, f64)> = sum
            .iter()
            .filter(|s| s.method == summary::METHODS[0])
            .map(|s| (s.source_layer, s.target_layer, s.precision_at_1))
            .collect();
        let title = "token identity precision@1";
        plot::heatmap(&out.join("grid_precision.png"), title, num_layers, &cells)?;
    }
    print_table(&sum);
    eprintln!("results in {}", out.display());
    Ok(())
}

fn print_table(sum: &[summary::LayerSummary]) {
    println!("layer  token-identity p@1  surprisal | logit-lens p@1  surprisal | tuned-lens p@1  surprisal");
    let find = |m: &str, l: usize, same: bool| {
        sum.iter()
            .find(|s| s.method == m && s.source_layer == l && (!same || s.target_layer == l))
    };
    let layers = sum.iter().map(|s| s.source_layer + 1).max().unwrap_or(0);
    for l in 0..layers {
        let mut line = format!("{l:>5}");
        for (m, same) in [
            ("token_identity", true),
            ("logit_lens", false),
            ("tuned_lens", false),
        ] {
            if let Some(s) = find(m, l, same) {
                line += &format!("  {:>16.3}  {:>9.3} |", s.precision_at_1, s.surprisal);
            }
        }
        println!("{}", line.trim_end_matches(" |"));
    }
}

/// A progress bar on stderr; bars made at once (the shards of several GPUs) share the
/// screen, one line each.
pub fn progress(len: usize, what: &str) -> ProgressBar {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    let bar = BARS
        .get_or_init(indicatif::MultiProgress::new)
        .add(ProgressBar::new(len as u64));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A stable fingerprint of the prompts, so --resume refuses a changed prompt file.
fn digest(prompts: &[String]) -> String {
    let mut h = qwen_scope::digest::Fnv64::default();
    for p in prompts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    h.hex()
}
