//! Residual adds, row writes and gathers, bias adds. CPU twin: `cpu::residual`; kernels:
//! kernels/residual.cu.

use super::*;

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
