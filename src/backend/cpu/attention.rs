//! Causal grouped-query attention of new tokens against a KV cache (softmax in f32).
//! Each new token attends to every cached position up to and including its own.

use crate::kv::{KvCache, Segment};
use rayon::prelude::*;

pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// One new token: which cache (batch row) it belongs to and its position.
#[derive(Clone, Copy)]
pub struct TokenAt {
    pub row: usize,
    pub pos: usize,
}

/// `q` is [tokens, num_heads, head_dim] (RoPE applied); the caches already hold the keys
/// and values of these tokens in block `layer`. Returns [tokens, num_heads, head_dim].
pub fn attention(
    q: &[f32],
    tokens: &[TokenAt],
    caches: &[KvCache],
    layer: usize,
    s: &AttnShape,
) -> Vec<f32> {
    let hd = s.head_dim;
    let q_dim = s.num_heads * hd;
    let group = s.num_heads / s.num_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; tokens.len() * q_dim];
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let (t, head) = (i / s.num_heads, i % s.num_heads);
        let tok = tokens[t];
        let segs = caches[tok.row].segments(layer, tok.pos + 1);
        let qh = &q[t * q_dim + head * hd..][..hd];
        attend_one(
            qh,
            &segs,
            (head / group) * hd,
            s.num_kv_heads * hd,
            scale,
            o,
        );
    });
    out
}

/// Softmax(q·K^T * scale) · V for one head over the given segments.
fn attend_one(
    q: &[f32],
    segs: &[Segment],
    kv_off: usize,
    kv_dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = q.len();
    let mut scores: Vec<f32> = Vec::new();
    for seg in segs {
        for k in seg.k.chunks_exact(kv_dim) {
            scores.push(dot(q, &k[kv_off..kv_off + hd]) * scale);
        }
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    let mut p = scores.iter();
    for seg in segs {
        for v in seg.v.chunks_exact(kv_dim) {
            let w = p.next().copied().unwrap_or(0.0) / sum;
            for (o, vi) in out.iter_mut().zip(&v[kv_off..kv_off + hd]) {
                *o += w * vi;
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
