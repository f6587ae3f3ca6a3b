//! RMSNorm, f32 in, f32/f16/bf16 out, and per-head RMSNorm in place (Qwen3's q/k norm).
//! CPU twin: `cpu::rmsnorm`; kernels: kernels/rmsnorm.cu.

use super::*;

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

/// In place, for every token of `x` laid out by `layout` (`tokens` rows) and each of its
/// `heads` heads of `w.len()` values: `head = w * (head / sqrt(mean(head^2) + eps))`, e.g.
/// Qwen3's q_norm on the q part of a fused q/k/v buffer. Twin:
/// `cpu::rmsnorm::rmsnorm_heads`.
pub fn rmsnorm_heads(
    dev: &Device,
    x: &mut impl DevicePtrMut<f32>,
    layout: RowLayout,
    tokens: usize,
    heads: usize,
    w: &impl DevicePtr<f32>,
    eps: f32,
) -> Result<()> {
    let head_dim = w.len();
    check(head_dim > 0, || "rmsnorm_heads: empty weights".into())?;
    layout.check("rmsnorm_heads", tokens, heads * head_dim, x.len())?;
    let n = tokens * heads;
    if n == 0 {
        return Ok(());
    }
    let (hd_i, tokens_i, heads_i) = (
        int(head_dim, "head_dim")?,
        int(tokens, "tokens")?,
        int(heads, "heads")?,
    );
    let grid = u32::try_from(n)
        .ok()
        .filter(|&g| g <= i32::MAX as u32)
        .ok_or_else(|| Error::input(format!("rmsnorm_heads: {n} heads do not fit one grid")))?;
    let (stride, offset) = (layout.stride as i64, layout.offset as i64);
    let s = dev.stream();
    let (x, _g1) = x.device_ptr_mut(s);
    let (w, _g2) = w.device_ptr(s);
    let mut a = args![x, w, hd_i, eps, tokens_i, heads_i, stride, offset];
    let block = row_block(head_dim, 256);
    // SAFETY: sizes checked above. Nothing checks the argument list against the kernel's
    // C signature in kernels/: the two are kept in step by hand, and the GPU tests catch a slip.
    unsafe { dev.launch("rmsnorm_heads_f32", (grid, 1, 1), (block, 1, 1), 0, &mut a) }
}
