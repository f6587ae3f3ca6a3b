//! Rotary position embedding in the non-interleaved rotate_half form (HF Qwen2/Llama):
//! dimension i pairs with i + head_dim/2, angle = position * theta^(-2i/head_dim).

use crate::shape::RowLayout;
use rayon::prelude::*;

/// Inverse frequencies as transformers computes them (f32 result of a float pow).
pub fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Rotates, in place, `heads` heads of `head_dim` per token of `x` laid out by `layout`
/// (token t at `positions[t]`), e.g. the q or the k part of a fused q/k/v buffer.
pub fn rope(
    x: &mut [f32],
    layout: RowLayout,
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    inv_freq: &[f32],
) {
    let width = heads * head_dim;
    assert!(
        layout.offset + width <= layout.stride && x.len() == positions.len() * layout.stride,
        "rope: x does not match the layout and positions"
    );
    let half = head_dim / 2;
    x.par_chunks_mut(layout.stride)
        .zip(positions.par_iter())
        .for_each(|(xt, &pos)| {
            let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
                .iter()
                .map(|f| {
                    let a = pos as f32 * f;
                    (a.cos(), a.sin())
                })
                .unzip();
            for head in xt[layout.offset..layout.offset + width].chunks_mut(head_dim) {
                for i in 0..half {
                    let (x1, x2) = (head[i], head[i + half]);
                    head[i] = x1 * cos[i] - x2 * sin[i];
                    head[i + half] = x2 * cos[i] + x1 * sin[i];
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let f = inv_freq(8, 10000.0);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        let mut x = orig.clone();
        rope(&mut x, RowLayout::packed(16), 2, 8, &[0], &f);
        assert_eq!(x, orig);
        rope(&mut x, RowLayout::packed(16), 2, 8, &[5], &f);
        // pair (0, 4) of head 0 rotates by angle 5 * 1.0
        let (c, s) = (5.0f32.cos(), 5.0f32.sin());
        assert!((x[0] - (orig[0] * c - orig[4] * s)).abs() < 1e-6);
        assert!((x[4] - (orig[4] * c + orig[0] * s)).abs() < 1e-6);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
    }
}
