//! Token embedding lookup, widened to the f32 residual stream. CPU twin: `cpu::embedding`;
//! kernels: kernels/embedding.cu.

use super::*;

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
