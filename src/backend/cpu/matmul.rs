//! y = x W^T (+ b) for weights stored [out, in] as in the safetensors files.
//!
//! `gemm` runs an M=1 product on one thread whatever parallelism it is given, so the
//! output columns are split across the rayon pool by hand; each part is one `gemm` call.

use rayon::prelude::*;

/// A linear layer: `w` is [out, inp] row-major, `b` optional [out].
pub struct Linear {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub out: usize,
    pub inp: usize,
}

/// Column parts narrower than this are not worth a thread of their own.
const MIN_COLS_PER_PART: usize = 64;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every part writes a disjoint set of output columns.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `y[m, out] = x[m, inp] · lin.w^T + lin.b`; `y` is overwritten.
pub fn linear(x: &[f32], m: usize, lin: &Linear, y: &mut [f32]) {
    matmul_bt(x, m, lin.inp, &lin.w, lin.out, y);
    if let Some(b) = &lin.b {
        y.par_chunks_mut(lin.out).for_each(|row| {
            row.iter_mut().zip(b).for_each(|(v, bi)| *v += bi);
        });
    }
}

/// `y[m, n] = x[m, k] · w^T` with `w` stored [n, k].
pub fn matmul_bt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), m * k, "matmul: x has the wrong length");
    assert_eq!(w.len(), n * k, "matmul: w has the wrong length");
    assert_eq!(y.len(), m * n, "matmul: y has the wrong length");
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let parts = threads.min(n.div_ceil(MIN_COLS_PER_PART)).max(1);
    let width = n.div_ceil(parts);
    let y_ptr = SendPtr(y.as_mut_ptr());
    (0..parts).into_par_iter().for_each(|p| {
        let n0 = p * width;
        let cols = width.min(n - n0);
        let y_ptr = y_ptr;
        // SAFETY: x, w and y were checked to hold m*k, n*k and m*n values; this part reads
        // rows n0..n0+cols of w and writes columns n0..n0+cols of y, disjoint from every
        // other part.
        unsafe {
            gemm::gemm(
                m,
                cols,
                k,
                y_ptr.0.add(n0),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr().add(n0 * k),
                k as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product_on_odd_shapes() {
        for &(m, k, n) in &[(1, 7, 5), (3, 64, 130), (17, 33, 257), (1, 576, 1536)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
                .collect();
            let mut y = vec![f32::NAN; m * n];
            matmul_bt(&x, m, k, &w, n, &mut y);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum();
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{m}x{k}x{n} at ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
