//! Rotary position embedding in place, inside a fused q/k/v buffer. CPU twin: `cpu::rope`;
//! kernels: kernels/rope.cu.

use super::*;

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
