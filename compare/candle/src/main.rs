//! `candle-bench`: candle-transformers' Qwen2 model measured and checked the way
//! `qwen-scope bench` and `qwen-scope forward` are, so tools/bench_candle.sh can put the
//! two engines side by side. Not part of qwen-scope's build (own workspace and target/).

mod bench;
mod config;
mod load;
mod logits;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "candle-bench",
    version,
    about = "candle 0.11 Qwen2 timings and logits, in qwen-scope's formats"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Model folder: config.json, *.safetensors (single or sharded), tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Compute dtype: f32, f16 or bf16 (weights are converted on load).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda or cuda:N (cuda needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand)]
enum Command {
    /// Time a prefill and batched decode steps exactly as `qwen-scope bench` does.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt length in tokens (fixed, deterministic token ids).
        #[arg(long, default_value_t = 32)]
        tokens: usize,
        /// Rows in the batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Decode steps after the prefill.
        #[arg(long, default_value_t = 16)]
        decode: usize,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// Run one prompt and write the last position's logits as JSON.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        /// Output: {"tokens": [...], "last_logits": [...]}.
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare a `qwen-scope forward --out X.json` dump with a `candle-bench logits` file:
    /// same token ids, same top-1, max |diff| of the last-position logits <= --tol.
    Check {
        #[arg(long)]
        qwen_scope: PathBuf,
        #[arg(long)]
        candle: PathBuf,
        #[arg(long, default_value_t = 1e-3)]
        tol: f32,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        // a completed check that found a mismatch: distinct from a failure to run
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Ok(false) only when `check` ran and the two engines disagree.
fn run(command: Command) -> Result<bool> {
    match command {
        Command::Bench {
            model,
            tokens,
            batch,
            decode,
            repeat,
        } => {
            let mut loaded = load::Loaded::open(&model.model, &model.dtype, &model.device)?;
            bench::bench(&mut loaded, tokens, batch, decode, repeat)?;
            Ok(true)
        }
        Command::Logits { model, prompt, out } => {
            let mut loaded = load::Loaded::open(&model.model, &model.dtype, &model.device)?;
            logits::logits(&mut loaded, &model.model, &prompt, &out)?;
            Ok(true)
        }
        Command::Check {
            qwen_scope,
            candle,
            tol,
        } => logits::check(&qwen_scope, &candle, tol),
    }
}
