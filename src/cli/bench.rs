//! `qwen-scope bench`: prefill and decode throughput of the forward pass, median of runs.

use anyhow::{ensure, Result};
use qwen_scope::{LogitsAt, Model, Request};
use std::time::Instant;

pub fn bench(
    model: &Model,
    tokens: usize,
    batch: usize,
    decode: usize,
    repeat: usize,
) -> Result<()> {
    ensure!(
        tokens > 0 && batch > 0 && repeat > 0,
        "--tokens, --batch and --repeat must be positive"
    );
    let vocab = model.config.vocab_size as u64;
    // fixed pseudo-random ids, different per row
    let rows: Vec<Vec<u32>> = (0..batch as u64)
        .map(|r| {
            (0..tokens as u64)
                .map(|i| ((r * 7919 + i * 104_729 + 13) % vocab) as u32)
                .collect()
        })
        .collect();
    let mut prefill = Vec::new();
    let mut step = Vec::new();
    for _ in 0..repeat {
        let mut caches: Vec<_> = rows.iter().map(|_| model.new_cache()).collect();
        let t = Instant::now();
        model.forward(
            &mut caches,
            &Request::tokens(rows.clone()).logits(LogitsAt::Last),
        )?;
        prefill.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for s in 0..decode {
            let next = rows.iter().map(|r| vec![r[s % tokens]]).collect();
            model.forward(&mut caches, &Request::tokens(next).logits(LogitsAt::Last))?;
        }
        step.push(t.elapsed().as_secs_f64() / decode.max(1) as f64);
    }
    let p = median(&mut prefill);
    println!(
        "prefill  {batch} x {tokens} tokens: {:8.2} ms  {:9.1} tokens/s",
        p * 1e3,
        (batch * tokens) as f64 / p
    );
    if decode > 0 {
        let s = median(&mut step);
        println!(
            "decode   {batch} rows, {decode} steps: {:8.2} ms/step  {:9.1} tokens/s",
            s * 1e3,
            batch as f64 / s
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
