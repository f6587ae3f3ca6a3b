//! Element type conversions between f32, f16 and bf16 buffers; kernels: kernels/cast.cu.

use super::*;

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
            return Err(Error::internal(format!(
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
