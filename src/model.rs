//! A loaded model: config, tokenizer and weights in f32, laid out for the CPU backend
//! (q/k/v fused into one projection, gate/up fused into another).

use crate::backend::cpu::head_argmax::HeadScreen;
use crate::backend::cpu::matmul::Linear;
use crate::config::{Arch, Config};
use crate::error::{Error, Result};
use crate::hub::{self, ModelFiles};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightFiles;

pub struct Block {
    pub input_norm: Vec<f32>,
    /// Rows: q (num_heads*head_dim), then k, then v (num_kv_heads*head_dim each).
    pub qkv: Linear,
    pub o_proj: Linear,
    pub post_attention_norm: Vec<f32>,
    /// Rows: gate (intermediate), then up (intermediate).
    pub gate_up: Linear,
    pub down: Linear,
}

pub struct Model {
    pub config: Config,
    pub tokenizer: Tokenizer,
    /// [vocab, hidden]
    pub embed: Vec<f32>,
    pub blocks: Vec<Block>,
    pub final_norm: Vec<f32>,
    /// Untied LM head [vocab, hidden]; `None` when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
    /// RoPE inverse frequencies [head_dim / 2].
    pub(crate) inv_freq: Vec<f32>,
    /// The LM head's bf16 screen (`None` where the CPU has no AMX).
    head_screen: Option<HeadScreen>,
}

impl Model {
    /// Loads a model folder or a Hugging Face repo id (optionally at `revision`).
    pub fn load(spec: &str, revision: Option<&str>) -> Result<Model> {
        Self::from_files(&hub::resolve(spec, revision)?)
    }

    pub fn from_files(files: &ModelFiles) -> Result<Model> {
        let config = Config::from_file(&files.config)?;
        let tokenizer = Tokenizer::from_file(&files.tokenizer)?;
        let weights = WeightFiles::open(&files.weights)?;
        let c = &config;
        let h = c.hidden_size;
        let embed = weights.f32("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let blocks = (0..c.num_layers)
            .map(|l| load_block(&weights, c, l))
            .collect::<Result<_>>()?;
        let final_norm = weights.f32("model.norm.weight", &[h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else if weights.contains("lm_head.weight") {
            Some(weights.f32("lm_head.weight", &[c.vocab_size, h])?)
        } else {
            return Err(Error::Tensor {
                name: "lm_head.weight".into(),
                msg: "missing, and the config does not tie word embeddings".into(),
            });
        };
        let inv_freq = crate::backend::cpu::rope::inv_freq(c.head_dim, c.rope_theta);
        let head = lm_head.as_deref().unwrap_or(&embed);
        let head_screen = HeadScreen::new(head, c.vocab_size, h);
        Ok(Model {
            inv_freq,
            config,
            tokenizer,
            embed,
            blocks,
            final_norm,
            lm_head,
            head_screen,
        })
    }

    /// The LM head matrix [vocab, hidden] (the embedding table when tied).
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    /// The LM head's argmax for each final-normed state of `xs` ([rows, hidden]): the
    /// token `argmax` picks from the exact f32 logits, through the AMX screen where the CPU
    /// has one (see `backend::cpu::head_argmax`), else from the logits themselves.
    pub fn head_argmax(&self, xs: &[f32]) -> Vec<u32> {
        let (vocab, hidden) = (self.config.vocab_size, self.config.hidden_size);
        if let Some(screen) = &self.head_screen {
            return screen.argmax(self.lm_head(), xs);
        }
        let rows = xs.len() / hidden;
        let mut logits = vec![0.0; rows * vocab];
        crate::backend::cpu::matmul::matmul_bt(
            xs,
            rows,
            hidden,
            self.lm_head(),
            vocab,
            &mut logits,
        );
        logits
            .chunks_exact(vocab)
            .map(|l| crate::backend::cpu::logits::argmax(l) as u32)
            .collect()
    }

    pub fn num_layers(&self) -> usize {
        self.config.num_layers
    }

    /// An empty KV cache for one sequence of this model.
    pub fn new_cache(&self) -> crate::kv::KvCache {
        crate::kv::KvCache::new(&self.config)
    }
}

fn load_block(w: &WeightFiles, c: &Config, l: usize) -> Result<Block> {
    let (h, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let p = format!("model.layers.{l}");
    let attn = |n: &str, shape: &[usize]| w.f32(&format!("{p}.self_attn.{n}"), shape);
    let mut qkv_w = attn("q_proj.weight", &[q, h])?;
    qkv_w.extend(attn("k_proj.weight", &[kv, h])?);
    qkv_w.extend(attn("v_proj.weight", &[kv, h])?);
    let qkv_b = if c.qkv_bias {
        let mut b = attn("q_proj.bias", &[q])?;
        b.extend(attn("k_proj.bias", &[kv])?);
        b.extend(attn("v_proj.bias", &[kv])?);
        Some(b)
    } else {
        if c.arch == Arch::Llama && w.contains(&format!("{p}.self_attn.q_proj.bias")) {
            return Err(Error::Tensor {
                name: format!("{p}.self_attn.q_proj.bias"),
                msg: "present, but the config says attention_bias = false".into(),
            });
        }
        None
    };
    let mut gate_up = w.f32(&format!("{p}.mlp.gate_proj.weight"), &[i, h])?;
    gate_up.extend(w.f32(&format!("{p}.mlp.up_proj.weight"), &[i, h])?);
    Ok(Block {
        input_norm: w.f32(&format!("{p}.input_layernorm.weight"), &[h])?,
        qkv: Linear::new(qkv_w, qkv_b, q + 2 * kv, h),
        o_proj: Linear::new(attn("o_proj.weight", &[h, q])?, None, h, q),
        post_attention_norm: w.f32(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
        gate_up: Linear::new(gate_up, None, 2 * i, h),
        down: Linear::new(
            w.f32(&format!("{p}.mlp.down_proj.weight"), &[h, i])?,
            None,
            h,
            i,
        ),
    })
}
