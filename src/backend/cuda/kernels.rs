//! Safe wrappers around the kernels in kernels/*.cu, one per kernel family. Each checks
//! the buffer sizes against the shape it is given and fails with [`Error::Input`] instead
//! of launching out of bounds; each names its CPU twin in [`crate::backend::cpu`].
//!
//! Buffers are anything cudarc can give a device pointer of (`CudaSlice`, `CudaView`,
//! `CudaViewMut`), allocated on [`Device::stream`]. The two functions that go through a
//! [`KvTable`] (raw cache pointers) are `unsafe`: see their Safety sections.

use super::device::Device;
use super::{CudaFloat, DType};
use crate::error::{Error, Result};
use crate::shape::{AttnShape, TokenAt};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use std::ffi::c_void;
use std::marker::PhantomData;

/// Every kernel the module must provide; all are looked up when a [`Device`] is created.
pub const KERNELS: &[&str] = &[
    "embedding_f32",
    "embedding_f16",
    "embedding_bf16",
    "rmsnorm_f32",
    "rmsnorm_f16",
    "rmsnorm_bf16",
    "rope_f32",
    "swiglu_f32",
    "swiglu_f16",
    "swiglu_bf16",
    "cast_f32_f16",
    "cast_f32_bf16",
    "cast_f16_f32",
    "cast_bf16_f32",
    "add_inplace_f32",
    "write_rows_f32",
    "gather_rows_f32",
    "add_bias_f32",
    "add_bias_f16",
    "add_bias_bf16",
    "log_softmax_f32",
    "argmax_f32",
    "topk_f32",
    "attention_f32_d64",
    "attention_f32_d128",
    "attention_f32_d256",
    "attention_f16_d64",
    "attention_f16_d128",
    "attention_f16_d256",
    "attention_bf16_d64",
    "attention_bf16_d128",
    "attention_bf16_d256",
    "attention_combine",
    "kv_append_f32",
    "kv_append_f16",
    "kv_append_bf16",
];

/// Pointers to the listed locals, as cuLaunchKernel takes its parameters. Only plain
/// identifiers are accepted so that every pointee is a named local that outlives the
/// launch (a temporary would be dropped at the end of the `let`).
macro_rules! args {
    ($($a:ident),* $(,)?) => {
        [$((&$a) as *const _ as *mut c_void),*]
    };
}

const BLOCK: u32 = 256;
/// Grid-stride kernels never need more blocks than this.
const MAX_BLOCKS: usize = 1 << 20;

fn blocks_for(n: usize, block: u32) -> u32 {
    n.div_ceil(block as usize).clamp(1, MAX_BLOCKS) as u32
}

/// Threads for a one-block-per-row kernel: a multiple of 32, at most `max`.
fn row_block(width: usize, max: u32) -> u32 {
    (width.div_ceil(32) * 32).clamp(32, max as usize) as u32
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::input(format!("{what} = {v} does not fit in 32 bits")))
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Input(msg()))
    }
}

fn eq_len(op: &str, what: &str, got: usize, want: usize) -> Result<()> {
    check(got == want, || {
        format!("{op}: {what} has {got} elements, the shape needs {want}")
    })
}

/// Rows of `width` values starting `offset` values into rows of `stride` values, e.g. the
/// keys inside a fused [tokens, q_dim + 2 kv_dim] QKV buffer: stride = q_dim + 2 kv_dim,
/// offset = q_dim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLayout {
    pub stride: usize,
    pub offset: usize,
}

impl RowLayout {
    /// Contiguous rows of `width` values.
    pub fn packed(width: usize) -> Self {
        RowLayout {
            stride: width,
            offset: 0,
        }
    }

    /// Checks that `rows` rows of `width` values fit in a buffer of `len` values.
    fn check(&self, op: &str, rows: usize, width: usize, len: usize) -> Result<()> {
        check(self.offset + width <= self.stride, || {
            format!(
                "{op}: offset {} + width {width} exceeds the row stride {}",
                self.offset, self.stride
            )
        })?;
        if rows == 0 {
            return Ok(());
        }
        let need = (rows - 1) * self.stride + self.offset + width;
        check(need <= len, || {
            format!(
                "{op}: {rows} rows of stride {} need {need} values, the buffer has {len}",
                self.stride
            )
        })
    }
}

// ---- embedding -------------------------------------------------------------------------

/// `out[t, :] = table[ids[t], :]` as f32. Twin: `cpu::embedding::embedding`.
/// `table` is [vocab, hidden]; ids must be < vocab (an id out of range yields a NaN row).
pub fn embedding<T: CudaFloat>(
    dev: &Device,
    table: &impl DevicePtr<T>,
    hidden: usize,
    ids: &impl DevicePtr<u32>,
    out: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    check(hidden > 0 && table.len() % hidden == 0, || {
        format!(
            "embedding: table of {} values is not [vocab, {hidden}]",
            table.len()
        )
    })?;
    let n = ids.len();
    eq_len("embedding", "out", out.len(), n * hidden)?;
    if n == 0 {
        return Ok(());
    }
    let (vocab, hidden_i, n_i) = (
        int(table.len() / hidden, "vocab")?,
        int(hidden, "hidden")?,
        int(n, "tokens")?,
    );
    let s = dev.stream();
    let (table, _g1) = table.device_ptr(s);
    let (ids, _g2) = ids.device_ptr(s);
    let (out, _g3) = out.device_ptr_mut(s);
    let mut a = args![table, ids, out, hidden_i, vocab, n_i];
    let name = match T::DTYPE {
        DType::F32 => "embedding_f32",
        DType::F16 => "embedding_f16",
        DType::BF16 => "embedding_bf16",
    };
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe {
        dev.launch(
            name,
            (n as u32, 1, 1),
            (row_block(hidden, BLOCK), 1, 1),
            0,
            &mut a,
        )
    }
}

// ---- rmsnorm ---------------------------------------------------------------------------

/// `y[r] = w * (x[r] / sqrt(mean(x[r]^2) + eps))` per row of width `w.len()`, y in f32 or
/// f16/bf16 (for the next GEMM). Twin: `cpu::rmsnorm::rmsnorm`.
pub fn rmsnorm<O: CudaFloat>(
    dev: &Device,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    eps: f32,
    y: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    let d = w.len();
    check(d > 0 && x.len() % d == 0, || {
        format!("rmsnorm: x of {} values is not [rows, {d}]", x.len())
    })?;
    eq_len("rmsnorm", "y", y.len(), x.len())?;
    let rows = x.len() / d;
    if rows == 0 {
        return Ok(());
    }
    let (d_i, rows_i) = (int(d, "width")?, int(rows, "rows")?);
    let s = dev.stream();
    let (x, _g1) = x.device_ptr(s);
    let (w, _g2) = w.device_ptr(s);
    let (y, _g3) = y.device_ptr_mut(s);
    let mut a = args![x, w, y, d_i, eps, rows_i];
    let name = match O::DTYPE {
        DType::F32 => "rmsnorm_f32",
        DType::F16 => "rmsnorm_f16",
        DType::BF16 => "rmsnorm_bf16",
    };
    let block = if d >= 4096 { 1024 } else { row_block(d, 512) };
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe { dev.launch(name, (rows as u32, 1, 1), (block, 1, 1), 0, &mut a) }
}

// ---- rope ------------------------------------------------------------------------------

/// Rotates, in place, `heads` heads of `head_dim` per token of `x` laid out by `layout`
/// (token t at `positions[t]`). `inv_freq` is `cpu::rope::inv_freq(head_dim, theta)`.
/// Twin: `cpu::rope::rope`.
pub fn rope(
    dev: &Device,
    x: &mut impl DevicePtrMut<f32>,
    layout: RowLayout,
    heads: usize,
    head_dim: usize,
    positions: &impl DevicePtr<u32>,
    inv_freq: &impl DevicePtr<f32>,
) -> Result<()> {
    check(head_dim >= 2 && head_dim.is_multiple_of(2), || {
        format!("rope: head_dim {head_dim} must be even")
    })?;
    eq_len("rope", "inv_freq", inv_freq.len(), head_dim / 2)?;
    let n = positions.len();
    layout.check("rope", n, heads * head_dim, x.len())?;
    let total = n * heads * (head_dim / 2);
    if total == 0 {
        return Ok(());
    }
    let (n_i, heads_i, hd_i) = (
        int(n, "tokens")?,
        int(heads, "heads")?,
        int(head_dim, "head_dim")?,
    );
    let (stride, offset) = (layout.stride as i64, layout.offset as i64);
    let s = dev.stream();
    let (x, _g1) = x.device_ptr_mut(s);
    let (pos, _g2) = positions.device_ptr(s);
    let (f, _g3) = inv_freq.device_ptr(s);
    let mut a = args![x, pos, f, n_i, heads_i, hd_i, stride, offset];
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe {
        dev.launch(
            "rope_f32",
            (blocks_for(total, BLOCK), 1, 1),
            (BLOCK, 1, 1),
            0,
            &mut a,
        )
    }
}

// ---- swiglu ----------------------------------------------------------------------------

/// `out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]`, out in f32 or f16/bf16.
/// Twin: `cpu::swiglu::swiglu`.
pub fn swiglu<O: CudaFloat>(
    dev: &Device,
    gate_up: &impl DevicePtr<f32>,
    inter: usize,
    out: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    check(inter > 0 && out.len() % inter == 0, || {
        format!(
            "swiglu: out of {} values is not [tokens, {inter}]",
            out.len()
        )
    })?;
    eq_len("swiglu", "gate_up", gate_up.len(), 2 * out.len())?;
    let tokens = out.len() / inter;
    if tokens == 0 {
        return Ok(());
    }
    let (inter_i, tokens_i) = (int(inter, "intermediate")?, int(tokens, "tokens")?);
    let s = dev.stream();
    let (gu, _g1) = gate_up.device_ptr(s);
    let (o, _g2) = out.device_ptr_mut(s);
    let mut a = args![gu, o, inter_i, tokens_i];
    let name = match O::DTYPE {
        DType::F32 => "swiglu_f32",
        DType::F16 => "swiglu_f16",
        DType::BF16 => "swiglu_bf16",
    };
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe {
        dev.launch(
            name,
            (blocks_for(tokens * inter, BLOCK), 1, 1),
            (BLOCK, 1, 1),
            0,
            &mut a,
        )
    }
}

// ---- cast ------------------------------------------------------------------------------

/// `y = x` converted: f32 -> f16/bf16 (round to nearest even, as `half`) or f16/bf16 ->
/// f32. Twin: `half::f16::from_f32` and friends (the CPU backend is f32 only).
pub fn cast<I: CudaFloat, O: CudaFloat>(
    dev: &Device,
    x: &impl DevicePtr<I>,
    y: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    eq_len("cast", "y", y.len(), x.len())?;
    let name = match (I::DTYPE, O::DTYPE) {
        (DType::F32, DType::F16) => "cast_f32_f16",
        (DType::F32, DType::BF16) => "cast_f32_bf16",
        (DType::F16, DType::F32) => "cast_f16_f32",
        (DType::BF16, DType::F32) => "cast_bf16_f32",
        (i, o) => {
            return Err(Error::input(format!(
                "cast: {} to {} is not supported (one side must be f32, the other f16 or bf16)",
                i.suffix(),
                o.suffix()
            )))
        }
    };
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let n_i = n as i64;
    let s = dev.stream();
    let (x, _g1) = x.device_ptr(s);
    let (y, _g2) = y.device_ptr_mut(s);
    let mut a = args![x, y, n_i];
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe { dev.launch(name, (blocks_for(n, BLOCK), 1, 1), (BLOCK, 1, 1), 0, &mut a) }
}

// ---- residual --------------------------------------------------------------------------

/// `h += delta`. Twin: `cpu::residual::add_inplace`.
pub fn add_inplace(
    dev: &Device,
    h: &mut impl DevicePtrMut<f32>,
    delta: &impl DevicePtr<f32>,
) -> Result<()> {
    eq_len("add_inplace", "delta", delta.len(), h.len())?;
    let n = h.len();
    if n == 0 {
        return Ok(());
    }
    let n_i = n as i64;
    let s = dev.stream();
    let (h, _g1) = h.device_ptr_mut(s);
    let (d, _g2) = delta.device_ptr(s);
    let mut a = args![h, d, n_i];
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe {
        dev.launch(
            "add_inplace_f32",
            (blocks_for(n, BLOCK), 1, 1),
            (BLOCK, 1, 1),
            0,
            &mut a,
        )
    }
}

/// One residual-stream write: replace (or add to) row `token` with `values`.
#[derive(Debug, Clone, Copy)]
pub struct RowWrite<'a> {
    pub token: usize,
    pub add: bool,
    pub values: &'a [f32],
}

/// Applies `writes` to `h` ([tokens, hidden]) in order, so writes to one row compose as
/// on the CPU. Twin: `cpu::residual::write_row` applied in a loop.
pub fn write_rows(
    dev: &Device,
    h: &mut impl DevicePtrMut<f32>,
    hidden: usize,
    writes: &[RowWrite<'_>],
) -> Result<()> {
    check(hidden > 0 && h.len() % hidden == 0, || {
        format!(
            "write_rows: h of {} values is not [tokens, {hidden}]",
            h.len()
        )
    })?;
    let n_tokens = h.len() / hidden;
    if writes.is_empty() {
        return Ok(());
    }
    let mut idx = Vec::with_capacity(writes.len());
    let mut mode = Vec::with_capacity(writes.len());
    let mut values = Vec::with_capacity(writes.len() * hidden);
    for (i, w) in writes.iter().enumerate() {
        check(w.token < n_tokens, || {
            format!(
                "write_rows: write {i} targets token {}, the stream has {n_tokens}",
                w.token
            )
        })?;
        eq_len("write_rows", "a write vector", w.values.len(), hidden)?;
        idx.push(w.token as u32);
        mode.push(w.add as u32);
        values.extend_from_slice(w.values);
    }
    let (idx_d, mode_d, val_d) = (dev.upload(&idx)?, dev.upload(&mode)?, dev.upload(&values)?);
    let (hidden_i, n_tokens_i, n_w) = (
        int(hidden, "hidden")?,
        int(n_tokens, "tokens")?,
        int(writes.len(), "writes")?,
    );
    let s = dev.stream();
    let (h, _g1) = h.device_ptr_mut(s);
    let (ip, _g2) = idx_d.device_ptr(s);
    let (mp, _g3) = mode_d.device_ptr(s);
    let (vp, _g4) = val_d.device_ptr(s);
    let mut a = args![h, hidden_i, n_tokens_i, ip, mp, vp, n_w];
    // SAFETY: sizes and indices checked above. Nothing checks the argument list against the
    // kernel's C signature in kernels/: kept in step by hand, checked by the GPU tests.
    unsafe {
        dev.launch(
            "write_rows_f32",
            (blocks_for(hidden, BLOCK), 1, 1),
            (BLOCK, 1, 1),
            0,
            &mut a,
        )
    }
}

/// `dst[i, :] = src[idx[i], :]` for rows of `width` (an index out of range gives a NaN
/// row). The host-side row selection of the forward pass (reads, logit rows).
pub fn gather_rows(
    dev: &Device,
    src: &impl DevicePtr<f32>,
    width: usize,
    idx: &impl DevicePtr<u32>,
    dst: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    check(width > 0 && src.len() % width == 0, || {
        format!(
            "gather_rows: src of {} values is not [rows, {width}]",
            src.len()
        )
    })?;
    let n = idx.len();
    eq_len("gather_rows", "dst", dst.len(), n * width)?;
    if n == 0 {
        return Ok(());
    }
    check(n <= 65535, || {
        format!("gather_rows: {n} rows, at most 65535")
    })?;
    let (src_rows, width_i, n_i) = (
        int(src.len() / width, "rows")?,
        int(width, "width")?,
        int(n, "rows")?,
    );
    let s = dev.stream();
    let (sp, _g1) = src.device_ptr(s);
    let (ip, _g2) = idx.device_ptr(s);
    let (dp, _g3) = dst.device_ptr_mut(s);
    let mut a = args![sp, src_rows, ip, dp, width_i, n_i];
    let gx = width.div_ceil(BLOCK as usize).min(1024) as u32;
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe {
        dev.launch(
            "gather_rows_f32",
            (gx, n as u32, 1),
            (BLOCK, 1, 1),
            0,
            &mut a,
        )
    }
}

/// `y[r, :] += b` for y [rows, b.len()]. Twin: the bias step of `cpu::matmul::linear`.
pub fn add_bias<B: CudaFloat>(
    dev: &Device,
    y: &mut impl DevicePtrMut<f32>,
    b: &impl DevicePtr<B>,
) -> Result<()> {
    let n = b.len();
    check(n > 0 && y.len() % n == 0, || {
        format!("add_bias: y of {} values is not [rows, {n}]", y.len())
    })?;
    let rows = y.len() / n;
    if rows == 0 {
        return Ok(());
    }
    let (rows_i, n_i) = (int(rows, "rows")?, int(n, "width")?);
    let s = dev.stream();
    let (yp, _g1) = y.device_ptr_mut(s);
    let (bp, _g2) = b.device_ptr(s);
    let mut a = args![yp, bp, rows_i, n_i];
    let name = match B::DTYPE {
        DType::F32 => "add_bias_f32",
        DType::F16 => "add_bias_f16",
        DType::BF16 => "add_bias_bf16",
    };
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe {
        dev.launch(
            name,
            (blocks_for(rows * n, BLOCK), 1, 1),
            (BLOCK, 1, 1),
            0,
            &mut a,
        )
    }
}

// ---- logits ----------------------------------------------------------------------------

fn logit_rows(op: &str, x_len: usize, vocab: usize) -> Result<usize> {
    check(vocab > 0 && x_len.is_multiple_of(vocab), || {
        format!("{op}: {x_len} values are not [rows, {vocab}]")
    })?;
    let rows = x_len / vocab;
    int(vocab, "vocab")?;
    check(rows <= i32::MAX as usize, || format!("{op}: too many rows"))?;
    Ok(rows)
}

/// Log-softmax of each row of `x` ([rows, vocab]) into `y`. Twin: `cpu::logits::log_softmax`.
pub fn log_softmax(
    dev: &Device,
    x: &impl DevicePtr<f32>,
    vocab: usize,
    y: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let rows = logit_rows("log_softmax", x.len(), vocab)?;
    eq_len("log_softmax", "y", y.len(), x.len())?;
    if rows == 0 {
        return Ok(());
    }
    let (vocab_i, rows_i) = (vocab as i32, rows as i32);
    let s = dev.stream();
    let (xp, _g1) = x.device_ptr(s);
    let (yp, _g2) = y.device_ptr_mut(s);
    let mut a = args![xp, yp, vocab_i, rows_i];
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe {
        dev.launch(
            "log_softmax_f32",
            (rows as u32, 1, 1),
            (row_block(vocab, 1024), 1, 1),
            0,
            &mut a,
        )
    }
}

/// First index of the largest value per row. Twin: `cpu::logits::argmax`.
pub fn argmax(
    dev: &Device,
    x: &impl DevicePtr<f32>,
    vocab: usize,
    out: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    let rows = logit_rows("argmax", x.len(), vocab)?;
    eq_len("argmax", "out", out.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let (vocab_i, rows_i) = (vocab as i32, rows as i32);
    let s = dev.stream();
    let (xp, _g1) = x.device_ptr(s);
    let (op, _g2) = out.device_ptr_mut(s);
    let mut a = args![xp, op, vocab_i, rows_i];
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe {
        dev.launch(
            "argmax_f32",
            (rows as u32, 1, 1),
            (row_block(vocab, 1024), 1, 1),
            0,
            &mut a,
        )
    }
}

/// Largest `k` the top-k kernel accepts (it makes k passes over the row).
pub const TOP_K_MAX: usize = 256;

/// The `k` largest values per row with their indices, largest first, ties by smaller
/// index (f32::total_cmp order). `idx` and `vals` are [rows, k]. Twin: `cpu::logits::top_k`.
pub fn top_k(
    dev: &Device,
    x: &impl DevicePtr<f32>,
    vocab: usize,
    k: usize,
    idx: &mut impl DevicePtrMut<u32>,
    vals: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let rows = logit_rows("top_k", x.len(), vocab)?;
    check(k >= 1 && k <= vocab.min(TOP_K_MAX), || {
        format!("top_k: k = {k} must be in 1..={}", vocab.min(TOP_K_MAX))
    })?;
    eq_len("top_k", "idx", idx.len(), rows * k)?;
    eq_len("top_k", "vals", vals.len(), rows * k)?;
    if rows == 0 {
        return Ok(());
    }
    let (vocab_i, k_i, rows_i) = (vocab as i32, k as i32, rows as i32);
    let s = dev.stream();
    let (xp, _g1) = x.device_ptr(s);
    let (ip, _g2) = idx.device_ptr_mut(s);
    let (vp, _g3) = vals.device_ptr_mut(s);
    let mut a = args![xp, ip, vp, vocab_i, k_i, rows_i];
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe {
        dev.launch(
            "topk_f32",
            (rows as u32, 1, 1),
            (row_block(vocab, 1024), 1, 1),
            0,
            &mut a,
        )
    }
}

// ---- KV cache and attention ------------------------------------------------------------

/// One batch row's cache as the attention kernels see it (mirrors `struct RowKv` in
/// kernels/attention.cu): device addresses of an optional shared prefix, of which the row
/// sees `prefix_len` positions, and of the row's own K/V buffers (`own_cap` positions).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowKv {
    prefix_k: u64,
    prefix_v: u64,
    own_k: u64,
    own_v: u64,
    prefix_len: u32,
    own_cap: u32,
}

// SAFETY: plain integers, #[repr(C)] like the CUDA struct.
unsafe impl DeviceRepr for RowKv {}

impl RowKv {
    pub fn prefix_len(&self) -> usize {
        self.prefix_len as usize
    }

    /// Positions the row's own buffers hold.
    pub fn own_capacity(&self) -> usize {
        self.own_cap as usize
    }
}

/// The caches of the rows of a batch for one block (layer), in the cache dtype `T`, as a
/// table of device addresses (host copy kept for checks). Build it with
/// [`KvTable::builder`].
///
/// The table does not borrow the buffers it names: keeping them alive and unmoved while the
/// table is used is the caller's job (hence `unsafe` on [`attention`] and [`kv_append`]).
pub struct KvTable<T: CudaFloat> {
    host: Vec<RowKv>,
    dev: CudaSlice<RowKv>,
    kv_dim: usize,
    _t: PhantomData<T>,
}

pub struct KvTableBuilder<'d, T: CudaFloat> {
    dev: &'d Device,
    kv_dim: usize,
    rows: Vec<RowKv>,
    _t: PhantomData<T>,
}

impl<T: CudaFloat> KvTable<T> {
    /// Rows of `kv_dim` = num_kv_heads * head_dim values.
    pub fn builder(dev: &Device, kv_dim: usize) -> KvTableBuilder<'_, T> {
        KvTableBuilder {
            dev,
            kv_dim,
            rows: Vec::new(),
            _t: PhantomData,
        }
    }

    pub fn rows(&self) -> &[RowKv] {
        &self.host
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
}

impl<T: CudaFloat> KvTableBuilder<'_, T> {
    fn own(&self, k: &impl DevicePtr<T>, v: &impl DevicePtr<T>) -> Result<(u64, u64, u32)> {
        let kv = self.kv_dim;
        check(kv > 0 && k.len() == v.len() && k.len() % kv == 0, || {
            format!(
                "KV table row {}: own K/V buffers of {} and {} values are not [positions, {kv}]",
                self.rows.len(),
                k.len(),
                v.len()
            )
        })?;
        let cap = u32::try_from(k.len() / kv)
            .map_err(|_| Error::input("KV table: own buffer too long"))?;
        let s = self.dev.stream();
        Ok((k.device_ptr(s).0, v.device_ptr(s).0, cap))
    }

    /// A row with no prefix: its positions live in `own_k`/`own_v` ([capacity, kv_dim]).
    pub fn row(
        &mut self,
        own_k: &impl DevicePtr<T>,
        own_v: &impl DevicePtr<T>,
    ) -> Result<&mut Self> {
        let (own_k, own_v, own_cap) = self.own(own_k, own_v)?;
        self.rows.push(RowKv {
            own_k,
            own_v,
            own_cap,
            ..Default::default()
        });
        Ok(self)
    }

    /// A row that sees the first `prefix_len` positions of the shared `prefix_k`/`prefix_v`
    /// (read only) and then its own buffers.
    pub fn row_with_prefix(
        &mut self,
        prefix_k: &impl DevicePtr<T>,
        prefix_v: &impl DevicePtr<T>,
        prefix_len: usize,
        own_k: &impl DevicePtr<T>,
        own_v: &impl DevicePtr<T>,
    ) -> Result<&mut Self> {
        let need = prefix_len * self.kv_dim;
        check(prefix_k.len() >= need && prefix_v.len() >= need, || {
            format!(
                "KV table row {}: prefix of {prefix_len} positions needs {need} values, the \
                 buffers have {} and {}",
                self.rows.len(),
                prefix_k.len(),
                prefix_v.len()
            )
        })?;
        let prefix_len_u =
            u32::try_from(prefix_len).map_err(|_| Error::input("KV table: prefix too long"))?;
        let (own_k, own_v, own_cap) = self.own(own_k, own_v)?;
        let s = self.dev.stream();
        self.rows.push(RowKv {
            prefix_k: prefix_k.device_ptr(s).0,
            prefix_v: prefix_v.device_ptr(s).0,
            own_k,
            own_v,
            prefix_len: prefix_len_u,
            own_cap,
        });
        Ok(self)
    }

    pub fn build(&self) -> Result<KvTable<T>> {
        check(!self.rows.is_empty(), || "KV table: no rows".into())?;
        Ok(KvTable {
            dev: self.dev.upload(&self.rows)?,
            host: self.rows.clone(),
            kv_dim: self.kv_dim,
            _t: PhantomData,
        })
    }
}

/// Query rows per attention block (kernels/attention.cu QS_ATT_QROWS).
const ATT_QROWS: usize = 16;
const ATT_BK: usize = 32;

/// Dynamic shared memory of an attention launch for `head_dim`.
pub(crate) fn attention_smem_bytes(head_dim: usize) -> u32 {
    ((ATT_QROWS * head_dim + ATT_BK * (head_dim + 1)) * 4) as u32
}

/// The largest head_dim an attention kernel variant handles, from its name.
pub(crate) fn head_dim_max(name: &str) -> usize {
    if name.ends_with("_d64") {
        64
    } else if name.ends_with("_d128") {
        128
    } else {
        256
    }
}

/// The largest head_dim the attention kernels support.
pub const HEAD_DIM_MAX: usize = 256;

/// The new tokens of one pass, for attention, RoPE and the KV append: token i belongs to
/// row `tokens[i].row` at `tokens[i].pos`. Built once per pass and reused by every layer.
pub struct AttnBatch {
    tokens: Vec<TokenAt>,
    tok: CudaSlice<u32>,
    pos: CudaSlice<u32>,
    tiles: CudaSlice<u32>,
    n_tiles: usize,
    tile_tokens: usize,
    head_chunk: usize,
    group: usize,
    max_len: usize,
}

impl AttnBatch {
    pub fn new(dev: &Device, tokens: &[TokenAt], shape: &AttnShape) -> Result<AttnBatch> {
        check_shape(shape)?;
        check(!tokens.is_empty(), || "attention: no tokens".into())?;
        check(tokens.len() <= i32::MAX as usize, || {
            "attention: too many tokens".into()
        })?;
        let group = shape.num_heads / shape.num_kv_heads;
        let head_chunk = group.min(ATT_QROWS);
        let tile_tokens = (ATT_QROWS / head_chunk).max(1);
        let mut tok = Vec::with_capacity(2 * tokens.len());
        let mut pos = Vec::with_capacity(tokens.len());
        let mut max_len = 0;
        for t in tokens {
            let (row, p) = (
                u32::try_from(t.row).map_err(|_| Error::input("attention: row out of range"))?,
                u32::try_from(t.pos)
                    .ok()
                    .filter(|&p| p < i32::MAX as u32)
                    .ok_or_else(|| Error::input("attention: position out of range"))?,
            );
            tok.extend([row, p]);
            pos.push(p);
            max_len = max_len.max(t.pos + 1);
        }
        let tiles = build_tiles(tokens, tile_tokens);
        let n_tiles = tiles.len() / 2;
        check(n_tiles < (1 << 31), || "attention: too many tiles".into())?;
        Ok(AttnBatch {
            tokens: tokens.to_vec(),
            tok: dev.upload(&tok)?,
            pos: dev.upload(&pos)?,
            tiles: dev.upload(&tiles)?,
            n_tiles,
            tile_tokens,
            head_chunk,
            group,
            max_len,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[TokenAt] {
        &self.tokens
    }

    /// The tokens' positions on the device ([tokens] u32), e.g. for [`rope`].
    pub fn positions(&self) -> &CudaSlice<u32> {
        &self.pos
    }

    /// Number of (row, up to 16 / group tokens) tiles the attention grid runs over.
    pub fn tiles(&self) -> usize {
        self.n_tiles
    }
}

/// (first token, count) runs of consecutive tokens of one row, at most `tile_tokens` each,
/// flattened.
fn build_tiles(tokens: &[TokenAt], tile_tokens: usize) -> Vec<u32> {
    let mut tiles: Vec<u32> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let n = tiles.len();
        let extend = n > 0
            && tokens[tiles[n - 2] as usize].row == t.row
            && (tiles[n - 1] as usize) < tile_tokens;
        if extend {
            tiles[n - 1] += 1;
        } else {
            tiles.extend([i as u32, 1]);
        }
    }
    tiles
}

fn check_shape(s: &AttnShape) -> Result<()> {
    check(
        s.num_kv_heads > 0 && s.num_heads > 0 && s.num_heads.is_multiple_of(s.num_kv_heads),
        || {
            format!(
                "attention: {} heads is not a multiple of {} KV heads",
                s.num_heads, s.num_kv_heads
            )
        },
    )?;
    check(s.head_dim >= 1 && s.head_dim <= HEAD_DIM_MAX, || {
        format!(
            "attention: head_dim {} is not in 1..={HEAD_DIM_MAX}",
            s.head_dim
        )
    })
}

fn check_rows<T: CudaFloat>(
    op: &str,
    batch: &AttnBatch,
    kv: &KvTable<T>,
    append: bool,
) -> Result<()> {
    for (i, t) in batch.tokens.iter().enumerate() {
        let r = kv.host.get(t.row).ok_or_else(|| {
            Error::input(format!(
                "{op}: token {i} is in row {}, the KV table has {} rows",
                t.row,
                kv.host.len()
            ))
        })?;
        let (plen, cap) = (r.prefix_len as usize, r.own_cap as usize);
        if append {
            check(t.pos >= plen, || {
                format!(
                    "{op}: row {} position {} lies in its read-only prefix ({plen} positions)",
                    t.row, t.pos
                )
            })?;
        }
        check(t.pos < plen + cap, || {
            format!(
                "{op}: row {} position {} is beyond its cache ({plen} prefix + {cap} own positions)",
                t.row, t.pos
            )
        })?;
    }
    Ok(())
}

/// Writes the new keys and values of `batch`'s tokens into their rows' own buffers: token
/// t's K is `src[t * layout.stride + k_offset ..][..kv_dim]`, its V at `v_offset`, stored
/// at own slot `pos - prefix_len` in the cache dtype. Twin: `KvCache::append` (src/kv.rs).
///
/// # Safety
/// Every buffer named in `kv` must still be alive, unmoved and not used by other work
/// while this runs; the rows' own buffers are written.
pub unsafe fn kv_append<T: CudaFloat>(
    dev: &Device,
    src: &impl DevicePtr<f32>,
    src_stride: usize,
    k_offset: usize,
    v_offset: usize,
    batch: &AttnBatch,
    kv: &KvTable<T>,
) -> Result<()> {
    let kv_dim = kv.kv_dim;
    let n = batch.len();
    RowLayout {
        stride: src_stride,
        offset: k_offset,
    }
    .check("kv_append (K)", n, kv_dim, src.len())?;
    RowLayout {
        stride: src_stride,
        offset: v_offset,
    }
    .check("kv_append (V)", n, kv_dim, src.len())?;
    check_rows("kv_append", batch, kv, true)?;
    let (stride, k_off, v_off) = (src_stride as i64, k_offset as i64, v_offset as i64);
    let (n_i, kv_dim_i) = (n as i32, int(kv_dim, "kv_dim")?);
    let s = dev.stream();
    let (sp, _g1) = src.device_ptr(s);
    let (tp, _g2) = batch.tok.device_ptr(s);
    let (rp, _g3) = kv.dev.device_ptr(s);
    let mut a = args![sp, stride, k_off, v_off, tp, rp, n_i, kv_dim_i];
    let name = match T::DTYPE {
        DType::F32 => "kv_append_f32",
        DType::F16 => "kv_append_f16",
        DType::BF16 => "kv_append_bf16",
    };
    // SAFETY: sizes and slots checked above; the table's buffers per this fn's contract.
    unsafe {
        dev.launch(
            name,
            (n as u32, 1, 1),
            (row_block(kv_dim, BLOCK), 1, 1),
            0,
            &mut a,
        )
    }
}

/// How the KV range is split across blocks (flash-decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Splits {
    /// Split long caches when the batch alone would not fill the GPU.
    #[default]
    Auto,
    /// Exactly this many parts (1 = no split), at most 1024.
    Fixed(usize),
}

/// Causal GQA: each token of `batch` attends to positions 0..=pos of its row in `kv`
/// (prefix, then own buffers, which must already hold this pass's keys: [`kv_append`]).
/// `q` holds [tokens, num_heads * head_dim] at `q_layout` (RoPE applied); `out` is
/// [tokens, num_heads, head_dim] f32. Twin: `cpu::attention::attention`.
///
/// # Safety
/// Every buffer named in `kv` must still be alive, unmoved and not written by other work
/// while this runs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention<T: CudaFloat>(
    dev: &Device,
    q: &impl DevicePtr<f32>,
    q_layout: RowLayout,
    batch: &AttnBatch,
    kv: &KvTable<T>,
    shape: &AttnShape,
    out: &mut impl DevicePtrMut<f32>,
    splits: Splits,
) -> Result<()> {
    check_shape(shape)?;
    let (nh, nkv, hd) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    check(nh / nkv == batch.group, || {
        "attention: the batch was built for another head grouping".into()
    })?;
    check(kv.kv_dim == nkv * hd, || {
        format!(
            "attention: KV table rows have {} values, {nkv} KV heads x {hd} need {}",
            kv.kv_dim,
            nkv * hd
        )
    })?;
    let n = batch.len();
    q_layout.check("attention (q)", n, nh * hd, q.len())?;
    eq_len("attention", "out", out.len(), n * nh * hd)?;
    check_rows("attention", batch, kv, false)?;

    let chunks = batch.group.div_ceil(batch.head_chunk);
    let grid_y = nkv * chunks;
    check(grid_y <= 65535, || "attention: too many heads".into())?;
    let base_blocks = batch.n_tiles * grid_y;
    let splits = match splits {
        Splits::Fixed(s) => {
            check((1..=1024).contains(&s), || {
                format!("attention: {s} splits, must be in 1..=1024")
            })?;
            s
        }
        Splits::Auto => {
            let fill = (2 * dev.sm_count() as usize).div_ceil(base_blocks.max(1));
            batch.max_len.div_ceil(256).min(fill).clamp(1, 64)
        }
    };
    let (name, smem) = {
        let class = if hd <= 64 {
            "d64"
        } else if hd <= 128 {
            "d128"
        } else {
            "d256"
        };
        let name: &'static str = match (T::DTYPE, class) {
            (DType::F32, "d64") => "attention_f32_d64",
            (DType::F32, "d128") => "attention_f32_d128",
            (DType::F32, _) => "attention_f32_d256",
            (DType::F16, "d64") => "attention_f16_d64",
            (DType::F16, "d128") => "attention_f16_d128",
            (DType::F16, _) => "attention_f16_d256",
            (DType::BF16, "d64") => "attention_bf16_d64",
            (DType::BF16, "d128") => "attention_bf16_d128",
            (DType::BF16, _) => "attention_bf16_d256",
        };
        (name, attention_smem_bytes(hd))
    };
    let partial: Option<CudaSlice<f32>> = if splits > 1 {
        // SAFETY: every element the combine step reads is written by the attention launch.
        Some(unsafe { dev.alloc(splits * n * nh * (hd + 2))? })
    } else {
        None
    };

    let (stride, offset) = (q_layout.stride as i64, q_layout.offset as i64);
    let (n_i, nh_i, nkv_i, hd_i) = (n as i32, nh as i32, nkv as i32, hd as i32);
    let scale = 1.0f32 / (hd as f32).sqrt();
    let (tt_i, hc_i, sp_i) = (
        batch.tile_tokens as i32,
        batch.head_chunk as i32,
        splits as i32,
    );
    let s = dev.stream();
    let (qp, _g1) = q.device_ptr(s);
    let (tp, _g2) = batch.tok.device_ptr(s);
    let (tl, _g3) = batch.tiles.device_ptr(s);
    let (rp, _g4) = kv.dev.device_ptr(s);
    let (op, _g5) = out.device_ptr_mut(s);
    let (pp, _g6) = match &partial {
        Some(p) => {
            let (ptr, g) = p.device_ptr(s);
            (ptr, Some(g))
        }
        None => (0, None),
    };
    let mut a = args![
        qp, stride, offset, tp, tl, rp, op, pp, n_i, nh_i, nkv_i, hd_i, scale, tt_i, hc_i, sp_i
    ];
    // SAFETY: sizes and cache ranges checked above; the table's buffers per this fn's
    // contract. The argument list is kept in step with the kernel's C signature by hand.
    unsafe {
        dev.launch(
            name,
            (batch.n_tiles as u32, grid_y as u32, splits as u32),
            (128, 1, 1),
            smem,
            &mut a,
        )?;
    }
    if splits > 1 {
        let mut b = args![pp, op, n_i, nh_i, hd_i, sp_i];
        let block = row_block(hd, BLOCK);
        // SAFETY: partial holds splits x tokens x heads x (hd + 2) values, out tokens x
        // heads x hd.
        unsafe {
            dev.launch(
                "attention_combine",
                ((n * nh) as u32, 1, 1),
                (block, 1, 1),
                0,
                &mut b,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_is_in_the_sources() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut all = String::new();
        for e in std::fs::read_dir(dir).unwrap() {
            all.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
        }
        for k in KERNELS {
            // Entry points are either written out or instantiated through a macro.
            assert!(
                all.contains(&format!("{k}(")) || all.contains(&format!("({k},")),
                "kernel {k} not found in kernels/"
            );
        }
    }

    #[test]
    fn tiles_cover_every_token_once_within_one_row() {
        let rows = [5usize, 1, 17, 2, 16];
        let mut tokens = Vec::new();
        for (r, &n) in rows.iter().enumerate() {
            tokens.extend((0..n).map(|p| TokenAt {
                row: r,
                pos: 40 + p,
            }));
        }
        // Row 1 again, after the others (rows need not be contiguous).
        tokens.push(TokenAt { row: 1, pos: 41 });
        for tile_tokens in [1, 2, 5, 16] {
            let t = build_tiles(&tokens, tile_tokens);
            let mut seen = vec![0; tokens.len()];
            for c in t.chunks(2) {
                let (first, count) = (c[0] as usize, c[1] as usize);
                assert!(count >= 1 && count <= tile_tokens);
                for i in first..first + count {
                    seen[i] += 1;
                    assert_eq!(tokens[i].row, tokens[first].row);
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "tile_tokens {tile_tokens}");
        }
    }

    #[test]
    fn shared_memory_fits_an_sm75_opt_in() {
        assert!(attention_smem_bytes(256) <= 64 * 1024);
        assert!(attention_smem_bytes(128) <= 48 * 1024);
    }
}
