//! Residual additions and residual-stream writes.

use rayon::prelude::*;

/// `h += delta`, elementwise.
pub fn add_inplace(h: &mut [f32], delta: &[f32]) {
    assert_eq!(h.len(), delta.len(), "residual add: shapes differ");
    h.par_iter_mut()
        .zip(delta.par_iter())
        .for_each(|(a, b)| *a += b);
}

/// Replaces (or adds to) one row of the stream.
pub fn write_row(row: &mut [f32], values: &[f32], add: bool) {
    if add {
        row.iter_mut().zip(values).for_each(|(a, b)| *a += b);
    } else {
        row.copy_from_slice(values);
    }
}
