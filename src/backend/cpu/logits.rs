//! Vocabulary-side ops on logits: log-softmax, argmax, top-k.

/// Natural-log softmax, computed in f64 for the sum so surprisals are exact to f32.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    logits.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// Index of the largest value; the first one on ties (as torch.argmax).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// The `k` largest values with their indices, largest first.
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter().map(|i| (i, values[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_of_uniform_is_minus_ln_n() {
        let ls = log_softmax(&[2.0; 4]);
        assert!(ls.iter().all(|&v| (v + 4f32.ln()).abs() < 1e-6));
    }

    #[test]
    fn argmax_and_top_k_agree() {
        let v = [0.1, 3.0, -1.0, 3.0, 2.5];
        assert_eq!(argmax(&v), 1);
        assert_eq!(top_k(&v, 3), vec![(1, 3.0), (3, 3.0), (4, 2.5)]);
    }
}
