//! SwiGLU on a fused gate/up buffer. CPU twin: `cpu::swiglu`; kernels: kernels/swiglu.cu.

use super::*;

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
