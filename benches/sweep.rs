//! The next-token sweep's fast path as `qwen-scope sweep` runs it per chunk of samples:
//! the source passes (`run_sources`) and every cell of the three methods
//! (`NextToken::evaluate`), with the target prompt and the tuned lens prepared once
//! outside the timed part, as the sweep prepares them once per run. Throughput is in
//! cells (one decoded prediction of one method at one layer pair).
//!
//! On tests/fixtures/tiny-qwen2, and on models/smollm2-135m when it exists.
//! `cargo bench --bench sweep`.

mod common;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use qwen_scope::data::{parse_lines, DEFAULT_PROMPTS};
use qwen_scope::patchscope::next_token::{fit_tuned_lens, lens_rows, run_sources, NextToken};
use qwen_scope::patchscope::TOKEN_IDENTITY_PROMPT;
use qwen_scope::report::summary;
use qwen_scope::CpuModel;

/// The sweep's default seed (it picks each prompt's source position).
const SEED: u64 = 0;
/// Prompts the tuned lens is fitted on (every position), before the evaluated ones.
const TRAIN: usize = 4;

/// Registers the sweep over `samples` prompts of data/prompts.txt on `model`.
fn sweep_on(c: &mut Criterion, name: &str, model: &CpuModel, samples: usize) {
    let prompts = parse_lines(DEFAULT_PROMPTS);
    let encoded: Vec<(usize, Vec<u32>)> = prompts[..TRAIN + samples]
        .iter()
        .enumerate()
        .map(|(i, p)| (i, model.tokenizer.encode(p).expect("tokenize")))
        .collect();
    let (train, val) = encoded.split_at(TRAIN);
    let rows = lens_rows(model, train, SEED, true).expect("lens rows");
    let tuned = fit_tuned_lens(&rows).expect("tuned lens");
    let nt = NextToken::new(model, TOKEN_IDENTITY_PROMPT, tuned, false).expect("target");
    let sweep = || {
        let sources = run_sources(model, val, SEED).expect("sources");
        nt.evaluate(&sources).expect("evaluate")
    };
    // counted from a real run, the way the sweep command counts its cells
    let cells: usize = sweep().iter().map(|r| summary::cells(r).len()).sum();

    let mut g = c.benchmark_group("sweep");
    // an iteration is up to seconds: a fixed iteration count per sample
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(cells as u64));
    g.bench_function(
        BenchmarkId::new(name, format!("{samples}_samples_{cells}_cells")),
        |b| b.iter(sweep),
    );
    g.finish();
}

fn bench_sweep(c: &mut Criterion) {
    let tiny = common::load(&common::crate_path(common::TINY));
    sweep_on(c, "tiny-qwen2", &tiny, 8);
    match common::smollm2() {
        Some(dir) => sweep_on(c, "smollm2-135m", &common::load(&dir), 4),
        None => println!("sweep: smollm2-135m: SKIPPED: models/smollm2-135m is missing (tools/get_model.sh smollm2-135m makes it)"),
    }
}

criterion_group! {
    name = sweep;
    config = common::criterion(1000, 4000);
    targets = bench_sweep
}
criterion_main!(sweep);
