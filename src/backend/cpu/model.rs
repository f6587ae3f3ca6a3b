//! The model on the CPU: config, tokenizer and weights in f32 (q/k/v fused into one
//! projection, gate/up fused into another), and the ops the pass of `crate::model` runs
//! it with. The f32 reference every other backend is tested against.

use super::head_argmax::HeadScreen;
use super::matmul::{self, Linear};
use super::{attention, embedding, logits, residual, rmsnorm, rope, swiglu};
use crate::config::{Arch, Config};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::hub::{self, ModelFiles};
use crate::kv::KvCache;
use crate::model::{self, Norm, Ops, Proj};
use crate::plan::Plan;
use crate::request::{Output, Request};
use crate::shape::{AttnShape, RowLayout};
use crate::stream::WriteOp;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightFiles;

pub struct Block {
    pub input_norm: Vec<f32>,
    /// Rows: q (num_heads*head_dim), then k, then v (num_kv_heads*head_dim each).
    pub qkv: Linear,
    /// Per-head RMSNorm weights [head_dim] of q and of k (Qwen3), applied before RoPE.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub o_proj: Linear,
    pub post_attention_norm: Vec<f32>,
    /// Rows: gate (intermediate), then up (intermediate).
    pub gate_up: Linear,
    pub down: Linear,
}

pub struct CpuModel {
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

impl CpuModel {
    /// Loads a model folder or a Hugging Face repo id (optionally at `revision`).
    pub fn load(spec: &str, revision: Option<&str>) -> Result<CpuModel> {
        Self::from_files(&hub::resolve(spec, revision)?)
    }

    pub fn from_files(files: &ModelFiles) -> Result<CpuModel> {
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
        let inv_freq = rope::inv_freq(c.head_dim, c.rope_theta);
        let head = lm_head.as_deref().unwrap_or(&embed);
        let head_screen = HeadScreen::new(head, c.vocab_size, h);
        Ok(CpuModel {
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

    pub fn num_layers(&self) -> usize {
        self.config.num_layers
    }

    /// An empty KV cache for one sequence of this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.config)
    }

    fn block_norm(&self, layer: usize, norm: Norm) -> &[f32] {
        let b = &self.blocks[layer];
        match norm {
            Norm::Input => &b.input_norm,
            Norm::PostAttention => &b.post_attention_norm,
        }
    }

    fn block_proj(&self, layer: usize, proj: Proj) -> &Linear {
        let b = &self.blocks[layer];
        match proj {
            Proj::Qkv => &b.qkv,
            Proj::O => &b.o_proj,
            Proj::GateUp => &b.gate_up,
            Proj::Down => &b.down,
        }
    }

    fn qkv_layouts(&self) -> [RowLayout; 3] {
        let c = &self.config;
        let stride = c.q_dim() + 2 * c.kv_dim();
        [0, c.q_dim(), c.q_dim() + c.kv_dim()].map(|offset| RowLayout { stride, offset })
    }

    /// The LM head's logits [rows, vocab] of final-normed states `xs` [rows, hidden].
    fn head_logits(&self, xs: &[f32]) -> Vec<f32> {
        let (hidden, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let rows = xs.len() / hidden;
        let mut y = vec![0.0; rows * vocab];
        matmul::matmul_bt(xs, rows, hidden, self.lm_head(), vocab, &mut y);
        y
    }

    fn gather(&self, h: &[f32], rows: &[usize]) -> Vec<f32> {
        let d = self.config.hidden_size;
        rows.iter()
            .flat_map(|&t| h[t * d..(t + 1) * d].iter().copied())
            .collect()
    }
}

impl Ops for CpuModel {
    type Cache = KvCache;
    type Stream = Vec<f32>;
    type Act = Vec<f32>;
    type Wide = Vec<f32>;
    /// The tokens' positions.
    type Batch = Vec<usize>;

    fn config(&self) -> &Config {
        &self.config
    }

    fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        Ok(embedding::embedding(
            &self.embed,
            self.config.hidden_size,
            ids,
        ))
    }

    fn stream_from(&self, states: Vec<f32>) -> Result<Vec<f32>> {
        Ok(states)
    }

    fn act(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn wide(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn batch(&self, plan: &Plan) -> Result<Vec<usize>> {
        Ok(plan.tokens.iter().map(|t| t.pos).collect())
    }

    fn rmsnorm(
        &self,
        h: &Vec<f32>,
        n: usize,
        layer: usize,
        norm: Norm,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (w, eps) = (self.block_norm(layer, norm), self.config.rms_norm_eps);
        rmsnorm::rmsnorm(&h[..n * self.config.hidden_size], w, eps, out);
        Ok(())
    }

    fn linear(&self, x: &Vec<f32>, layer: usize, proj: Proj, out: &mut Vec<f32>) -> Result<()> {
        let w = self.block_proj(layer, proj);
        matmul::linear(x, x.len() / w.inp, w, out);
        Ok(())
    }

    fn qk_norm(&self, qkv: &mut Vec<f32>, layer: usize) -> Result<()> {
        let c = &self.config;
        let b = &self.blocks[layer];
        let (Some(qw), Some(kw)) = (&b.q_norm, &b.k_norm) else {
            return Err(Error::Internal(format!(
                "block {layer} has no q_norm/k_norm weights"
            )));
        };
        let [q_at, k_at, _] = self.qkv_layouts();
        rmsnorm::rmsnorm_heads(qkv, q_at, c.num_heads, qw, c.rms_norm_eps);
        rmsnorm::rmsnorm_heads(qkv, k_at, c.num_kv_heads, kw, c.rms_norm_eps);
        Ok(())
    }

    fn rope(&self, qkv: &mut Vec<f32>, positions: &Vec<usize>) -> Result<()> {
        let c = &self.config;
        let [q_at, k_at, _] = self.qkv_layouts();
        rope::rope(
            qkv,
            q_at,
            c.num_heads,
            c.head_dim,
            positions,
            &self.inv_freq,
        );
        rope::rope(
            qkv,
            k_at,
            c.num_kv_heads,
            c.head_dim,
            positions,
            &self.inv_freq,
        );
        Ok(())
    }

    fn attention(
        &self,
        qkv: &Vec<f32>,
        _positions: &Vec<usize>,
        plan: &Plan,
        caches: &mut [KvCache],
        layer: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let c = &self.config;
        let [q_at, k_at, v_at] = self.qkv_layouts();
        let kv_dim = c.kv_dim();
        let part = |at: RowLayout, t: usize| &qkv[t * at.stride + at.offset..][..kv_dim];
        for (r, &(first, len)) in plan.rows.iter().enumerate() {
            for t in first..first + len {
                caches[r].append(layer, part(k_at, t), part(v_at, t));
            }
        }
        let shape = AttnShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        *out = attention::attention(qkv, q_at, &plan.tokens, caches, layer, &shape);
        Ok(())
    }

    fn gemm_input<'a>(
        &self,
        x: &'a Vec<f32>,
        _tmp: &'a mut Option<Vec<f32>>,
    ) -> Result<&'a Vec<f32>> {
        Ok(x)
    }

    fn add(&self, h: &mut Vec<f32>, n: usize, delta: &Vec<f32>) -> Result<()> {
        residual::add_inplace(&mut h[..n * self.config.hidden_size], delta);
        Ok(())
    }

    fn swiglu(&self, gate_up: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        swiglu::swiglu(gate_up, self.config.intermediate_size, out);
        Ok(())
    }

    fn final_norm(&self, h: &mut Vec<f32>, n: usize) -> Result<()> {
        let rows = &mut h[..n * self.config.hidden_size];
        let mut normed = vec![0.0; rows.len()];
        rmsnorm::rmsnorm(
            rows,
            &self.final_norm,
            self.config.rms_norm_eps,
            &mut normed,
        );
        rows.copy_from_slice(&normed);
        Ok(())
    }

    fn write_rows(&self, h: &mut Vec<f32>, writes: &[(usize, &WriteOp)]) -> Result<()> {
        let d = self.config.hidden_size;
        for &(t, op) in writes {
            let (WriteOp::Replace(v) | WriteOp::Add(v)) = op;
            residual::write_row(&mut h[t * d..(t + 1) * d], v, matches!(op, WriteOp::Add(_)));
        }
        Ok(())
    }

    fn read_rows(&self, h: &Vec<f32>, rows: &[usize]) -> Result<Vec<f32>> {
        Ok(self.gather(h, rows))
    }

    fn logits(&self, h: &Vec<f32>, rows: &[usize]) -> Result<Vec<f32>> {
        Ok(self.head_logits(&self.gather(h, rows)))
    }

    /// Through the AMX screen where the CPU has one (see `head_argmax`), else from the
    /// logits themselves: the token `argmax` picks from the exact f32 logits either way.
    fn head_argmax(&self, h: &Vec<f32>, rows: &[usize]) -> Result<Vec<u32>> {
        let xs = self.gather(h, rows);
        if let Some(screen) = &self.head_screen {
            return Ok(screen.argmax(self.lm_head(), &xs));
        }
        let vocab = self.config.vocab_size;
        Ok(self
            .head_logits(&xs)
            .chunks_exact(vocab)
            .map(|l| logits::argmax(l) as u32)
            .collect())
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
        if c.arch != Arch::Qwen2 && w.contains(&format!("{p}.self_attn.q_proj.bias")) {
            return Err(Error::Tensor {
                name: format!("{p}.self_attn.q_proj.bias"),
                msg: "present, but the config says attention_bias = false".into(),
            });
        }
        None
    };
    let o_b = if c.o_bias {
        Some(attn("o_proj.bias", &[h])?)
    } else {
        None
    };
    let (q_norm, k_norm) = if c.qk_norm {
        let d = c.head_dim;
        (
            Some(attn("q_norm.weight", &[d])?),
            Some(attn("k_norm.weight", &[d])?),
        )
    } else {
        (None, None)
    };
    let mut gate_up = w.f32(&format!("{p}.mlp.gate_proj.weight"), &[i, h])?;
    gate_up.extend(w.f32(&format!("{p}.mlp.up_proj.weight"), &[i, h])?);
    Ok(Block {
        input_norm: w.f32(&format!("{p}.input_layernorm.weight"), &[h])?,
        qkv: Linear::new(qkv_w, qkv_b, q + 2 * kv, h),
        q_norm,
        k_norm,
        o_proj: Linear::new(attn("o_proj.weight", &[h, q])?, o_b, h, q),
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

impl Engine for CpuModel {
    type Cache = KvCache;

    fn config(&self) -> &Config {
        &self.config
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn new_cache(&self) -> KvCache {
        CpuModel::new_cache(self)
    }
    fn forward(&self, caches: &mut [KvCache], req: &Request) -> Result<Output> {
        model::forward(self, caches, req)
    }
    fn greedy(
        &self,
        caches: &mut [KvCache],
        first: Request,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        model::greedy(self, caches, first, max_new)
    }
    fn head_argmax(&self, final_normed: Vec<Vec<f32>>) -> Result<Vec<u32>> {
        model::head_argmax(self, final_normed, || self.new_cache())
    }
    fn describe(&self) -> String {
        self.hardware()
    }
    fn hardware(&self) -> String {
        "cpu f32".into()
    }
    fn weight_elem_bytes(&self) -> usize {
        4
    }
}
