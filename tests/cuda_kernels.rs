//! Every CUDA kernel against its CPU twin in `qwen_scope::backend::cpu` on random inputs,
//! at several sizes (odd ones included), with f32/f16/bf16 where the kernel takes them.
//! Output buffers are poisoned (NaN, or u32::MAX) before each launch so that an element the
//! kernel fails to write shows up. Tolerances are stated per kernel.
//!
//! The GPU tests are ignored tests, so `cargo test` reports them as ignored; run them with
//! `cargo test --release --test cuda_kernels -- --include-ignored` where a GPU is (as
//! tools/gpu-check.sh does): there, a missing GPU or a build without kernels fails them.

mod common;
use common::assert_within;

use half::{bf16, f16};
use qwen_scope::backend::cpu::attention as cpu_att;
use qwen_scope::backend::cpu::{
    embedding as cpu_emb, logits as cpu_logits, matmul as cpu_mm, residual as cpu_res,
    rmsnorm as cpu_rms, rope as cpu_rope, swiglu as cpu_swiglu,
};
use qwen_scope::backend::cuda::kernels::{
    self as k, AttnBatch, KvTable, RowLayout, RowWrite, Splits,
};
use qwen_scope::backend::cuda::{self, gemm, CudaFloat, Device};
use qwen_scope::shape::{AttnShape, TokenAt};
use qwen_scope::Engine;
use qwen_scope::{CpuModel, KvCache, LogitsAt, Request};
use std::sync::Arc;

// ---- harness ---------------------------------------------------------------------------

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// The element types on the host side of the tests.
trait Host: CudaFloat + std::fmt::Debug {
    const NAME: &'static str;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    fn nan() -> Self {
        Self::from_f32(f32::NAN)
    }
    /// Relative rounding step of the type (half an ulp is the rounding error).
    const EPS: f32;
}

impl Host for f32 {
    const NAME: &'static str = "f32";
    const EPS: f32 = f32::EPSILON;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl Host for f16 {
    const NAME: &'static str = "f16";
    const EPS: f32 = 9.765625e-4;
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
impl Host for bf16 {
    const NAME: &'static str = "bf16";
    const EPS: f32 = 7.8125e-3;
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

fn to<T: Host>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

fn back<T: Host>(v: &[T]) -> Vec<f32> {
    v.iter().map(|&x| x.to_f32()).collect()
}

/// Values of `v` after a round trip through T.
fn rounded<T: Host>(v: &[f32]) -> Vec<f32> {
    back(&to::<T>(v))
}

fn poisoned<T: Host>(dev: &Device, n: usize) -> cudarc::driver::CudaSlice<T> {
    dev.upload(&vec![T::nan(); n]).unwrap()
}

fn down<T: Host>(dev: &Device, s: &cudarc::driver::CudaSlice<T>) -> Vec<f32> {
    back(&dev.download(s).unwrap())
}

// ---- device creation -------------------------------------------------------------------

#[test]
fn device_new_fails_clearly_without_a_driver_or_gpu() {
    // SAFETY: only tries to dlopen libcuda.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    if !driver {
        let e = Device::new(0).expect_err("no driver here").to_string();
        assert!(e.contains("no CUDA driver found (libcuda)"), "{e}");
        assert!(e.contains("--device cpu"), "{e}");
    } else {
        let e = Device::new(1 << 20)
            .expect_err("no such ordinal")
            .to_string();
        assert!(
            e.contains("does not exist") || e.contains("failed to initialise"),
            "{e}"
        );
    }
    if !cuda::kernels_embedded() {
        assert!(cuda::device::REBUILD_HINT.contains("cargo build --release"));
    }
}

// ---- embedding -------------------------------------------------------------------------

fn embedding_case<T: Host>(dev: &Device, rng: &mut Rng, vocab: usize, hidden: usize) {
    let table = to::<T>(&rng.vec(vocab * hidden, -1.0, 1.0));
    let mut ids: Vec<u32> = (0..13).map(|_| rng.below(vocab) as u32).collect();
    ids[0] = 0;
    ids[5] = (vocab - 1) as u32;
    let want = cpu_emb::embedding(&back(&table), hidden, &ids);
    let t = dev.upload(&table).unwrap();
    let i = dev.upload(&ids).unwrap();
    let mut out = poisoned::<f32>(dev, ids.len() * hidden);
    k::embedding(dev, &t, hidden, &i, &mut out).unwrap();
    // Exact: a copy and an exact widening.
    let what = format!("embedding {} vocab {vocab} hidden {hidden}", T::NAME);
    assert_within(&what, &down(dev, &out), &want, 0.0, 0.0);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn embedding_matches_cpu() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(1);
    for (vocab, hidden) in [(1000, 896), (151936, 100), (3, 7)] {
        embedding_case::<f32>(dev, &mut rng, vocab, hidden);
        embedding_case::<f16>(dev, &mut rng, vocab, hidden);
        embedding_case::<bf16>(dev, &mut rng, vocab, hidden);
    }
    // An id out of range gives a NaN row, not an out-of-bounds read.
    let t = dev.upload(&[1.0f32; 4 * 8]).unwrap();
    let i = dev.upload(&[3u32, 4]).unwrap();
    let mut out = dev.upload(&[0.0f32; 16]).unwrap();
    k::embedding(dev, &t, 8, &i, &mut out).unwrap();
    let got = dev.download(&out).unwrap();
    assert!(got[..8].iter().all(|&v| v == 1.0) && got[8..].iter().all(|v| v.is_nan()));
}

// ---- rmsnorm ---------------------------------------------------------------------------

fn rmsnorm_case<O: Host>(dev: &Device, rng: &mut Rng, rows: usize, d: usize) {
    let mut x = rng.vec(rows * d, -2.0, 2.0);
    if rows > 2 {
        x[d..2 * d].iter_mut().for_each(|v| *v *= 300.0); // a row of large values
    }
    let w = rng.vec(d, -1.5, 1.5);
    let eps = 1e-6;
    let mut want = vec![0.0; rows * d];
    cpu_rms::rmsnorm(&x, &w, eps, &mut want);
    let xd = dev.upload(&x).unwrap();
    let wd = dev.upload(&w).unwrap();
    let mut y = poisoned::<O>(dev, rows * d);
    k::rmsnorm(dev, &xd, &wd, eps, &mut y).unwrap();
    // f32: the sum of squares is reduced in another order (relative error ~1e-7 of the
    // mean), so 1e-5 relative. f16/bf16 output: the CPU value rounded to O, within one
    // step of O either way.
    let what = format!("rmsnorm -> {} rows {rows} d {d}", O::NAME);
    let got = down(dev, &y);
    if O::NAME == "f32" {
        assert_within(&what, &got, &want, 1e-6, 1e-5);
    } else {
        assert_within(&what, &got, &rounded::<O>(&want), 1e-6, O::EPS);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn rmsnorm_matches_cpu() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(2);
    for (rows, d) in [(1, 896), (5, 100), (33, 4099), (3, 8192)] {
        rmsnorm_case::<f32>(dev, &mut rng, rows, d);
        rmsnorm_case::<f16>(dev, &mut rng, rows, d);
        rmsnorm_case::<bf16>(dev, &mut rng, rows, d);
    }
}

/// Qwen3's q_norm / k_norm: every head of q and of k inside a fused QKV buffer, in place.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn rmsnorm_heads_matches_cpu_inside_a_fused_qkv_buffer() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(12);
    for (n, heads, kv_heads, hd) in [
        (7, 16, 8, 128), // Qwen3-0.6B/1.7B/4B
        (5, 32, 8, 128), // Qwen3-8B
        (11, 4, 2, 32),
        (3, 8, 2, 16),
        (2, 4, 1, 256),
        (9, 3, 3, 80),
        (1, 3, 1, 2),
    ] {
        let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
        let width = q_dim + 2 * kv_dim;
        let mut qkv = rng.vec(n * width, -2.0, 2.0);
        if n > 1 {
            // a token of large values (Qwen's attention-sink rows)
            qkv[width..2 * width].iter_mut().for_each(|v| *v *= 300.0);
        }
        let qw = rng.vec(hd, -1.5, 1.5);
        let kw = rng.vec(hd, 0.0, 3.0);
        let eps = 1e-6;
        let q_at = RowLayout {
            stride: width,
            offset: 0,
        };
        let k_at = RowLayout {
            stride: width,
            offset: q_dim,
        };
        let mut want = qkv.clone();
        cpu_rms::rmsnorm_heads(&mut want, q_at, heads, &qw, eps);
        cpu_rms::rmsnorm_heads(&mut want, k_at, kv_heads, &kw, eps);

        let mut x = dev.upload(&qkv).unwrap();
        let (qwd, kwd) = (dev.upload(&qw).unwrap(), dev.upload(&kw).unwrap());
        k::rmsnorm_heads(dev, &mut x, q_at, n, heads, &qwd, eps).unwrap();
        k::rmsnorm_heads(dev, &mut x, k_at, n, kv_heads, &kwd, eps).unwrap();
        let got = down(dev, &x);
        // As rmsnorm in f32: the sum of squares in another order, 1e-5 relative. V must be
        // untouched: checked exactly below.
        let what = format!("rmsnorm_heads {n} tokens, heads {heads}/{kv_heads} head_dim {hd}");
        assert_within(&what, &got, &want, 1e-6, 1e-5);
        for t in 0..n {
            let v = t * width + q_dim + kv_dim..(t + 1) * width;
            assert_eq!(&got[v.clone()], &qkv[v], "{what}: v of token {t} changed");
        }
    }
    // A layout that does not fit the buffer is refused before any launch.
    let mut x = dev.upload(&[0.0f32; 40]).unwrap();
    let w = dev.upload(&[1.0f32; 8]).unwrap();
    let at = RowLayout {
        stride: 20,
        offset: 8,
    };
    let e = k::rmsnorm_heads(dev, &mut x, at, 2, 2, &w, 1e-6).unwrap_err();
    assert!(e.to_string().contains("rmsnorm_heads"), "{e}");
}

// ---- rope ------------------------------------------------------------------------------

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn rope_matches_cpu_inside_a_fused_qkv_buffer() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(3);
    for (heads, kv_heads, hd, theta) in [
        (14, 2, 64, 1e6f32),
        (9, 3, 64, 1e4),
        (4, 1, 256, 1e4),
        (7, 7, 128, 1e6),
        (3, 1, 2, 1e4),
    ] {
        let n = 11;
        let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
        let width = q_dim + 2 * kv_dim;
        let qkv = rng.vec(n * width, -1.0, 1.0);
        let mut positions: Vec<usize> = (0..n).map(|_| rng.below(32768)).collect();
        positions[0] = 0;
        positions[1] = 32767;
        let inv_freq = cpu_rope::inv_freq(hd, theta);

        let mut q: Vec<f32> = qkv
            .chunks(width)
            .flat_map(|r| r[..q_dim].to_vec())
            .collect();
        let mut kk: Vec<f32> = qkv
            .chunks(width)
            .flat_map(|r| r[q_dim..q_dim + kv_dim].to_vec())
            .collect();
        cpu_rope::rope(
            &mut q,
            RowLayout::packed(heads * hd),
            heads,
            hd,
            &positions,
            &inv_freq,
        );
        cpu_rope::rope(
            &mut kk,
            RowLayout::packed(kv_heads * hd),
            kv_heads,
            hd,
            &positions,
            &inv_freq,
        );
        let mut want = qkv.clone();
        for t in 0..n {
            want[t * width..t * width + q_dim].copy_from_slice(&q[t * q_dim..(t + 1) * q_dim]);
            want[t * width + q_dim..t * width + q_dim + kv_dim]
                .copy_from_slice(&kk[t * kv_dim..(t + 1) * kv_dim]);
        }

        let mut x = dev.upload(&qkv).unwrap();
        let pos = dev
            .upload(&positions.iter().map(|&p| p as u32).collect::<Vec<_>>())
            .unwrap();
        let f = dev.upload(&inv_freq).unwrap();
        let q_at = RowLayout {
            stride: width,
            offset: 0,
        };
        let k_at = RowLayout {
            stride: width,
            offset: q_dim,
        };
        k::rope(dev, &mut x, q_at, heads, hd, &pos, &f).unwrap();
        k::rope(dev, &mut x, k_at, kv_heads, hd, &pos, &f).unwrap();
        // Same angle (one f32 multiply); sincosf and the CPU's sin/cos differ by an ulp or
        // two, values are O(1): 2e-6 absolute. V must be untouched (exact).
        let what = format!("rope heads {heads}/{kv_heads} head_dim {hd}");
        assert_within(&what, &down(dev, &x), &want, 2e-6, 1e-6);
    }
}

// ---- swiglu ----------------------------------------------------------------------------

fn swiglu_case<O: Host>(dev: &Device, rng: &mut Rng, tokens: usize, inter: usize) {
    let mut gu = rng.vec(tokens * 2 * inter, -2.0, 2.0);
    for t in 0..tokens {
        for v in &mut gu[t * 2 * inter..t * 2 * inter + inter] {
            *v *= 10.0; // gates over [-20, 20]
        }
    }
    let mut want = vec![0.0; tokens * inter];
    cpu_swiglu::swiglu(&gu, inter, &mut want);
    let g = dev.upload(&gu).unwrap();
    let mut out = poisoned::<O>(dev, tokens * inter);
    k::swiglu(dev, &g, inter, &mut out).unwrap();
    // expf vs the CPU's exp: an ulp or two, then a division and a product: 1e-5 relative.
    let what = format!("swiglu -> {} tokens {tokens} inter {inter}", O::NAME);
    let got = down(dev, &out);
    if O::NAME == "f32" {
        assert_within(&what, &got, &want, 1e-7, 1e-5);
    } else {
        assert_within(&what, &got, &rounded::<O>(&want), 1e-7, O::EPS);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn swiglu_matches_cpu() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(4);
    for (tokens, inter) in [(1, 4864), (7, 100), (3, 3)] {
        swiglu_case::<f32>(dev, &mut rng, tokens, inter);
        swiglu_case::<f16>(dev, &mut rng, tokens, inter);
        swiglu_case::<bf16>(dev, &mut rng, tokens, inter);
    }
}

// ---- cast ------------------------------------------------------------------------------

fn cast_case<T: Host>(dev: &Device, rng: &mut Rng) {
    let mut x = vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        65504.0,
        65520.0,
        1e-8,
        -3e-5,
        3.0e38,
        1.0 + 1.0 / 2048.0, // halfway between two f16 values: ties to even
    ];
    x.extend(rng.vec(1001, -70000.0, 70000.0));
    x.extend(rng.vec(1001, -1e-3, 1e-3));
    let want = to::<T>(&x);
    let xd = dev.upload(&x).unwrap();
    let mut y = poisoned::<T>(dev, x.len());
    k::cast(dev, &xd, &mut y).unwrap();
    let got = dev.download(&y).unwrap();
    // Exact: both round to nearest even.
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "cast f32 -> {} of {}: got {g}, want {w}",
            T::NAME,
            x[i]
        );
    }
    // And back, exactly.
    let mut z = poisoned::<f32>(dev, x.len());
    k::cast(dev, &y, &mut z).unwrap();
    assert_within(
        &format!("cast {} -> f32", T::NAME),
        &down(dev, &z),
        &back(&want),
        0.0,
        0.0,
    );
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn cast_rounds_like_half() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(5);
    cast_case::<f16>(dev, &mut rng);
    cast_case::<bf16>(dev, &mut rng);
}

// ---- residual --------------------------------------------------------------------------

fn add_bias_case<B: Host>(dev: &Device, rng: &mut Rng, rows: usize, n: usize) {
    let y0 = rng.vec(rows * n, -3.0, 3.0);
    let b = to::<B>(&rng.vec(n, -1.0, 1.0));
    let bf = back(&b);
    let mut want = y0.clone();
    for row in want.chunks_mut(n) {
        row.iter_mut().zip(&bf).for_each(|(v, bi)| *v += bi);
    }
    let mut y = dev.upload(&y0).unwrap();
    let bd = dev.upload(&b).unwrap();
    k::add_bias(dev, &mut y, &bd).unwrap();
    assert_within(
        &format!("add_bias {} {rows}x{n}", B::NAME),
        &down(dev, &y),
        &want,
        0.0,
        0.0,
    );
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn residual_ops_match_cpu() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(6);
    // h += delta: exact.
    let n = 896 * 5 + 3;
    let h0 = rng.vec(n, -5.0, 5.0);
    let delta = rng.vec(n, -5.0, 5.0);
    let mut want = h0.clone();
    cpu_res::add_inplace(&mut want, &delta);
    let mut h = dev.upload(&h0).unwrap();
    let dd = dev.upload(&delta).unwrap();
    k::add_inplace(dev, &mut h, &dd).unwrap();
    assert_within("add_inplace", &down(dev, &h), &want, 0.0, 0.0);

    // Writes in order, two to the same row: exact.
    let (tokens, hidden) = (6, 100);
    let h0 = rng.vec(tokens * hidden, -1.0, 1.0);
    let vals: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(hidden, -2.0, 2.0)).collect();
    let writes = [
        RowWrite {
            token: 2,
            add: false,
            values: &vals[0],
        },
        RowWrite {
            token: 2,
            add: true,
            values: &vals[1],
        },
        RowWrite {
            token: 5,
            add: true,
            values: &vals[2],
        },
        RowWrite {
            token: 0,
            add: false,
            values: &vals[3],
        },
    ];
    let mut want = h0.clone();
    for w in &writes {
        cpu_res::write_row(
            &mut want[w.token * hidden..(w.token + 1) * hidden],
            w.values,
            w.add,
        );
    }
    let mut h = dev.upload(&h0).unwrap();
    k::write_rows(dev, &mut h, hidden, &writes).unwrap();
    assert_within("write_rows", &down(dev, &h), &want, 0.0, 0.0);
    let bad = [RowWrite {
        token: tokens,
        add: false,
        values: &vals[0],
    }];
    assert!(k::write_rows(dev, &mut h, hidden, &bad).is_err());

    // Gather: exact.
    let idx = [3u32, 0, 3, 5];
    let want: Vec<f32> = idx
        .iter()
        .flat_map(|&i| h0[i as usize * hidden..(i as usize + 1) * hidden].to_vec())
        .collect();
    let src = dev.upload(&h0).unwrap();
    let id = dev.upload(&idx).unwrap();
    let mut dst = poisoned::<f32>(dev, idx.len() * hidden);
    k::gather_rows(dev, &src, hidden, &id, &mut dst).unwrap();
    assert_within("gather_rows", &down(dev, &dst), &want, 0.0, 0.0);

    // Bias, as the CPU linear adds it: exact.
    for (rows, n) in [(7, 1152), (1, 3)] {
        add_bias_case::<f32>(dev, &mut rng, rows, n);
        add_bias_case::<f16>(dev, &mut rng, rows, n);
        add_bias_case::<bf16>(dev, &mut rng, rows, n);
    }
}

// ---- logits ----------------------------------------------------------------------------

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn logits_ops_match_cpu() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(7);
    for vocab in [151936, 100, 7] {
        let rows = 3;
        let mut x = rng.vec(rows * vocab, -15.0, 15.0);
        // Row 0: the maximum twice (first index wins), row 1: -0 and +0 as the maximum
        // (equal for argmax, +0 first for total_cmp top-k), row 2 of small vocabs: ties.
        let (a, b) = (vocab / 3, 2 * vocab / 3 + 1);
        x[a] = 40.0;
        x[b] = 40.0;
        for v in &mut x[vocab..2 * vocab] {
            *v = -v.abs() - 1.0;
        }
        x[vocab + a] = -0.0;
        x[vocab + b] = 0.0;
        if vocab < 10 {
            x[2 * vocab..].fill(1.25);
        }

        let xd = dev.upload(&x).unwrap();
        // log-softmax: the CPU sums in f64; here expf (an ulp or two) summed in f64, then
        // x - lse rounded once: 1e-5 absolute for |x| <= 40.
        let want: Vec<f32> = x.chunks(vocab).flat_map(cpu_logits::log_softmax).collect();
        let mut y = poisoned::<f32>(dev, x.len());
        k::log_softmax(dev, &xd, vocab, &mut y).unwrap();
        assert_within(
            &format!("log_softmax vocab {vocab}"),
            &down(dev, &y),
            &want,
            1e-5,
            1e-6,
        );

        // argmax: exact.
        let want: Vec<u32> = x
            .chunks(vocab)
            .map(|r| cpu_logits::argmax(r) as u32)
            .collect();
        let mut am = dev.upload(&vec![u32::MAX; rows]).unwrap();
        k::argmax(dev, &xd, vocab, &mut am).unwrap();
        assert_eq!(dev.download(&am).unwrap(), want, "argmax vocab {vocab}");

        // top-k: exact indices and values.
        for kk in [1, 5, 50, vocab]
            .into_iter()
            .filter(|&kk| kk <= vocab.min(k::TOP_K_MAX))
        {
            let want: Vec<(usize, f32)> = x
                .chunks(vocab)
                .flat_map(|r| cpu_logits::top_k(r, kk))
                .collect();
            let mut idx = dev.upload(&vec![u32::MAX; rows * kk]).unwrap();
            let mut vals = poisoned::<f32>(dev, rows * kk);
            k::top_k(dev, &xd, vocab, kk, &mut idx, &mut vals).unwrap();
            let gi = dev.download(&idx).unwrap();
            let gv = dev.download(&vals).unwrap();
            for (j, (&(wi, wv), (&i, &v))) in want.iter().zip(gi.iter().zip(&gv)).enumerate() {
                assert!(
                    wi as u32 == i && wv.to_bits() == v.to_bits(),
                    "top_k vocab {vocab} k {kk} entry {j}: got ({i}, {v}), want ({wi}, {wv})"
                );
            }
        }
    }
}

// ---- gemm ------------------------------------------------------------------------------

fn gemm_case<T: Host>(dev: &Device, rng: &mut Rng, m: usize, kd: usize, n: usize, bias: bool) {
    let x = to::<T>(&rng.vec(m * kd, -1.0, 1.0));
    let w = to::<T>(&rng.vec(n * kd, -1.0, 1.0));
    let (xf, wf) = (back(&x), back(&w));
    let b = rng.vec(n, -1.0, 1.0);
    let lin = cpu_mm::Linear {
        w: wf.clone(),
        b: bias.then(|| b.clone()),
        out: n,
        inp: kd,
    };
    let mut want = vec![0.0; m * n];
    cpu_mm::linear(&xf, m, &lin, &mut want);
    let xd = dev.upload(&x).unwrap();
    let wd = dev.upload(&w).unwrap();
    let bd = dev.upload(&b).unwrap();
    let mut y = poisoned::<f32>(dev, m * n);
    gemm::linear(dev, &xd, m, kd, &wd, n, bias.then_some(&bd), &mut y).unwrap();
    let got = down(dev, &y);
    // Both sum exact products (f16/bf16 products are exact in f32) in f32, in different
    // orders: |error| <= 1e-5 * sum |x w| + 1e-6 (k * eps bounds it by 6e-5 worst case
    // for k = 896; the typical error is ~sqrt(k) * eps).
    for i in 0..m {
        for j in 0..n {
            let mag: f32 = (0..kd)
                .map(|t| (xf[i * kd + t] * wf[j * kd + t]).abs())
                .sum();
            let (g, wv) = (got[i * n + j], want[i * n + j]);
            let tol = 1e-5 * mag + 1e-6;
            assert!(
                (g - wv).abs() <= tol,
                "gemm {} {m}x{kd}x{n} at ({i},{j}): got {g}, want {wv}, tolerance {tol:e}",
                T::NAME
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn gemm_matches_cpu() {
    let dev: &Device = common::gpu();
    if let Err(e) = dev.blas() {
        panic!("gemm_matches_cpu needs cuBLAS: {e}");
    }
    let mut rng = Rng::new(8);
    for (m, kd, n, bias) in [
        (1, 896, 1152, true),
        (7, 896, 9728, false),
        (33, 100, 257, true),
        (2, 64, 151936, false),
    ] {
        gemm_case::<f32>(dev, &mut rng, m, kd, n, bias);
        gemm_case::<f16>(dev, &mut rng, m, kd, n, bias);
        gemm_case::<bf16>(dev, &mut rng, m, kd, n, bias);
    }
}

// ---- attention and the KV append ---------------------------------------------------------
//
// The CPU twin reads `KvCache`s, which only a forward pass fills; so each case builds a
// small random one-block Llama model of the wanted head shape in a temporary folder, runs
// the CPU forward pass to fill the caches (real RoPE'd keys and values, shared prefixes
// through `KvCache::fork`), then gives the same keys and values to the GPU and random
// queries to both.

struct AttnModel {
    _dir: tempfile::TempDir,
    model: CpuModel,
    shape: AttnShape,
}

fn random_model(heads: usize, kv_heads: usize, hd: usize, hidden: usize, seed: u64) -> AttnModel {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let (vocab, inter) = (512, 16);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hd,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let tok = common::fixture("tiny-llama");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), dir.path().join(f)).unwrap();
    }
    let mut rng = Rng::new(seed);
    let a = 2.0 / (hidden as f32).sqrt();
    let shapes: Vec<(&str, Vec<usize>, f32)> = vec![
        ("model.embed_tokens.weight", vec![vocab, hidden], 1.0),
        ("model.layers.0.input_layernorm.weight", vec![hidden], 0.0),
        (
            "model.layers.0.self_attn.q_proj.weight",
            vec![heads * hd, hidden],
            a,
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            vec![kv_heads * hd, hidden],
            a,
        ),
        (
            "model.layers.0.self_attn.v_proj.weight",
            vec![kv_heads * hd, hidden],
            a,
        ),
        (
            "model.layers.0.self_attn.o_proj.weight",
            vec![hidden, heads * hd],
            a,
        ),
        (
            "model.layers.0.post_attention_layernorm.weight",
            vec![hidden],
            0.0,
        ),
        (
            "model.layers.0.mlp.gate_proj.weight",
            vec![inter, hidden],
            a,
        ),
        ("model.layers.0.mlp.up_proj.weight", vec![inter, hidden], a),
        (
            "model.layers.0.mlp.down_proj.weight",
            vec![hidden, inter],
            a,
        ),
        ("model.norm.weight", vec![hidden], 0.0),
    ];
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape, scale)| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if scale == 0.0 {
                vec![1.0; n] // norms
            } else {
                rng.vec(n, -scale, scale)
            };
            (name.to_string(), shape, bytemuck::cast_slice(&v).to_vec())
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let model = CpuModel::load(dir.path().to_str().unwrap(), None).unwrap();
    AttnModel {
        _dir: dir,
        model,
        shape: AttnShape {
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
        },
    }
}

/// All cached keys and values of block 0 of `cache`, [positions, kv_dim] each.
fn cached_kv(cache: &KvCache) -> (Vec<f32>, Vec<f32>) {
    let (mut kk, mut vv) = (Vec::new(), Vec::new());
    for s in cache.segments(0, cache.len(0)) {
        kk.extend_from_slice(s.k);
        vv.extend_from_slice(s.v);
    }
    (kk, vv)
}

/// Softmax(q k^T / sqrt(hd)) v per (token, head) over each token's visible keys, written
/// like the CPU twin (cpu::attention::attend_one). Used where the keys and values differ
/// from the CPU cache's (f16/bf16 caches: the rounded values) and to check this test's
/// own plumbing against the twin.
fn reference_attention(
    q: &[f32],
    tokens: &[TokenAt],
    rows_kv: &[(Vec<f32>, Vec<f32>)],
    s: &AttnShape,
) -> Vec<f32> {
    let (hd, nh) = (s.head_dim, s.num_heads);
    let group = nh / s.num_kv_heads;
    let kv_dim = s.num_kv_heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; tokens.len() * nh * hd];
    for (t, tok) in tokens.iter().enumerate() {
        let (kc, vc) = &rows_kv[tok.row];
        for h in 0..nh {
            let qh = &q[(t * nh + h) * hd..][..hd];
            let off = (h / group) * hd;
            let scores: Vec<f32> = (0..=tok.pos)
                .map(|j| {
                    let kr = &kc[j * kv_dim + off..][..hd];
                    qh.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            let o = &mut out[(t * nh + h) * hd..][..hd];
            for (j, ej) in e.iter().enumerate() {
                let vr = &vc[j * kv_dim + off..][..hd];
                for (oi, vi) in o.iter_mut().zip(vr) {
                    *oi += ej / sum * vi;
                }
            }
        }
    }
    out
}

/// A shared prefix (K, V) and how much of it a row sees.
type Prefix = (Arc<(Vec<f32>, Vec<f32>)>, usize);

/// One attention scenario: the caches after the CPU pass, the tokens of that pass and
/// where each row's prefix ends.
struct Scenario {
    caches: Vec<KvCache>,
    tokens: Vec<TokenAt>,
    /// Per row: (prefix K, prefix V, visible prefix length) or None.
    prefix: Vec<Option<Prefix>>,
}

/// Rows of `lens` new tokens each, starting from fresh caches.
fn prefill(m: &AttnModel, rng: &mut Rng, lens: &[usize]) -> Scenario {
    let rows: Vec<Vec<u32>> = lens
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(512) as u32).collect())
        .collect();
    let mut caches: Vec<KvCache> = lens.iter().map(|_| m.model.new_cache()).collect();
    m.model
        .forward(&mut caches, &Request::tokens(rows).logits(LogitsAt::None))
        .unwrap();
    let tokens = lens
        .iter()
        .enumerate()
        .flat_map(|(r, &n)| (0..n).map(move |pos| TokenAt { row: r, pos }))
        .collect();
    Scenario {
        caches,
        tokens,
        prefix: vec![None; lens.len()],
    }
}

/// One shared prompt of `prompt` tokens; rows fork it at `forks[r].0` and add `forks[r].1`
/// new tokens.
fn forked(m: &AttnModel, rng: &mut Rng, prompt: usize, forks: &[(usize, usize)]) -> Scenario {
    let ids: Vec<u32> = (0..prompt).map(|_| rng.below(512) as u32).collect();
    let mut parent = vec![m.model.new_cache()];
    m.model
        .forward(
            &mut parent,
            &Request::tokens(vec![ids]).logits(LogitsAt::None),
        )
        .unwrap();
    let parent = Arc::new(parent.pop().unwrap());
    let shared = Arc::new(cached_kv(&parent));
    let mut caches: Vec<KvCache> = forks
        .iter()
        .map(|&(at, _)| parent.fork_at(at).unwrap())
        .collect();
    let rows: Vec<Vec<u32>> = forks
        .iter()
        .map(|&(_, n)| (0..n).map(|_| rng.below(512) as u32).collect())
        .collect();
    m.model
        .forward(&mut caches, &Request::tokens(rows).logits(LogitsAt::None))
        .unwrap();
    let tokens = forks
        .iter()
        .enumerate()
        .flat_map(|(r, &(at, n))| (at..at + n).map(move |pos| TokenAt { row: r, pos }))
        .collect();
    Scenario {
        caches,
        tokens,
        prefix: forks
            .iter()
            .map(|&(at, _)| Some((shared.clone(), at)))
            .collect(),
    }
}

/// Runs the scenario on the GPU with a `T` cache: uploads the prefixes, appends this
/// pass's keys/values with kv_append from a fused QKV-like buffer into poisoned own
/// buffers (checked against the CPU cache), then runs attention with each of `splits`
/// and checks it against the CPU twin (f32 cache) or the reference on rounded keys and
/// values (f16/bf16 cache).
fn run_scenario<T: Host>(
    dev: &Device,
    m: &AttnModel,
    sc: &Scenario,
    rng: &mut Rng,
    splits: &[Splits],
    what: &str,
) {
    let s = &m.shape;
    let (nh, hd) = (s.num_heads, s.head_dim);
    let kv_dim = s.num_kv_heads * hd;
    let q_dim = nh * hd;
    let n = sc.tokens.len();
    let what = format!(
        "{what} ({} cache, heads {nh}/{}, head_dim {hd})",
        T::NAME,
        s.num_kv_heads
    );

    // Fused [n, q_dim + 2 kv_dim] buffer: queries, then this pass's keys and values.
    let width = q_dim + 2 * kv_dim;
    let q = rng.vec(n * q_dim, -3.0, 3.0);
    let full: Vec<(Vec<f32>, Vec<f32>)> = sc.caches.iter().map(cached_kv).collect();
    let mut fused = vec![0.0f32; n * width];
    for (t, tok) in sc.tokens.iter().enumerate() {
        let (kc, vc) = &full[tok.row];
        let r = &mut fused[t * width..(t + 1) * width];
        r[..q_dim].copy_from_slice(&q[t * q_dim..(t + 1) * q_dim]);
        r[q_dim..q_dim + kv_dim].copy_from_slice(&kc[tok.pos * kv_dim..][..kv_dim]);
        r[q_dim + kv_dim..].copy_from_slice(&vc[tok.pos * kv_dim..][..kv_dim]);
    }
    let fused_d = dev.upload(&fused).unwrap();

    // Device caches: shared prefixes (uploaded once each) and poisoned own buffers with
    // two positions of slack, which attention must never read.
    let mut prefixes: Vec<(
        usize,
        cudarc::driver::CudaSlice<T>,
        cudarc::driver::CudaSlice<T>,
    )> = Vec::new();
    let mut owns = Vec::new();
    for (r, cache) in sc.caches.iter().enumerate() {
        let plen = sc.prefix[r].as_ref().map_or(0, |p| p.1);
        let own_len = cache.len(0) - plen;
        owns.push((
            poisoned::<T>(dev, (own_len + 2) * kv_dim),
            poisoned::<T>(dev, (own_len + 2) * kv_dim),
        ));
        if let Some((shared, _)) = &sc.prefix[r] {
            let key = Arc::as_ptr(shared) as usize;
            if !prefixes.iter().any(|p| p.0 == key) {
                prefixes.push((
                    key,
                    dev.upload(&to::<T>(&shared.0)).unwrap(),
                    dev.upload(&to::<T>(&shared.1)).unwrap(),
                ));
            }
        }
    }
    let mut b = KvTable::<T>::builder(dev, kv_dim);
    for (r, (ok, ov)) in owns.iter_mut().enumerate() {
        match &sc.prefix[r] {
            None => b.row(ok, ov).unwrap(),
            Some((shared, plen)) => {
                let key = Arc::as_ptr(shared) as usize;
                let p = prefixes.iter().find(|p| p.0 == key).unwrap();
                b.row_with_prefix(&p.1, &p.2, *plen, ok, ov).unwrap()
            }
        };
    }
    let table = b.build().unwrap();
    let batch = AttnBatch::new(dev, &sc.tokens, s).unwrap();

    k::kv_append(dev, &fused_d, width, q_dim, q_dim + kv_dim, &batch, &table).unwrap();
    // Expected: the CPU twin on the CPU caches; for half caches the reference on the
    // rounded keys and values (and the twin with a tolerance for the rounding).
    let twin = cpu_att::attention(
        &q,
        RowLayout::packed(s.num_heads * s.head_dim),
        &sc.tokens,
        &sc.caches,
        0,
        s,
    );
    let rounded_kv: Vec<(Vec<f32>, Vec<f32>)> = full
        .iter()
        .map(|(kc, vc)| (rounded::<T>(kc), rounded::<T>(vc)))
        .collect();
    let reference = reference_attention(&q, &sc.tokens, &rounded_kv, s);
    let vmax = full
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold(0.0f32, |a, &b| a.max(b.abs()));

    for &sp in splits {
        let mut out = poisoned::<f32>(dev, n * q_dim);
        let q_at = RowLayout {
            stride: width,
            offset: 0,
        };
        k::attention(dev, &fused_d, q_at, &batch, &table, s, &mut out, sp).unwrap();
        let got = down(dev, &out);
        // Outputs are convex combinations of values: f32 rounding in the scores, the
        // online softmax and another summation order give ~1e-6 relative to max |v|.
        let atol = 2e-5 * (1.0 + vmax);
        if T::NAME == "f32" {
            assert_within(
                &format!("{what} {sp:?} vs CPU twin"),
                &got,
                &twin,
                atol,
                1e-5,
            );
        } else {
            assert_within(
                &format!("{what} {sp:?} vs reference"),
                &got,
                &reference,
                atol,
                1e-5,
            );
            // Rounding K and V to T moves scores by ~|q||k| eps / sqrt(hd) and values by
            // eps |v|: a loose bound, it catches indexing errors, not rounding.
            assert_within(
                &format!("{what} {sp:?} vs CPU twin"),
                &got,
                &twin,
                40.0 * T::EPS * (1.0 + vmax),
                0.0,
            );
        }
    }
    // The table is done with: the own buffers now hold exactly the CPU cache's own positions (rounded to T), and
    // the slack is still NaN.
    for (r, (ok, ov)) in owns.iter().enumerate() {
        let plen = sc.prefix[r].as_ref().map_or(0, |p| p.1);
        let (kc, vc) = &full[r];
        let mut wk = rounded::<T>(&kc[plen * kv_dim..]);
        let mut wv = rounded::<T>(&vc[plen * kv_dim..]);
        wk.extend(vec![f32::NAN; 2 * kv_dim]);
        wv.extend(vec![f32::NAN; 2 * kv_dim]);
        assert_within(
            &format!("{what}: kv_append K row {r}"),
            &down(dev, ok),
            &wk,
            0.0,
            0.0,
        );
        assert_within(
            &format!("{what}: kv_append V row {r}"),
            &down(dev, ov),
            &wv,
            0.0,
            0.0,
        );
    }
}

/// Head shapes: Qwen2-0.5B (14/2 x 64), SmolLM2-135M (9/3 x 64), MHA with an odd head
/// count and head_dim 128, a group of 20 heads (> 16: two head chunks), head_dim 256,
/// head_dim 80 (not a multiple of 32), head_dim 16 (lanes idle).
const SHAPES: [(usize, usize, usize, usize); 7] = [
    (14, 2, 64, 896),
    (9, 3, 64, 576),
    (7, 7, 128, 100),
    (40, 2, 32, 128),
    (4, 1, 256, 64),
    (6, 2, 80, 96),
    (4, 2, 16, 64),
];

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn attention_prefill_matches_cpu() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(9);
    for (i, &(h, kvh, hd, hidden)) in SHAPES.iter().enumerate() {
        let m = random_model(h, kvh, hd, hidden, 100 + i as u64);
        let sc = prefill(&m, &mut rng, &[5, 37, 1, 70]);
        let splits = [Splits::Fixed(1), Splits::Fixed(3), Splits::Auto];
        run_scenario::<f32>(dev, &m, &sc, &mut rng, &splits, "prefill");
        run_scenario::<f16>(dev, &m, &sc, &mut rng, &splits[..1], "prefill");
        run_scenario::<bf16>(dev, &m, &sc, &mut rng, &splits[..1], "prefill");
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn attention_decode_over_shared_prefixes_matches_cpu() {
    let dev: &Device = common::gpu();
    let mut rng = Rng::new(10);
    for (i, &(h, kvh, hd, hidden)) in SHAPES.iter().enumerate() {
        let m = random_model(h, kvh, hd, hidden, 200 + i as u64);
        // Forks at the full prompt, mid-way, near the start and at 0 (nothing visible),
        // one new token each (decode) and one row with 3.
        let sc = forked(&m, &mut rng, 300, &[(300, 1), (123, 1), (7, 3), (0, 1)]);
        let splits = [
            Splits::Fixed(1),
            Splits::Fixed(2),
            Splits::Fixed(5),
            Splits::Fixed(64), // more parts than key tiles: empty parts
            Splits::Auto,
        ];
        run_scenario::<f32>(dev, &m, &sc, &mut rng, &splits, "decode");
        run_scenario::<f16>(
            dev,
            &m,
            &sc,
            &mut rng,
            &[Splits::Fixed(1), Splits::Auto],
            "decode",
        );
        run_scenario::<bf16>(dev, &m, &sc, &mut rng, &[Splits::Auto], "decode");
    }
}

/// Runs without a GPU: the test's own plumbing (cache extraction through fork prefixes,
/// the reference softmax) agrees with the CPU twin, so the GPU tests compare against the
/// right thing.
#[test]
fn attention_test_reference_matches_cpu_twin() {
    let mut rng = Rng::new(11);
    for &(h, kvh, hd, hidden) in &[(14, 2, 64, 896), (4, 1, 256, 64)] {
        let m = random_model(h, kvh, hd, hidden, 300);
        for sc in [
            prefill(&m, &mut rng, &[5, 1, 20]),
            forked(&m, &mut rng, 40, &[(40, 1), (13, 2), (0, 1)]),
        ] {
            let q = rng.vec(sc.tokens.len() * h * hd, -3.0, 3.0);
            let twin = cpu_att::attention(
                &q,
                RowLayout::packed(h * hd),
                &sc.tokens,
                &sc.caches,
                0,
                &m.shape,
            );
            let full: Vec<_> = sc.caches.iter().map(cached_kv).collect();
            for (r, c) in sc.caches.iter().enumerate() {
                assert_eq!(full[r].0.len(), c.len(0) * kvh * hd);
                if let Some((shared, plen)) = &sc.prefix[r] {
                    assert_eq!(&full[r].0[..plen * kvh * hd], &shared.0[..plen * kvh * hd]);
                }
            }
            let reference = reference_attention(&q, &sc.tokens, &full, &m.shape);
            assert_within("reference vs twin", &reference, &twin, 1e-5, 1e-5);
        }
    }
}
