//! The CPU forward pass: packed batches of rows with unequal lengths, each continuing its
//! own KV cache, starting from tokens or from given states at any site, with
//! residual-stream reads and writes carried out where the pass reaches their site. What a
//! pass is asked is `crate::request`.
//!
//! Rows are packed (no padding): every new token knows its row and absolute position, so
//! rows of different lengths cost only their own tokens. Writes at a site are applied
//! before reads at the same site, so a read sees what the next block will see.

use crate::backend::cpu::{attention, embedding, matmul, residual, rmsnorm, rope, swiglu};
use crate::error::Result;
use crate::kv::KvCache;
use crate::model::Model;
use crate::plan::{Init, Plan, StreamOps};
use crate::request::{Logits, Output, Request};
use crate::shape::AttnShape;
use crate::stream::{Site, State, WriteOp};

impl Model {
    /// Runs one pass over `caches.len()` rows (row r continues `caches[r]`).
    pub fn forward(&self, caches: &mut [KvCache], req: &Request) -> Result<Output> {
        let num_layers = self.config.num_layers;
        let hidden = self.config.hidden_size;
        let (start, plan, init) = Plan::new(&self.config, caches, &req.input)?;
        let ops = plan.stream_ops(&self.config, req, start)?;
        // every check before the first block, so a refused request leaves the caches as
        // they were
        let logit_rows = plan.logit_rows(&req.logits)?;
        let mut h = match init {
            Init::Ids(ids) => embedding::embedding(&self.embed, hidden, &ids),
            Init::States(states) => states,
        };
        let mut out = Output::default();

        self.apply_site(start, &mut h, &plan, &ops, &mut out.states);
        for (blocks, active) in plan.segments(start, num_layers) {
            let tokens = active.tokens.len();
            for layer in blocks {
                let rows = active.rows.len();
                self.block(
                    layer,
                    &mut h[..tokens * hidden],
                    &active,
                    &mut caches[..rows],
                );
                self.apply_site(Site::BlockOut(layer), &mut h, &plan, &ops, &mut out.states);
            }
        }
        let needs_norm = !logit_rows.is_empty()
            || ops.reads.iter().any(|r| r.0 == Site::FinalNorm)
            || ops.writes.iter().any(|w| w.0 == Site::FinalNorm);
        if start != Site::FinalNorm && needs_norm {
            // rows that join at the final norm come normed already
            let normed_rows = plan
                .joined(Site::BlockOut(num_layers - 1), num_layers)
                .tokens
                .len();
            let (before, _) = h.split_at_mut(normed_rows * hidden);
            let mut normed = vec![0.0; before.len()];
            rmsnorm::rmsnorm(
                before,
                &self.final_norm,
                self.config.rms_norm_eps,
                &mut normed,
            );
            before.copy_from_slice(&normed);
            self.apply_site(Site::FinalNorm, &mut h, &plan, &ops, &mut out.states);
        }
        if !logit_rows.is_empty() {
            let x: Vec<f32> = logit_rows
                .iter()
                .flat_map(|&t| h[t * hidden..(t + 1) * hidden].iter().copied())
                .collect();
            let vocab = self.config.vocab_size;
            let mut y = vec![0.0; logit_rows.len() * vocab];
            matmul::matmul_bt(&x, logit_rows.len(), hidden, self.lm_head(), vocab, &mut y);
            out.logits = logit_rows
                .iter()
                .zip(y.chunks_exact(vocab))
                .map(|(&t, v)| Logits {
                    row: plan.tokens[t].row,
                    pos: plan.tokens[t].pos,
                    values: v.to_vec(),
                })
                .collect();
        }
        Ok(out)
    }

    fn apply_site(
        &self,
        site: Site,
        h: &mut [f32],
        plan: &Plan,
        ops: &StreamOps,
        states: &mut Vec<State>,
    ) {
        let d = self.config.hidden_size;
        for &(s, t, op) in &ops.writes {
            if s == site {
                let (WriteOp::Replace(v) | WriteOp::Add(v)) = op;
                residual::write_row(&mut h[t * d..(t + 1) * d], v, matches!(op, WriteOp::Add(_)));
            }
        }
        for &(s, t) in &ops.reads {
            if s == site {
                states.push(State {
                    site,
                    row: plan.tokens[t].row,
                    pos: plan.tokens[t].pos,
                    values: h[t * d..(t + 1) * d].to_vec(),
                });
            }
        }
    }

    /// One decoder block over all new tokens, appending their keys/values to the caches.
    fn block(&self, layer: usize, h: &mut [f32], plan: &Plan, caches: &mut [KvCache]) {
        let c = &self.config;
        let b = &self.blocks[layer];
        let (d, n) = (c.hidden_size, plan.tokens.len());
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());

        let mut x = vec![0.0; n * d];
        rmsnorm::rmsnorm(h, &b.input_norm, c.rms_norm_eps, &mut x);
        let mut qkv = vec![0.0; n * b.qkv.out];
        matmul::linear(&x, n, &b.qkv, &mut qkv);
        let mut q = Vec::with_capacity(n * q_dim);
        let mut k = Vec::with_capacity(n * kv_dim);
        let mut v = Vec::with_capacity(n * kv_dim);
        for row in qkv.chunks_exact(b.qkv.out) {
            q.extend_from_slice(&row[..q_dim]);
            k.extend_from_slice(&row[q_dim..q_dim + kv_dim]);
            v.extend_from_slice(&row[q_dim + kv_dim..]);
        }
        let positions: Vec<usize> = plan.tokens.iter().map(|t| t.pos).collect();
        rope::rope(&mut q, &positions, c.num_heads, c.head_dim, &self.inv_freq);
        rope::rope(
            &mut k,
            &positions,
            c.num_kv_heads,
            c.head_dim,
            &self.inv_freq,
        );
        for (r, &(first, len)) in plan.rows.iter().enumerate() {
            let span = first * kv_dim..(first + len) * kv_dim;
            caches[r].append(layer, &k[span.clone()], &v[span]);
        }
        let shape = AttnShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        let attn = attention::attention(&q, &plan.tokens, caches, layer, &shape);
        let mut o = vec![0.0; n * d];
        matmul::linear(&attn, n, &b.o_proj, &mut o);
        residual::add_inplace(h, &o);

        rmsnorm::rmsnorm(h, &b.post_attention_norm, c.rms_norm_eps, &mut x);
        let mut gate_up = vec![0.0; n * b.gate_up.out];
        matmul::linear(&x, n, &b.gate_up, &mut gate_up);
        let mut act = vec![0.0; n * c.intermediate_size];
        swiglu::swiglu(&gate_up, c.intermediate_size, &mut act);
        matmul::linear(&act, n, &b.down, &mut o);
        residual::add_inplace(h, &o);
    }
}

impl crate::plan::CacheShape for KvCache {
    fn num_layers(&self) -> usize {
        KvCache::num_layers(self)
    }

    fn len(&self, layer: usize) -> usize {
        KvCache::len(self, layer)
    }
}
