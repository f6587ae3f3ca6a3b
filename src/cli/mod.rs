//! The subcommands of the `qwen-scope` binary, one file each, and what the experiments'
//! results folders share: the run record and its checks.

use anyhow::{bail, Context, Result};
use qwen_scope::report::{shard::Shard, write_atomic};
use std::path::Path;

pub mod attributes;
pub mod bench;
pub mod devices;
pub mod forward;
pub mod inspect;
pub mod merge;
pub mod sweep;

/// The model a results folder was made from: its name as given, and each file's
/// fingerprint, recorded in run.json so that `--resume` refuses weights changed in place.
pub struct RunModel {
    pub name: String,
    pub files: Vec<(String, String)>,
}

impl RunModel {
    /// The run.json entries naming the model and the tool that made the results.
    pub fn record(&self) -> serde_json::Value {
        let files: serde_json::Map<String, serde_json::Value> = self
            .files
            .iter()
            .map(|(n, f)| (n.clone(), f.clone().into()))
            .collect();
        serde_json::json!({
            "name": self.name,
            "files": files,
            "qwen_scope_version": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// run.json entries that say how the run's inputs were reached (the model's name or path
/// as typed, the prompt and relation files' paths), not what they are: `--resume` compares
/// what they are, through the fingerprints recorded beside them.
const WHERE_FROM: [&str; 3] = ["model.name", "prompts", "relations"];

/// Creates the results folder; refuses to mix runs: another experiment's folder, or a
/// different run, needs a new --out; an existing run needs --resume (or is started over
/// when its `journal` is missing).
pub fn prepare_out(out: &Path, run: &serde_json::Value, journal: &str, resume: bool) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create results folder {}", out.display()))?;
    // what a run killed in the middle of writing a file left behind
    qwen_scope::report::atomic::remove_stale(out);
    let run_file = out.join("run.json");
    let old: Option<serde_json::Value> =
        match std::fs::read_to_string(&run_file) {
            Ok(text) => Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is not a qwen-scope run record", run_file.display())
            })?),
            Err(_) => None,
        };
    if let Some(old) = &old {
        if old["experiment"] != run["experiment"] {
            bail!(
                "{} holds results of another experiment ({}): choose another --out",
                out.display(),
                old["experiment"]
            );
        }
    }
    if resume {
        let Some(old) = old else {
            bail!("--resume: no earlier run in {}", out.display());
        };
        let changed = changed_settings(&old, run);
        if !changed.is_empty() {
            bail!(
                "--resume: {} holds a run that differs from this one ({} {}); start a new \
                 run with another --out, or resume with the earlier settings and files:\n{}",
                out.display(),
                changed.len(),
                if changed.len() == 1 {
                    "difference"
                } else {
                    "differences"
                },
                changed.join("\n")
            );
        }
        return Ok(());
    }
    if old.is_some() && out.join(journal).exists() {
        bail!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    write_atomic(&run_file, &serde_json::to_vec_pretty(run)?)?;
    Ok(())
}

/// What differs between two run records, one line per difference ("  key: earlier X, now
/// Y"), down to the single setting or model file, leaving out [`WHERE_FROM`].
fn changed_settings(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    differences(old, new, ("earlier", "now"))
}

/// [`changed_settings`] with other names for the two records.
fn differences(
    old: &serde_json::Value,
    new: &serde_json::Value,
    names: (&str, &str),
) -> Vec<String> {
    let mut lines = Vec::new();
    diff("", old, new, names, &mut lines);
    lines
}

fn diff(
    key: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    names: (&str, &str),
    lines: &mut Vec<String>,
) {
    use serde_json::Value;
    if WHERE_FROM.contains(&key) {
        return;
    }
    let line = |key: &str, old: Option<&Value>, new: Option<&Value>| {
        let show = |v: Option<&Value>| v.map_or("absent".into(), |v| v.to_string());
        format!(
            "  {key}: {} {}, {} {}",
            names.0,
            show(old),
            names.1,
            show(new)
        )
    };
    if let (Value::Object(o), Value::Object(n)) = (old, new) {
        let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let sub = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            match (o.get(k), n.get(k)) {
                (Some(a), Some(b)) => diff(&sub, a, b, names, lines),
                (a, b) if !WHERE_FROM.contains(&sub.as_str()) => lines.push(line(&sub, a, b)),
                _ => {}
            }
        }
    } else if old != new {
        lines.push(line(key, Some(old), Some(new)));
    }
}

/// The units (prompts, rows) of `units` this run evaluates: all of them, or a shard's part,
/// which is then recorded in `run` and said, with why when it is empty.
fn shard_part(
    shard: Option<Shard>,
    units: usize,
    batch: usize,
    what: &str,
    run: &mut serde_json::Value,
) -> std::ops::Range<usize> {
    let Some(shard) = shard else {
        return 0..units;
    };
    let mine = shard.units(units, batch);
    run["shard"] = shard.record(units, batch);
    let batches = units.div_ceil(batch);
    if mine.is_empty() {
        eprintln!(
            "shard {shard} owns none of the {units} {what}: they make {batches} batches of up to {batch} for {} shards (a smaller --batch spreads them over more)",
            shard.count
        );
    } else {
        eprintln!(
            "shard {shard}: {what} {}..{} of {units} (batches {}..{} of {batches})",
            mine.start,
            mine.end,
            mine.start / batch,
            mine.end.div_ceil(batch)
        );
    }
    mine
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_listed_one_per_line_and_paths_do_not_count() {
        let old = json!({
            "experiment": "next_token", "seed": 42, "prompts": "data/p.txt",
            "model": {"name": "models/a", "files": {"config.json": "1:aa", "model.safetensors": "9:bb"}},
        });
        let same_by_content = json!({
            "experiment": "next_token", "seed": 42, "prompts": "./data/../data/p.txt",
            "model": {"name": "/abs/link-to-a", "files": {"config.json": "1:aa", "model.safetensors": "9:bb"}},
        });
        assert!(changed_settings(&old, &same_by_content).is_empty());
        let changed = json!({
            "experiment": "next_token", "seed": 7, "prompts": "data/p.txt", "grid": true,
            "model": {"name": "models/a", "files": {"config.json": "1:aa", "model.safetensors": "9:cc"}},
        });
        assert_eq!(
            changed_settings(&old, &changed),
            [
                "  grid: earlier absent, now true",
                "  model.files.model.safetensors: earlier \"9:bb\", now \"9:cc\"",
                "  seed: earlier 42, now 7",
            ]
        );
    }
}
