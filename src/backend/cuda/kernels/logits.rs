//! Vocabulary-side ops on logit rows: log-softmax, argmax, top-k. CPU twin: `cpu::logits`;
//! kernels: kernels/logits.cu.

use super::*;

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
