//! `qwen-scope merge OUT SHARD...`: joins the folders of a run split with `--shard K/N`
//! into the results folder the unsharded run writes, byte for byte: the shards' journals
//! and samples.csv rows concatenated in shard order (each shard owns a contiguous part, in
//! order), and the tables and plots made from them by the code the unsharded run uses.
//! It refuses shards of different runs, settings, models, versions or splits, shards that
//! are missing, given twice or unfinished, and shards whose tuned lenses differ.

use anyhow::{bail, Context, Result};
use qwen_scope::patchscope::extraction::Record;
use qwen_scope::patchscope::next_token::SampleResult;
use qwen_scope::patchscope::relations::Dropped;
use qwen_scope::report::{accuracy, journal, shard::Shard, write_atomic};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One shard folder, read and checked on its own.
struct ShardDir {
    dir: PathBuf,
    run: serde_json::Value,
    shard: Shard,
    units: Range<usize>,
}

impl ShardDir {
    fn read(dir: &Path) -> Result<ShardDir> {
        let file = dir.join("run.json");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "{}: no run record ({}): not a results folder, or its task never started",
                dir.display(),
                file.display()
            )
        })?;
        let mut run: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a qwen-scope run record", file.display()))?;
        let record = run
            .as_object_mut()
            .and_then(|r| r.remove("shard"))
            .with_context(|| {
                format!(
                    "{} holds a whole run, not a shard (made without --shard)",
                    dir.display()
                )
            })?;
        let batch = run["batch"].as_u64().unwrap_or(0) as usize;
        let (shard, units) = Shard::from_record(&record, batch)
            .with_context(|| format!("{}: its run.json", dir.display()))?;
        Ok(ShardDir {
            dir: dir.to_path_buf(),
            run,
            shard,
            units,
        })
    }

    fn name(&self) -> String {
        format!("shard {} ({})", self.shard, self.dir.display())
    }

    /// The journal's lines and records, all of this shard's units.
    fn journal<T: serde::de::DeserializeOwned>(
        &self,
        file: &str,
        what: &str,
    ) -> Result<Vec<(String, T)>> {
        let path = self.dir.join(file);
        let lines = if path.exists() {
            journal::read::<T>(&path)?
        } else {
            Vec::new()
        };
        if lines.len() != self.units.len() {
            bail!(
                "{} is unfinished: {} of its {} {what} done; rerun it with --resume (it keeps \
                 what is done), then merge again",
                self.name(),
                lines.len(),
                self.units.len()
            );
        }
        Ok(lines)
    }

    /// A file the shard writes after its journal is whole.
    fn report(&self, file: &str) -> Result<PathBuf> {
        let path = self.dir.join(file);
        if !path.exists() {
            bail!(
                "{} stopped before writing {file}: rerun it with --resume, then merge again",
                self.name()
            );
        }
        Ok(path)
    }
}

pub fn merge(out: &Path, dirs: &[PathBuf]) -> Result<()> {
    let shards = dirs
        .iter()
        .map(|d| ShardDir::read(d))
        .collect::<Result<Vec<_>>>()?;
    let shards = one_split(shards)?;
    check_out(out, &shards)?;
    let run = &shards[0].run;
    eprintln!(
        "merging {} shards of the experiment {} into {}",
        shards.len(),
        run["experiment"].as_str().unwrap_or("?"),
        out.display()
    );
    match run["experiment"].as_str() {
        Some("next_token") => merge_sweep(out, &shards),
        Some("attributes") => merge_attributes(out, &shards),
        other => bail!("cannot merge runs of the experiment {other:?}"),
    }
}

/// The shards in order, one of each, all of one run; or why not.
fn one_split(shards: Vec<ShardDir>) -> Result<Vec<ShardDir>> {
    let first = &shards[0];
    for s in &shards[1..] {
        if s.run["experiment"] != first.run["experiment"] {
            let kind = |s: &ShardDir| s.run["experiment"].as_str().unwrap_or("?").to_string();
            bail!(
                "{} holds the experiment {}, {} the experiment {}: not shards of one run",
                first.name(),
                kind(first),
                s.name(),
                kind(s)
            );
        }
        let changed = super::differences(&first.run, &s.run, ("the first", "this one"));
        if !changed.is_empty() {
            bail!(
                "{} and {} are not shards of one run (they differ in settings, model files, \
                 version or hardware):\n{}",
                first.name(),
                s.name(),
                changed.join("\n")
            );
        }
        if s.shard.count != first.shard.count {
            bail!(
                "{} and {} split the run differently (into {} and {} shards)",
                first.name(),
                s.name(),
                first.shard.count,
                s.shard.count
            );
        }
    }
    let count = first.shard.count;
    let mut by_index: BTreeMap<usize, ShardDir> = BTreeMap::new();
    for s in shards {
        if let Some(twin) = by_index.get(&s.shard.index) {
            bail!(
                "shard {} given twice: {} and {}",
                s.shard,
                twin.dir.display(),
                s.dir.display()
            );
        }
        by_index.insert(s.shard.index, s);
    }
    let missing: Vec<String> = (0..count)
        .filter(|k| !by_index.contains_key(k))
        .map(|k| format!("{k}/{count}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing {} of {count} shards: {} (run them, or name their folders)",
            missing.len(),
            missing.join(", ")
        );
    }
    Ok(by_index.into_values().collect())
}

/// Refuses to write over a shard, or over another run's results.
fn check_out(out: &Path, shards: &[ShardDir]) -> Result<()> {
    let same = |d: &Path| match (d.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if let Some(s) = shards.iter().find(|s| same(&s.dir)) {
        bail!(
            "{} is {}: merge into another folder",
            out.display(),
            s.name()
        );
    }
    let Ok(text) = std::fs::read_to_string(out.join("run.json")) else {
        return Ok(());
    };
    let old: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if old.get("shard").is_some() || !super::changed_settings(&old, &shards[0].run).is_empty() {
        bail!(
            "{} holds the results of another run: merge into another folder",
            out.display()
        );
    }
    Ok(())
}

/// Writes the whole run's record and journal: the shards' lines in order.
fn write_run(out: &Path, run: &serde_json::Value, journal: &str, lines: &[String]) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create results folder {}", out.display()))?;
    qwen_scope::report::atomic::remove_stale(out);
    write_atomic(&out.join("run.json"), &serde_json::to_vec_pretty(run)?)?;
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    write_atomic(&out.join(journal), &bytes)?;
    Ok(())
}

fn merge_sweep(out: &Path, shards: &[ShardDir]) -> Result<()> {
    let run = &shards[0].run;
    let train = run["train"].as_u64().unwrap_or(0) as usize;
    let mut lines = Vec::new();
    let mut results = Vec::new();
    let mut tables = Vec::new();
    let mut lens: Option<Vec<u8>> = None;
    for s in shards {
        let part = s.journal::<SampleResult>("samples.jsonl", "prompts")?;
        let indices: Vec<usize> = part.iter().map(|(_, r)| r.index).collect();
        let expected: Vec<usize> = s.units.clone().map(|u| train + u).collect();
        if indices != expected {
            bail!(
                "{}: its journal holds other prompts than its part of the run",
                s.name()
            );
        }
        let file = s.report("tuned_lens.safetensors")?;
        let fit = std::fs::read(&file).with_context(|| file.display().to_string())?;
        if lens.is_none() {
            lens = Some(fit);
        } else if lens.as_ref() != Some(&fit) {
            bail!(
                "{} fitted another tuned lens than {}: the shards ran on different CPUs or \
                 GPUs, or builds; their results are not one run's",
                s.name(),
                shards[0].name()
            );
        }
        if !s.units.is_empty() {
            tables.push(s.report("samples.csv")?);
        }
        for (line, r) in part {
            lines.push(line);
            results.push(r);
        }
    }
    write_run(out, run, "samples.jsonl", &lines)?;
    write_atomic(
        &out.join("tuned_lens.safetensors"),
        &lens.expect("a run has shards"),
    )?;
    qwen_scope::report::summary::merge_samples_csv(&out.join("samples.csv"), &tables)?;
    super::sweep::write_summaries(out, run, &results)
}

fn merge_attributes(out: &Path, shards: &[ShardDir]) -> Result<()> {
    let run = &shards[0].run;
    let mut lines = Vec::new();
    let mut done: Vec<Record> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in shards {
        for (line, r) in s.journal::<Record>("rows.jsonl", "rows")? {
            if !seen.insert((r.relation.clone(), r.result.row)) {
                bail!(
                    "{} holds relation {} row {} that another shard holds too",
                    s.name(),
                    r.relation,
                    r.result.row
                );
            }
            lines.push(line);
            done.push(r);
        }
    }
    let relations = relations(&shards[0].report("summary.json")?)?;
    let names: Vec<(&str, &Dropped)> = relations.iter().map(|(n, d)| (n.as_str(), d)).collect();
    let layers = |k: &str| -> Vec<usize> {
        run[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as usize)
                    .collect()
            })
            .unwrap_or_default()
    };
    done.sort_by(|x, y| (&x.relation, x.result.row).cmp(&(&y.relation, y.result.row)));
    let summary = accuracy::summarize(
        &names,
        &done,
        &layers("source_layers"),
        &layers("target_layers"),
    );
    write_run(out, run, "rows.jsonl", &lines)?;
    let num_layers = run["num_layers"].as_u64().unwrap_or(0) as usize;
    super::attributes::report(out, run, &summary, num_layers)
}

/// The relations of an attributes run, in order, with the rows left out of each file, as
/// a shard's summary.json lists them.
fn relations(summary: &Path) -> Result<Vec<(String, Dropped)>> {
    let text = std::fs::read_to_string(summary).with_context(|| summary.display().to_string())?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a qwen-scope summary", summary.display()))?;
    let entries = json["summary"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .filter(|e| e["relation"] != "all")
        .map(|e| {
            let name = e["relation"].as_str().unwrap_or_default().to_string();
            let dropped = serde_json::from_value(e["dropped"].clone())
                .with_context(|| format!("{}: relation {name}", summary.display()))?;
            Ok((name, dropped))
        })
        .collect()
}
