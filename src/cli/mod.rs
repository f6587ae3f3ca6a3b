//! The subcommands of the `qwen-scope` binary, one file each, and what the experiments'
//! results folders share: the run record and its checks.

use anyhow::{bail, Context, Result};
use qwen_scope::report::write_atomic;
use std::path::Path;

pub mod attributes;
pub mod bench;
pub mod forward;
pub mod inspect;
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

/// Creates the results folder; refuses to mix runs: another experiment's folder, or a
/// different run, needs a new --out; an existing run needs --resume (or is started over
/// when its `journal` is missing).
pub fn prepare_out(out: &Path, run: &serde_json::Value, journal: &str, resume: bool) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create results folder {}", out.display()))?;
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
                "--resume: {} holds a run with other settings:\n{}",
                out.display(),
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
    write_atomic(&run_file, &serde_json::to_vec_pretty(run)?)
        .with_context(|| format!("results folder {} is not writable", out.display()))?;
    Ok(())
}

/// The run settings that differ, one line each: "  key: earlier X, now Y".
fn changed_settings(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("absent".into(), |v| v.to_string());
            format!("  {k}: earlier {}, now {}", show(o.get(k)), show(n.get(k)))
        })
        .collect()
}
