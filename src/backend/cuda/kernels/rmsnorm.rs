//! RMSNorm, f32 in, f32/f16/bf16 out. CPU twin: `cpu::rmsnorm`; kernels:
//! kernels/rmsnorm.cu.

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
