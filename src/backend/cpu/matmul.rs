//! y = x W^T (+ b) for weights stored [out, in] as in the safetensors files.
//!
//! `gemm` runs an M=1 product on one thread whatever parallelism it is given, so the
//! output columns are split across the rayon pool by hand; each part is one `gemm` call,
//! or, for M = 1 (decode), dot products over contiguous weight rows, which stream the
//! weights once. (Measured here: storing W^T [in, out] instead made both prefill and
//! decode slower.)

use rayon::prelude::*;

/// A linear layer: `w` is [out, inp] row-major, `b` optional [out].
pub struct Linear {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub out: usize,
    pub inp: usize,
}

impl Linear {
    pub fn new(w: Vec<f32>, b: Option<Vec<f32>>, out: usize, inp: usize) -> Linear {
        assert_eq!(w.len(), out * inp, "linear: weight shape");
        Linear { w, b, out, inp }
    }
}

/// Column parts narrower than this are not worth a thread of their own.
const MIN_COLS_PER_PART: usize = 64;

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
    if m <= SMALL_M {
        small_m(x, m, w, k, n, y);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if m <= DOT_FORM_MAX_M && is_x86_feature_detected!("avx512f") {
        blocked::matmul_bt(x, m, k, w, n, y);
        return;
    }
    let y_ptr = SendPtr(y.as_mut_ptr());
    (0..parts).into_par_iter().for_each(|p| {
        let n0 = p * width;
        let cols = width.min(n - n0);
        // SAFETY: x, w and y were checked to hold m*k, n*k and m*n values; this part reads
        // rows n0..n0+cols of w and writes columns n0..n0+cols of y, disjoint from every
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

/// Up to this many rows, products stream W once as dot products instead of calling
/// `gemm`, whose packing of W costs more than the arithmetic at M = 1 (measured: at M = 8
/// the two are even, so `gemm` keeps everything above 1).
const SMALL_M: usize = 1;

/// y[i, j] = w[j, :] · x[i, :] for small m: rows of W split across the pool in blocks,
/// each weight row read once for all m inputs.
fn small_m(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, y: &mut [f32]) {
    const ROWS_PER_TASK: usize = 64;
    let y_ptr = SendPtr(y.as_mut_ptr());
    let dot = dot_kernel();
    w.par_chunks(ROWS_PER_TASK * k)
        .enumerate()
        .for_each(|(task, ws)| {
            let j0 = task * ROWS_PER_TASK;
            for (dj, row) in ws.chunks_exact(k).enumerate() {
                for (i, xi) in x.chunks_exact(k).enumerate() {
                    // SAFETY: y holds m*n values; output column j0+dj belongs to this task only.
                    unsafe { *y_ptr.get().add(i * n + j0 + dj) = dot(row, xi) };
                }
            }
        });
    debug_assert_eq!(y.len(), m * n);
}

/// The widest dot product this CPU runs (AVX2+FMA where present, chosen at run time:
/// the crate is built for baseline x86-64).
pub(crate) fn dot_kernel() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return |a, b| {
            // SAFETY: the features were detected just above.
            unsafe { dot_avx2(a, b) }
        };
    }
    dot
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b)
}

/// A dot product with sixteen independent accumulators, so it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += xa[i] * xb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Up to this many rows, a product is done in dot-product form on AVX-512 (mod
/// `blocked`): W is read in place, never packed. `gemm` packs W on every call, which at
/// small M costs more than the arithmetic (measured on a 2-core AVX-512 Xeon, SmolLM2
/// shapes: packing was half of a 32-token prefill). Above it, X no longer fits in L2
/// beside a block of W and `gemm`'s cache blocking wins.
const DOT_FORM_MAX_M: usize = 64;

/// y = x W^T as register-blocked dot products: a tile of 4 rows of X by 4 rows of W keeps
/// 16 accumulators of 16 lanes in zmm registers and loads 8 vectors per 16 FMAs. The
/// inner dimension is cut into blocks of `KC` so that the X block, the W tile and the
/// accumulators of every X tile (spilled between blocks, reduced once at the end) stay in
/// L1 while the W tiles of a task pass over them; each W row is read from memory once.
#[cfg(target_arch = "x86_64")]
mod blocked {
    use super::SendPtr;
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    const TILE: usize = 4;
    /// Rows of W per rayon task.
    const ROWS_PER_TASK: usize = 32;
    /// X up to this size is read from L2 at the full depth k; a larger X is cut into
    /// blocks of `KC` (a multiple of 16) along k.
    const X_L2_BYTES: usize = 256 << 10;
    const KC: usize = 256;

    type Acc = [[__m512; TILE]; TILE];

    pub fn matmul_bt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
        let y_ptr = SendPtr(y.as_mut_ptr());
        let i_tiles = m.div_ceil(TILE);
        let kc = if m * k * 4 <= X_L2_BYTES { k } else { KC };
        w.par_chunks(ROWS_PER_TASK * k)
            .enumerate()
            .for_each(|(task, ws)| {
                let j_base = task * ROWS_PER_TASK;
                let rows = ws.len() / k;
                // SAFETY (all calls below): avx512f was detected by the caller; a tile
                // reads rows i0..i0+mr of x and j0..j0+nr of this task's W rows and
                // writes y[i, j_base + j] for those rows: columns of this task only.
                let mut acc: Vec<Acc> = vec![unsafe { zero() }; i_tiles];
                for j0 in (0..rows).step_by(TILE) {
                    let nr = (rows - j0).min(TILE);
                    acc.iter_mut().for_each(|a| *a = unsafe { zero() });
                    for k0 in (0..k).step_by(kc) {
                        let kb = k0..(k0 + kc).min(k);
                        for (t, a) in acc.iter_mut().enumerate() {
                            let i0 = t * TILE;
                            let mr = (m - i0).min(TILE);
                            let (xs, wt) = (&x[i0 * k..], &ws[j0 * k..]);
                            unsafe { tile(xs, wt, k, kb.clone(), (mr, nr), a) };
                        }
                    }
                    for (t, a) in acc.iter().enumerate() {
                        let i0 = t * TILE;
                        let out = y_ptr.get().wrapping_add(i0 * n + j_base + j0);
                        unsafe { store(a, ((m - i0).min(TILE), nr), out, n) };
                    }
                }
            });
    }

    /// y[i * n + j] = the sum of the lanes of a[i][j], for the tile's `size`.
    #[target_feature(enable = "avx512f")]
    unsafe fn store(a: &Acc, size: (usize, usize), y: *mut f32, n: usize) {
        for (i, a_row) in a.iter().enumerate().take(size.0) {
            for (j, &v) in a_row.iter().enumerate().take(size.1) {
                *y.add(i * n + j) = _mm512_reduce_add_ps(v);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    fn zero() -> Acc {
        [[_mm512_setzero_ps(); TILE]; TILE]
    }

    /// Dispatches a tile to the instance of its size.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile(
        x: &[f32],
        w: &[f32],
        k: usize,
        kb: std::ops::Range<usize>,
        size: (usize, usize),
        acc: &mut Acc,
    ) {
        match size {
            (4, 4) => kernel::<4, 4>(x, w, k, kb, acc),
            (3, 4) => kernel::<3, 4>(x, w, k, kb, acc),
            (2, 4) => kernel::<2, 4>(x, w, k, kb, acc),
            (1, 4) => kernel::<1, 4>(x, w, k, kb, acc),
            (mr, nr) => {
                for j in 0..nr {
                    for i in 0..mr {
                        let mut one = zero();
                        one[0][0] = acc[i][j];
                        kernel::<1, 1>(&x[i * k..], &w[j * k..], k, kb.clone(), &mut one);
                        acc[i][j] = one[0][0];
                    }
                }
            }
        }
    }

    /// acc[i][j] += x[i, kb] · w[j, kb] lane-wise, for i < MR, j < NR.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn kernel<const MR: usize, const NR: usize>(
        x: &[f32],
        w: &[f32],
        k: usize,
        kb: std::ops::Range<usize>,
        acc_mem: &mut Acc,
    ) {
        debug_assert!(x.len() >= (MR - 1) * k + kb.end && w.len() >= (NR - 1) * k + kb.end);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc: [[__m512; NR]; MR] =
            std::array::from_fn(|i| std::array::from_fn(|j| acc_mem[i][j]));
        let full = kb.start + (kb.end - kb.start) / 16 * 16;
        for t in (kb.start..full).step_by(16) {
            let xs: [__m512; MR] = std::array::from_fn(|i| _mm512_loadu_ps(xp.add(i * k + t)));
            let ws: [__m512; NR] = std::array::from_fn(|j| _mm512_loadu_ps(wp.add(j * k + t)));
            fma_tile(&mut acc, &xs, &ws);
        }
        if full < kb.end {
            // the last k % 16 elements, the lanes past k masked to zero
            let mask: __mmask16 = (1u16 << (kb.end - full)) - 1;
            let xs: [__m512; MR] =
                std::array::from_fn(|i| _mm512_maskz_loadu_ps(mask, xp.add(i * k + full)));
            let ws: [__m512; NR] =
                std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask, wp.add(j * k + full)));
            fma_tile(&mut acc, &xs, &ws);
        }
        for (mem, a) in acc_mem.iter_mut().zip(&acc) {
            mem[..NR].copy_from_slice(a);
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn fma_tile<const MR: usize, const NR: usize>(
        acc: &mut [[__m512; NR]; MR],
        xs: &[__m512; MR],
        ws: &[__m512; NR],
    ) {
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = _mm512_fmadd_ps(xs[i], ws[j], acc[i][j]);
            }
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
            (1, 100, 70),
            (4, 16, 4),
            (30, 575, 962),
            (64, 1536, 67),
            (65, 40, 33),
        ] {
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
