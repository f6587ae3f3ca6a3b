//! A model folder -> candle-transformers' `qwen2::ModelForCausalLM` on a device.

use crate::config;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen2::{Config, ModelForCausalLM};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct Loaded {
    pub model: ModelForCausalLM,
    pub config: Config,
    pub device: Device,
}

impl Loaded {
    pub fn open(dir: &Path, dtype: &str, device: &str) -> Result<Self> {
        let t = Instant::now();
        let dtype = parse_dtype(dtype)?;
        let device = parse_device(device)?;
        let config = config::read(&dir.join("config.json"))?;
        let files = safetensors_files(dir)?;
        // SAFETY: the files are mapped read-only and must not be modified while this
        // process runs, the same contract every mmap-based loader (qwen-scope's too) has.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, &device)? };
        check_lm_head(&config, &vb)?;
        let model = ModelForCausalLM::new(&config, vb)
            .with_context(|| format!("cannot build the qwen2 model from {}", dir.display()))?;
        eprintln!(
            "loaded {} (candle qwen2, {} blocks, hidden {}, vocab {}, {dtype:?} on {device:?}) in {:.2}s",
            dir.display(),
            config.num_hidden_layers,
            config.hidden_size,
            config.vocab_size,
            t.elapsed().as_secs_f64()
        );
        Ok(Loaded {
            model,
            config,
            device,
        })
    }

    /// One pass over `rows` (equal lengths) starting at `offset` in the KV cache; returns
    /// the last position's logits per row as f32 on the host. Copying them back is what
    /// makes a CUDA step finish before the caller stops its timer (qwen-scope's bench
    /// reads its logits back too).
    pub fn step(&mut self, rows: &[Vec<u32>], offset: usize) -> Result<Vec<Vec<f32>>> {
        let len = rows.first().map_or(0, Vec::len);
        ensure!(
            len > 0 && rows.iter().all(|r| r.len() == len),
            "rows must be non-empty and of equal length"
        );
        let flat: Vec<u32> = rows.concat();
        let ids = Tensor::from_vec(flat, (rows.len(), len), &self.device)?;
        let logits = self.model.forward(&ids, offset)?; // (batch, 1, vocab)
        Ok(logits.squeeze(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("--dtype {other:?}: expected f32, f16 or bf16"),
    })
}

fn parse_device(s: &str) -> Result<Device> {
    let ordinal = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("--device {s:?}: expected cpu, cuda or cuda:N"))?,
    };
    if !cfg!(feature = "cuda") {
        bail!("--device {s}: candle-bench was built without CUDA (cargo build --release --features cuda)");
    }
    Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
}

/// model.safetensors.index.json's shards when present, else model.safetensors.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        let single = dir.join("model.safetensors");
        ensure!(
            single.exists(),
            "neither model.safetensors nor model.safetensors.index.json in {}",
            dir.display()
        );
        return Ok(vec![single]);
    }
    let text = std::fs::read_to_string(&index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no `weight_map` object", index.display()))?;
    let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    ensure!(!names.is_empty(), "{} names no shards", index.display());
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// candle picks `lm_head.weight` whenever it is stored and the embeddings otherwise,
/// whatever `tie_word_embeddings` says; qwen-scope and transformers follow the flag.
/// Refuse the two cases where that would make the engines compute different logits.
fn check_lm_head(config: &Config, vb: &VarBuilder) -> Result<()> {
    match (config.tie_word_embeddings, vb.contains_tensor("lm_head.weight")) {
        (true, true) => bail!("tie_word_embeddings = true but lm_head.weight is stored: candle would use it, qwen-scope uses the embeddings"),
        (false, false) => bail!("tie_word_embeddings = false but lm_head.weight is missing"),
        _ => Ok(()),
    }
}
