//! The `qwen-scope` command line.

mod cli;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use qwen_scope::Model;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "qwen-scope",
    version,
    about = "PatchScopes on Qwen2-family models, fast"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Model folder, or Hugging Face repo id (e.g. Qwen/Qwen2-0.5B).
    #[arg(long)]
    model: String,
    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long)]
    revision: Option<String>,
}

impl ModelArgs {
    fn load(&self) -> Result<Model> {
        let t = Instant::now();
        let model = Model::load(&self.model, self.revision.as_deref())
            .with_context(|| format!("cannot load model {}", self.model))?;
        let c = &model.config;
        eprintln!(
            "loaded {} ({:?}, {} blocks, hidden {}, vocab {}) in {:.2}s",
            self.model,
            c.arch,
            c.num_layers,
            c.hidden_size,
            c.vocab_size,
            t.elapsed().as_secs_f64()
        );
        Ok(model)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run prompts and dump logits and every residual state (for parity checks by hand).
    Forward {
        #[command(flatten)]
        model: ModelArgs,
        /// A prompt; repeat for a batch.
        #[arg(long, required = true)]
        prompt: Vec<String>,
        /// Output file: .safetensors or .json.
        #[arg(long)]
        out: PathBuf,
        /// How many top next tokens to print per prompt.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
    },
    /// Greedy generation from a prompt.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 20)]
        max_new: usize,
    },
    /// The next-token experiment (paper section 4.1) at every layer: token-identity
    /// patchscope, logit lens and tuned lens, with tables and plots.
    Sweep {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sweep: cli::sweep::SweepArgs,
    },
    /// Attribute extraction (paper section 4.2): accuracy per (source layer, target layer).
    Attributes {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        attributes: cli::attributes::AttributesArgs,
    },
    /// One patchscope by hand (e.g. an entity description): the text generated per layer.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        inspect: cli::inspect::InspectArgs,
    },
    /// Time a prefill and batched greedy decode steps (median of --repeat runs).
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
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Forward {
            model,
            prompt,
            out,
            top_k,
        } => cli::forward::forward(&model.load()?, &prompt, &out, top_k),
        Command::Generate {
            model,
            prompt,
            max_new,
        } => cli::forward::generate(&model.load()?, &prompt, max_new),
        Command::Sweep { model, sweep } => cli::sweep::sweep(&model.load()?, &model.model, &sweep),
        Command::Attributes { model, attributes } => {
            cli::attributes::attributes(&model.load()?, &model.model, &attributes)
        }
        Command::Inspect { model, inspect } => cli::inspect::inspect(&model.load()?, &inspect),
        Command::Bench {
            model,
            tokens,
            batch,
            decode,
            repeat,
        } => cli::bench::bench(&model.load()?, tokens, batch, decode, repeat),
    }
}
