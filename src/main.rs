//! The `qwen-scope` command line.

mod cli;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use qwen_scope::device::{DTypeSpec, DeviceSpec, Loaded};
use qwen_scope::report::shard::Shard;
use qwen_scope::{with_engine, CpuModel};
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
    /// Where the pass runs: cpu, cuda (GPU 0), cuda:N, or auto (GPU 0 when one is usable,
    /// else the CPU); for sweep and attributes also several GPUs, cuda:0,cuda:1 or
    /// cuda:all, one shard of the run each, merged into --out. Default: $QWEN_SCOPE_DEVICE
    /// when it is set, else auto.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Weight type on the GPU: f32 (exact comparisons), f16, bf16 (sm_80 and newer), or
    /// auto (bf16 for bf16 checkpoints on sm_80+, else f16). The residual stream and all
    /// accumulation stay f32. The CPU backend is always f32.
    #[arg(long, default_value = "auto")]
    dtype: DTypeSpec,
}

/// The environment variable that gives `--device` when the flag is not.
const DEVICE_VAR: &str = "QWEN_SCOPE_DEVICE";

impl ModelArgs {
    /// `--device`, else $QWEN_SCOPE_DEVICE, else auto; and, when the environment chose it,
    /// the variable's setting, for messages.
    fn device(&self) -> Result<(DeviceSpec, Option<String>)> {
        if let Some(d) = &self.device {
            return Ok((d.clone(), None));
        }
        match std::env::var(DEVICE_VAR) {
            Ok(v) if !v.is_empty() => match v.parse() {
                Ok(d) => Ok((d, Some(format!("{DEVICE_VAR}={v}")))),
                Err(_) => bail!(
                    "unknown device {v:?} in the environment variable {DEVICE_VAR}: use cpu, \
                     cuda, cuda:N or auto (or unset it, or pass --device)"
                ),
            },
            Ok(_) => Ok((DeviceSpec::Auto, None)),
            Err(std::env::VarError::NotPresent) => Ok((DeviceSpec::Auto, None)),
            Err(std::env::VarError::NotUnicode(_)) => {
                bail!("the environment variable {DEVICE_VAR} is not UTF-8 text")
            }
        }
    }

    /// The GPUs when the device names several (which only sweep and attributes take, and
    /// not with --shard: they split the run themselves).
    fn several_gpus(&self, shard: Option<Shard>) -> Result<Option<Vec<usize>>> {
        let (device, _) = self.device()?;
        if let (DeviceSpec::Gpus(_) | DeviceSpec::AllGpus, Some(s)) = (&device, shard) {
            bail!(
                "--shard {s} with several GPUs: they split the run themselves; give each Slurm \
                 task or process one device and its own --shard"
            );
        }
        Ok(device.several()?)
    }

    fn load(&self) -> Result<Loaded> {
        // a bad $QWEN_SCOPE_DEVICE is reported before the model is read
        let (device, from_env) = self.device()?;
        let host = self.load_host()?;
        let placed = Loaded::place(host, device, self.dtype, &mut |note| eprintln!("{note}"));
        match (placed, from_env) {
            (Ok(m), _) => Ok(m),
            (Err(e), Some(var)) => Err(anyhow::Error::new(e)
                .context(format!("{var} (from the environment) chose the device"))),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// The model's name and file fingerprints, for a results folder's run.json.
    fn run_model(&self) -> Result<cli::RunModel> {
        let files = qwen_scope::hub::resolve(&self.model, self.revision.as_deref())?;
        Ok(cli::RunModel {
            name: self.model.clone(),
            files: files.fingerprint()?,
        })
    }

    fn load_host(&self) -> Result<CpuModel> {
        let t = Instant::now();
        let model = CpuModel::load(&self.model, self.revision.as_deref()).map_err(|e| {
            // name the model once: most errors name its folder or files already
            if e.to_string().contains(self.model.trim_end_matches('/')) {
                anyhow::Error::new(e)
            } else {
                anyhow::Error::new(e).context(format!("cannot load model {}", self.model))
            }
        })?;
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
    /// Joins the shard folders of a run split with --shard K/N into OUT: the results the
    /// unsharded run writes, byte for byte. Refuses shards of different runs, and names
    /// missing, repeated or unfinished ones.
    Merge {
        /// The results folder to write.
        out: PathBuf,
        /// The shard folders (all N of them, in any order).
        #[arg(required = true)]
        shards: Vec<PathBuf>,
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

/// Runs a sweep or attributes run (`args`, with its --shard, --out and --resume in
/// `place`) on the device chosen, or, where several GPUs are, one shard of it per GPU
/// (`for_shard` gives a shard's arguments), merged into --out.
fn run_sharded<A: Sync>(
    model: &ModelArgs,
    args: &A,
    place: (Option<Shard>, &std::path::Path, bool),
    for_shard: &(dyn Fn(Shard, PathBuf, bool) -> A + Sync),
    run: &(dyn Fn(&Loaded, &A) -> Result<()> + Sync),
) -> Result<()> {
    let (shard, out, resume) = place;
    match model.several_gpus(shard)? {
        Some(gpus) => {
            let host = model.load_host()?;
            let run_shard = |m: &Loaded, shard, out, resume| run(m, &for_shard(shard, out, resume));
            cli::devices::on_gpus(&host, &gpus, model.dtype, out, resume, &run_shard)
        }
        None => run(&model.load()?, args),
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Forward {
            model,
            prompt,
            out,
            top_k,
        } => with_engine!(&model.load()?, |m| cli::forward::forward(
            m, &prompt, &out, top_k
        )),
        Command::Generate {
            model,
            prompt,
            max_new,
        } => with_engine!(&model.load()?, |m| cli::forward::generate(
            m, &prompt, max_new
        )),
        Command::Sweep { model, sweep: a } => {
            let run_model = model.run_model()?;
            let for_shard = |shard, out, resume| cli::sweep::SweepArgs {
                shard: Some(shard),
                out,
                resume,
                ..a.clone()
            };
            let place = (a.shard, a.out.as_path(), a.resume);
            run_sharded(&model, &a, place, &for_shard, &|m, a| {
                with_engine!(m, |m| cli::sweep::sweep(m, &run_model, a))
            })
        }
        Command::Attributes {
            model,
            attributes: a,
        } => {
            let run_model = model.run_model()?;
            let for_shard = |shard, out, resume| cli::attributes::AttributesArgs {
                shard: Some(shard),
                out,
                resume,
                ..a.clone()
            };
            let place = (a.shard, a.out.as_path(), a.resume);
            run_sharded(&model, &a, place, &for_shard, &|m, a| {
                with_engine!(m, |m| cli::attributes::attributes(m, &run_model, a))
            })
        }
        Command::Merge { out, shards } => cli::merge::merge(&out, &shards),
        Command::Inspect { model, inspect } => {
            with_engine!(&model.load()?, |m| cli::inspect::inspect(m, &inspect))
        }
        Command::Bench {
            model,
            tokens,
            batch,
            decode,
            repeat,
        } => with_engine!(&model.load()?, |m| cli::bench::bench(
            m, tokens, batch, decode, repeat
        )),
    }
}
