//! Token embedding lookup.

/// Rows of `table` ([vocab, hidden]) for `tokens`, concatenated. Ids are checked by the caller.
pub fn embedding(table: &[f32], hidden: usize, tokens: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(tokens.len() * hidden);
    for &t in tokens {
        let t = t as usize;
        out.extend_from_slice(&table[t * hidden..(t + 1) * hidden]);
    }
    out
}
