//! y = x W^T (+ b). Weights are transposed once at load to [in, out] row-major: `gemm` runs
//! small-M products about twice as fast on that layout (it packs less), and the M = 1
//! product (decode) becomes row-wise axpy, which streams the weights once.
//!
//! `gemm` runs an M=1 product on one thread whatever parallelism it is given, and splits
//! small-M work poorly, so output columns are split across the rayon pool by hand.

use rayon::prelude::*;

/// A linear layer: `wt` is W^T, [inp, out] row-major; `b` optional [out].
pub struct Linear {
    pub wt: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub out: usize,
    pub inp: usize,
}

impl Linear {
    /// From W stored [out, inp] as in the safetensors files.
    pub fn from_rows(w: &[f32], b: Option<Vec<f32>>, out: usize, inp: usize) -> Linear {
        Linear {
            wt: transpose(w, out, inp),
            b,
            out,
            inp,
        }
    }
}

/// [rows, cols] row-major -> [cols, rows] row-major.
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(w.len(), rows * cols, "transpose: wrong length");
    let mut t = vec![0.0f32; w.len()];
    const TILE: usize = 64;
    t.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(ct, block)| {
            let c0 = ct * TILE;
            let cols_here = block.len() / rows;
            for r in 0..rows {
                for c in 0..cols_here {
                    block[c * rows + r] = w[r * cols + c0 + c];
                }
            }
        });
    t
}

/// Column parts narrower than this are not worth a thread of their own (a GEMV part
/// streams `width` contiguous floats per weight row, so it wants wider parts).
const MIN_COLS_PER_PART: usize = 64;
const MIN_COLS_PER_GEMV_PART: usize = 1024;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every part writes a disjoint set of output columns.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the whole (Send) wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y[m, out] = x[m, inp] · W^T + b`; `y` is overwritten.
pub fn linear(x: &[f32], m: usize, lin: &Linear, y: &mut [f32]) {
    matmul(x, m, lin.inp, &lin.wt, lin.out, y);
    if let Some(b) = &lin.b {
        y.par_chunks_mut(lin.out).for_each(|row| {
            row.iter_mut().zip(b).for_each(|(v, bi)| *v += bi);
        });
    }
}

/// `y[m, n] = x[m, k] · wt[k, n]`.
pub fn matmul(x: &[f32], m: usize, k: usize, wt: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), m * k, "matmul: x has the wrong length");
    assert_eq!(wt.len(), n * k, "matmul: w has the wrong length");
    assert_eq!(y.len(), m * n, "matmul: y has the wrong length");
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let parts = if m == 1 {
        (threads * 4).min(n.div_ceil(MIN_COLS_PER_GEMV_PART))
    } else {
        threads.min(n.div_ceil(MIN_COLS_PER_PART))
    }
    .max(1);
    let width = n.div_ceil(parts);
    let y_ptr = SendPtr(y.as_mut_ptr());
    (0..parts).into_par_iter().for_each(|p| {
        let n0 = p * width;
        if n0 >= n {
            return;
        }
        let cols = width.min(n - n0);
        if m == 1 {
            // SAFETY: columns n0..n0+cols of the single output row belong to this part only.
            let yp = unsafe { std::slice::from_raw_parts_mut(y_ptr.get().add(n0), cols) };
            gemv_part(x, wt, n, n0, yp);
            return;
        }
        // SAFETY: x, wt and y were checked to hold m*k, k*n and m*n values; this part reads
        // columns n0..n0+cols of wt and writes the same columns of y, disjoint from every
        // other part.
        unsafe {
            gemm::gemm(
                m,
                cols,
                k,
                y_ptr.get().add(n0),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                wt.as_ptr().add(n0),
                1,
                n as isize,
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

/// y[j] = Σ_k x[k] · wt[k, n0 + j]: one pass over the rows of W^T, vectorised as axpy.
fn gemv_part(x: &[f32], wt: &[f32], n: usize, n0: usize, y: &mut [f32]) {
    y.fill(0.0);
    for (kk, &xk) in x.iter().enumerate() {
        let row = &wt[kk * n + n0..kk * n + n0 + y.len()];
        for (yj, &wj) in y.iter_mut().zip(row) {
            *yj += xk * wj;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product_on_odd_shapes() {
        for &(m, k, n) in &[
            (1, 7, 5),
            (3, 64, 130),
            (17, 33, 257),
            (1, 576, 1536),
            (2, 576, 1000),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let lin = Linear::from_rows(&w, Some(b.clone()), n, k);
            let mut y = vec![f32::NAN; m * n];
            linear(&x, m, &lin, &mut y);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = b[j] as f64
                        + (0..k)
                            .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                            .sum::<f64>();
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
