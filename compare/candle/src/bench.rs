//! The timing protocol of qwen-scope's src/cli/bench.rs, on candle: the same token ids,
//! the same prefill and decode steps, the median of `repeat` runs, the same output lines.

use crate::load::Loaded;
use anyhow::{ensure, Result};
use std::time::Instant;

pub fn bench(
    m: &mut Loaded,
    tokens: usize,
    batch: usize,
    decode: usize,
    repeat: usize,
) -> Result<()> {
    ensure!(
        tokens > 0 && batch > 0 && repeat > 0,
        "--tokens, --batch and --repeat must be positive"
    );
    let rows = token_rows(batch, tokens, m.config.vocab_size as u64);
    let mut prefill = Vec::new();
    let mut step = Vec::new();
    for _ in 0..repeat {
        // a fresh KV cache per run, as qwen-scope makes new caches per run
        m.model.clear_kv_cache();
        let t = Instant::now();
        m.step(&rows, 0)?;
        prefill.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for s in 0..decode {
            let next: Vec<Vec<u32>> = rows.iter().map(|r| vec![r[s % tokens]]).collect();
            m.step(&next, tokens + s)?;
        }
        step.push(t.elapsed().as_secs_f64() / decode.max(1) as f64);
    }
    print_lines(batch, tokens, decode, &mut prefill, &mut step);
    Ok(())
}

/// Fixed pseudo-random ids, different per row: qwen-scope bench's formula.
fn token_rows(batch: usize, tokens: usize, vocab: u64) -> Vec<Vec<u32>> {
    (0..batch as u64)
        .map(|r| {
            (0..tokens as u64)
                .map(|i| ((r * 7919 + i * 104_729 + 13) % vocab) as u32)
                .collect()
        })
        .collect()
}

/// Character for character qwen-scope bench's two lines, so one parser reads both.
fn print_lines(batch: usize, tokens: usize, decode: usize, prefill: &mut [f64], step: &mut [f64]) {
    let p = median(prefill);
    println!(
        "prefill  {batch} x {tokens} tokens: {:8.2} ms  {:9.1} tokens/s",
        p * 1e3,
        (batch * tokens) as f64 / p
    );
    if decode > 0 {
        let s = median(step);
        println!(
            "decode   {batch} rows, {decode} steps: {:8.2} ms/step  {:9.1} tokens/s",
            s * 1e3,
            batch as f64 / s
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_qwen_scope_formula() {
        let rows = token_rows(2, 3, 49152);
        assert_eq!(
            rows[0],
            vec![13, (104_729 + 13) % 49152, (2 * 104_729 + 13) % 49152]
        );
        assert_eq!(rows[1][0], 7919 + 13);
    }
}
