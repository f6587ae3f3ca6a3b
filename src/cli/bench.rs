//! `qwen-scope bench`: prefill and decode throughput of the forward pass, median of runs,
//! with the roofline arithmetic of each (bytes moved, FLOPs, the rates they imply).

use anyhow::{ensure, Result};
use qwen_scope::data::fixed_token_rows;
use qwen_scope::{Config, Engine, LogitsAt, Request};
use std::time::Instant;

pub fn bench<E: Engine>(
    model: &E,
    tokens: usize,
    batch: usize,
    decode: usize,
    repeat: usize,
) -> Result<()> {
    ensure!(
        tokens > 0 && batch > 0 && repeat > 0,
        "--tokens, --batch and --repeat must be positive"
    );
    let rows = fixed_token_rows(batch, tokens, model.config().vocab_size);
    let mut prefill = Vec::new();
    let mut step = Vec::new();
    for _ in 0..repeat {
        let mut caches: Vec<_> = rows.iter().map(|_| model.new_cache()).collect();
        let t = Instant::now();
        // logits come back to the host: the timer stops after the device has finished
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
    let c = model.config();
    let elem = model.weight_elem_bytes();
    println!("device   {}", model.describe());
    let p = median(&mut prefill);
    let flops = (batch * tokens) as f64 * flops_per_token(c);
    println!(
        "prefill  {batch} x {tokens} tokens: {:8.2} ms  {:9.1} tokens/s  ({:.2} GFLOP in \
         matrix products: {:.1} GFLOP/s)",
        p * 1e3,
        (batch * tokens) as f64 / p,
        flops / 1e9,
        flops / p / 1e9
    );
    if decode > 0 {
        let s = median(&mut step);
        // mean context over the steps; every row reads all weights once per step, shared
        let context = tokens + decode / 2;
        let bytes = weight_bytes(c, elem) + batch * kv_bytes(c, elem, context);
        println!(
            "decode   {batch} rows, {decode} steps: {:8.2} ms/step  {:9.1} tokens/s  ({:.1} MB \
             read per step: {:.1} GB/s)",
            s * 1e3,
            batch as f64 / s,
            bytes as f64 / 1e6,
            bytes as f64 / s / 1e9
        );
    }
    Ok(())
}

/// Elements of the matrices a token multiplies with: q/k/v, o, gate/up, down per block,
/// and the LM head (the embedding lookup reads one row only).
fn matrix_params(c: &Config) -> usize {
    let (h, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    c.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * i) + c.vocab_size * h
}

/// Two FLOPs per matrix element per token (attention scores, a few % here, left out).
fn flops_per_token(c: &Config) -> f64 {
    2.0 * matrix_params(c) as f64
}

/// Bytes of weights one decode step reads: the matrices in the weight type, norms and
/// biases in f32.
fn weight_bytes(c: &Config, elem: usize) -> usize {
    let small = c.num_layers * (2 * c.hidden_size + c.q_dim() + 2 * c.kv_dim()) + c.hidden_size;
    matrix_params(c) * elem + small * 4
}

/// Bytes of keys and values one row reads at `context` cached positions.
fn kv_bytes(c: &Config, elem: usize, context: usize) -> usize {
    2 * c.num_layers * c.kv_dim() * context * elem
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
