//! The whole forward pass: a 1 x 32-token prefill, and one batched decode step of 8 rows
//! over a 32-token prompt cache, on models/smollm2-135m (the fixture tiny-qwen2 when it is
//! missing). CPU, and CUDA with f16 weights when a GPU is usable. Throughput is in tokens.
//!
//! `cargo bench --bench forward`.

mod common;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion,
    SamplingMode, Throughput,
};
use qwen_scope::backend::cuda::{CudaKvCache, CudaModel, DType};
use qwen_scope::data::fixed_token_rows;
use qwen_scope::Engine;
use qwen_scope::{KvCache, LogitsAt, Request};

const PROMPT: usize = 32;
const BATCH: usize = 8;

/// The requests every backend runs: logits at the last token, as generation asks them.
struct Passes {
    /// One row of `PROMPT` tokens.
    prefill: Request,
    /// `BATCH` rows of `PROMPT` tokens: the caches a decode step continues.
    batch_prompt: Request,
    /// One new token per row.
    step: Request,
}

impl Passes {
    fn new(vocab: usize) -> Self {
        let last = |rows| Request::tokens(rows).logits(LogitsAt::Last);
        let batch = fixed_token_rows(BATCH, PROMPT, vocab);
        let step = batch.iter().map(|r| vec![r[0]]).collect();
        Passes {
            prefill: last(fixed_token_rows(1, PROMPT, vocab)),
            batch_prompt: last(batch),
            step: last(step),
        }
    }
}

/// Registers a backend's prefill and decode benches. `run` is its forward pass and must
/// return only once the work is done; `decode_caches` makes a fresh batch of prompt
/// caches, so that every timed step runs at position `PROMPT` instead of piling up.
/// Caches leave the timed routine as its output, so freeing them is not timed either.
fn register<C>(
    g: &mut BenchmarkGroup<WallTime>,
    backend: &str,
    passes: &Passes,
    new_cache: impl Fn() -> C,
    run: impl Fn(&mut [C], &Request),
    mut decode_caches: impl FnMut() -> Vec<C>,
) {
    g.throughput(Throughput::Elements(PROMPT as u64));
    g.bench_function(
        BenchmarkId::new(backend, format!("prefill/1x{PROMPT}")),
        |b| {
            b.iter_batched(
                || [new_cache()],
                |mut caches| {
                    run(&mut caches, &passes.prefill);
                    caches
                },
                BatchSize::PerIteration,
            )
        },
    );
    g.throughput(Throughput::Elements(BATCH as u64));
    let decode = format!("decode/{BATCH}x1@{PROMPT}");
    g.bench_function(BenchmarkId::new(backend, decode), |b| {
        b.iter_batched(
            &mut decode_caches,
            |mut caches| {
                run(&mut caches, &passes.step);
                caches
            },
            BatchSize::PerIteration,
        )
    });
}

fn bench_forward(c: &mut Criterion) {
    let (model, name) = common::bench_model("forward");
    // looked up first, so that a SKIPPED line heads the report rather than trailing it
    let dev = common::cuda_device("cuda forward");
    let passes = Passes::new(model.config.vocab_size);
    let mut g = c.benchmark_group(format!("forward/{name}"));
    // a pass is milliseconds to seconds: a fixed iteration count per sample
    g.sampling_mode(SamplingMode::Flat);

    let cpu = |caches: &mut [KvCache], req: &Request| {
        model.forward(caches, req).expect("CPU forward");
    };
    // prefilled once; each decode batch starts from a copy, milliseconds of untimed
    // set-up where re-running the prompt would take longer than the step it prepares
    let mut filled: Vec<KvCache> = (0..BATCH).map(|_| model.new_cache()).collect();
    cpu(&mut filled, &passes.batch_prompt);
    register(
        &mut g,
        "cpu",
        &passes,
        || model.new_cache(),
        cpu,
        || filled.clone(),
    );

    if let Some(dev) = dev {
        let gpu = CudaModel::new(&model, dev.clone(), DType::F16).expect("weights upload");
        let run = |caches: &mut [CudaKvCache], req: &Request| {
            gpu.forward(caches, req).expect("CUDA forward");
            dev.synchronize().expect("synchronize");
        };
        // `CudaKvCache` has no Clone: each decode batch re-runs the prompt on the GPU.
        // (A prefill's own cache allocation is timed: every new prompt pays it.)
        let prompt_caches = || {
            let mut caches: Vec<CudaKvCache> = (0..BATCH).map(|_| gpu.new_cache()).collect();
            run(&mut caches, &passes.batch_prompt);
            caches
        };
        register(
            &mut g,
            "cuda-f16",
            &passes,
            || gpu.new_cache(),
            run,
            prompt_caches,
        );
    }
    g.finish();
}

criterion_group! {
    name = forward;
    config = common::criterion(1000, 3000);
    targets = bench_forward
}
criterion_main!(forward);
