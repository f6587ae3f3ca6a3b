//! RMSNorm as transformers computes it for Qwen2/Llama: normalise in f32, then scale by
//! the weight (the cast back to the input dtype is the identity in f32).

use rayon::prelude::*;

/// `y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w` for every row of width `w.len()`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let d = w.len();
    assert_eq!(x.len(), y.len(), "rmsnorm: x and y differ in length");
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(yr, xr)| rmsnorm_row(xr, w, eps, yr));
}

fn rmsnorm_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((yi, xi), wi) in y.iter_mut().zip(x).zip(w) {
        *yi = wi * (xi * inv);
    }
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
}
