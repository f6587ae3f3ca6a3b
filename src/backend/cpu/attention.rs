//! Causal grouped-query attention of new tokens against a KV cache (softmax in f32).
//! Each new token attends to every cached position up to and including its own.

use crate::kv::{KvCache, Segment};
use crate::shape::{AttnShape, RowLayout, TokenAt};
use rayon::prelude::*;

/// `q` holds [tokens, num_heads * head_dim] at `q_layout` (RoPE applied); the caches
/// already hold the keys and values of these tokens in block `layer`. Returns
/// [tokens, num_heads, head_dim].
pub fn attention(
    q: &[f32],
    q_layout: RowLayout,
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
    let dot = super::matmul::dot_kernel();
    // one (token, head) per item; the segment list and the scores buffer are reused
    // across the items of a rayon job (allocating them per item cost more than the math)
    out.par_chunks_mut(hd).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(segs, scores), (i, o)| {
            let (t, head) = (i / s.num_heads, i % s.num_heads);
            let tok = tokens[t];
            caches[tok.row].segments_into(layer, tok.pos + 1, segs);
            let qh = &q[t * q_layout.stride + q_layout.offset + head * hd..][..hd];
            let kv = (head / group) * hd..(head / group + 1) * hd;
            let at = Keys {
                segs,
                kv,
                kv_dim: s.num_kv_heads * hd,
            };
            attend_one(qh, &at, scale, dot, scores, o);
        },
    );
    out
}

/// One head's cached keys and values: the segments, the head's range within a cached
/// row, and the row width.
struct Keys<'s, 'a> {
    segs: &'s [Segment<'a>],
    kv: std::ops::Range<usize>,
    kv_dim: usize,
}

/// Softmax(q·K^T * scale) · V for one head; `dot` is the widest dot product this CPU
/// runs (a plain sum would be one long chain of dependent adds); `scores` is scratch.
fn attend_one(
    q: &[f32],
    at: &Keys,
    scale: f32,
    dot: fn(&[f32], &[f32]) -> f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (segs, kv, kv_dim) = (at.segs, at.kv.clone(), at.kv_dim);
    scores.clear();
    for seg in segs {
        for k in seg.k.chunks_exact(kv_dim) {
            scores.push(dot(q, &k[kv.clone()]) * scale);
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
            for (o, vi) in out.iter_mut().zip(&v[kv.clone()]) {
                *o += w * vi;
            }
        }
    }
}
