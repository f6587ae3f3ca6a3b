//! Several GPUs in one command (`--device cuda:0,cuda:1` or `cuda:all`) for sweep and
//! attributes: the run split into one shard per GPU, the shards run at once (a thread
//! each, with its own copy of the weights on its GPU) into `OUT/shards/K`, then merged
//! into OUT, as `qwen-scope merge` does. A failed or killed shard keeps what it finished:
//! the same command with --resume finishes it and merges.

use super::merge::merge;
use anyhow::{anyhow, bail, Result};
use qwen_scope::device::{DTypeSpec, Loaded};
use qwen_scope::report::shard::Shard;
use qwen_scope::CpuModel;
use std::path::{Path, PathBuf};

/// Runs `run_shard(model, shard, folder, resume)` for shard K on `gpus[K]`, all at once,
/// then merges into `out`. A shard resumes where its folder holds a run and `resume` is
/// set.
pub fn on_gpus(
    host: &CpuModel,
    gpus: &[usize],
    dtype: DTypeSpec,
    out: &Path,
    resume: bool,
    run_shard: &(dyn Fn(&Loaded, Shard, PathBuf, bool) -> Result<()> + Sync),
) -> Result<()> {
    let count = gpus.len();
    let dirs: Vec<PathBuf> = (0..count)
        .map(|k| out.join("shards").join(k.to_string()))
        .collect();
    eprintln!(
        "{count} GPUs: shard K of {count} runs on the K-th of {} into {}",
        gpus.iter()
            .map(|g| format!("cuda:{g}"))
            .collect::<Vec<_>>()
            .join(","),
        out.join("shards").display()
    );
    let outcomes: Vec<Result<()>> = std::thread::scope(|scope| {
        let threads: Vec<_> = gpus
            .iter()
            .zip(&dirs)
            .enumerate()
            .map(|(index, (&gpu, dir))| {
                scope.spawn(move || {
                    let shard = Shard { index, count };
                    let loaded =
                        Loaded::on_gpu(host, gpu, dtype, &mut |n| eprintln!("shard {shard}: {n}"))?;
                    let resume = resume && dir.join("run.json").exists();
                    run_shard(&loaded, shard, dir.clone(), resume)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow!("the shard's thread panicked")))
            })
            .collect()
    });
    let failed: Vec<String> = outcomes
        .iter()
        .zip(gpus)
        .enumerate()
        .filter_map(|(k, (r, gpu))| {
            r.as_ref()
                .err()
                .map(|e| format!("  shard {k}/{count} on cuda:{gpu}: {e:#}"))
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {count} shards failed; the others' results are kept in {}: fix the cause \
             and rerun the same command with --resume to finish and merge\n{}",
            failed.len(),
            out.join("shards").display(),
            failed.join("\n")
        );
    }
    merge(out, &dirs)
}
