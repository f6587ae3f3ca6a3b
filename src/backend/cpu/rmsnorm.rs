//! RMSNorm as transformers computes it for Qwen2/Qwen3/Llama: normalise in f32, then scale
//! by the weight (the cast back to the input dtype is the identity in f32). `rmsnorm` over
//! the rows of the stream; `rmsnorm_heads` in place over each head of q or k inside the fused
//! q/k/v buffer (Qwen3's q_norm and k_norm).

use crate::shape::RowLayout;
use rayon::prelude::*;

/// `y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w` for every row of width `w.len()`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let d = w.len();
    assert_eq!(x.len(), y.len(), "rmsnorm: x and y differ in length");
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(yr, xr)| rmsnorm_row(xr, w, eps, yr));
}

/// `1 / sqrt(mean(x^2) + eps)`, summed in order.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (mean_sq + eps).sqrt()
}

fn rmsnorm_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let inv = inv_rms(x, eps);
    for ((yi, xi), wi) in y.iter_mut().zip(x).zip(w) {
        *yi = wi * (xi * inv);
    }
}

/// In place, for every token of `x` laid out by `layout` and each of its `heads` heads of
/// `w.len()` values: `head = head / sqrt(mean(head^2) + eps) * w`, e.g. the q or the k part
/// of a fused q/k/v buffer.
pub fn rmsnorm_heads(x: &mut [f32], layout: RowLayout, heads: usize, w: &[f32], eps: f32) {
    let head_dim = w.len();
    let width = heads * head_dim;
    assert!(
        head_dim > 0
            && layout.offset + width <= layout.stride
            && x.len().is_multiple_of(layout.stride),
        "rmsnorm_heads: x does not match the layout"
    );
    x.par_chunks_mut(layout.stride).for_each(|xt| {
        for head in xt[layout.offset..layout.offset + width].chunks_mut(head_dim) {
            let inv = inv_rms(head, eps);
            for (xi, wi) in head.iter_mut().zip(w) {
                *xi = wi * (*xi * inv);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_rms_rows_are_scaled_by_the_weight() {
        let x = [3.0f32, -3.0, 3.0, -3.0];
        let w = [1.0f32, 2.0, 0.5, -1.0];
        let mut y = [0.0f32; 4];
        super::rmsnorm(&x, &w, 0.0, &mut y);
        assert_eq!(y, [1.0, -2.0, 0.5, 1.0]);
    }

    #[test]
    fn heads_are_normed_in_place_like_rows_and_the_rest_is_untouched() {
        use super::RowLayout;
        // 2 tokens, rows of 11: 1 value before, 2 heads of 4, 2 values after
        let x: Vec<f32> = (0..22).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let w = [1.0f32, -0.5, 2.0, 0.25];
        let mut got = x.clone();
        let at = RowLayout {
            stride: 11,
            offset: 1,
        };
        super::rmsnorm_heads(&mut got, at, 2, &w, 1e-6);
        for t in 0..2 {
            let row = &x[t * 11..(t + 1) * 11];
            for h in 0..2 {
                let head = &row[1 + 4 * h..5 + 4 * h];
                let mut want = [0.0f32; 4];
                super::rmsnorm(head, &w, 1e-6, &mut want);
                assert_eq!(&got[t * 11 + 1 + 4 * h..][..4], &want);
            }
            assert_eq!(got[t * 11], row[0]);
            assert_eq!(&got[t * 11 + 9..(t + 1) * 11], &row[9..]);
        }
    }
}
