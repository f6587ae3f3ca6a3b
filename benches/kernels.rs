//! Every kernel family at Qwen2-0.5B's shapes: matmul (the four products of a block and
//! the LM head, one decode token and a 32-token prefill), rmsnorm, rope, attention,
//! swiglu, residual add, logits and embedding. Each family is one criterion group with
//! the CPU bench and, when a GPU is usable, its CUDA twins on the same inputs, so the
//! backends sit next to each other in the report.
//!
//! `cargo bench --bench kernels`; `-- matmul` for one family, `-- --quick` for a fast look.

mod common;

use common::qwen2_05b::*;
use common::values;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::f16;
use qwen_scope::backend::cpu::{
    attention, embedding, logits, matmul, residual, rmsnorm, rope, swiglu,
};
use qwen_scope::backend::cuda::kernels::{self as ck, AttnBatch, KvTable, RowLayout, Splits};
use qwen_scope::backend::cuda::{gemm, CudaFloat, Device};
use qwen_scope::data::fixed_token_rows;
use qwen_scope::shape::{AttnShape, TokenAt};
use qwen_scope::Engine;
use qwen_scope::{CpuModel, KvCache, LogitsAt, Request};
use std::hint::black_box;
use std::sync::{Arc, OnceLock};

/// The matrix products: (name, out features, in features), weights stored [out, in].
/// Qwen2's q/k/v and gate/up are fused as the model holds them.
const MATMULS: [(&str, usize, usize); 5] = [
    ("qkv", Q_DIM + 2 * KV_DIM, HIDDEN),
    ("o", HIDDEN, Q_DIM),
    ("gate_up", 2 * INTERMEDIATE, HIDDEN),
    ("down", HIDDEN, INTERMEDIATE),
    ("lm_head", VOCAB, HIDDEN),
];

/// Tokens per pass: one decode step (M = 1, GEMV) and a 32-token prefill (M = 32, GEMM).
const ROWS: [usize; 2] = [1, 32];
/// The attention prefill length, and the cached positions a decode token attends over.
const PREFILL: usize = 32;
const CACHED: usize = 256;
/// `qwen-scope forward`'s default `--top-k`.
const TOP_K: usize = 5;

// ---- GPU -------------------------------------------------------------------------------

/// The GPU, looked up once per run (the SKIPPED line is printed once).
fn gpu() -> Option<&'static Device> {
    static DEV: OnceLock<Option<Arc<Device>>> = OnceLock::new();
    DEV.get_or_init(|| common::cuda_device("cuda kernels"))
        .as_deref()
}

/// Host values for a device buffer of `T`.
trait HostFloat: CudaFloat + ValidAsZeroBits {
    fn from_f32(v: f32) -> Self;
}
impl HostFloat for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl HostFloat for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

fn upload<T: HostFloat>(dev: &Device, v: &[f32]) -> CudaSlice<T> {
    let host: Vec<T> = v.iter().map(|&x| T::from_f32(x)).collect();
    dev.upload(&host).expect("upload")
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(dev: &Device, n: usize) -> CudaSlice<T> {
    dev.zeros(n).expect("alloc")
}

/// One timed GPU iteration: launches are asynchronous, so wait for the work to finish
/// or criterion would time the launch alone.
fn run_sync(dev: &Device, launch: impl FnOnce() -> qwen_scope::Result<()>) {
    launch().expect("launch");
    dev.synchronize().expect("synchronize");
}

fn cuda_label<T: CudaFloat>() -> String {
    format!("cuda-{}", T::DTYPE.suffix())
}

// ---- shared shapes and throughputs -----------------------------------------------------

fn id(backend: &str, rows: usize) -> BenchmarkId {
    BenchmarkId::new(backend, format!("m{rows}"))
}

/// FLOPs as elements (so elem/s reads FLOP/s) and the weight bytes streamed, which bound
/// a GEMV: at M = 1 the bytes/s is the number to compare with the memory bandwidth.
fn matmul_throughput(m: usize, n: usize, k: usize, weight_bytes: usize) -> Throughput {
    Throughput::ElementsAndBytes {
        elements: (2 * m * n * k) as u64,
        bytes: (n * k * weight_bytes) as u64,
    }
}

/// Bytes a memory-bound kernel moves: `read` values of `I` in, `written` values of `O` out.
fn moved<I, O>(read: usize, written: usize) -> Throughput {
    let bytes = read * std::mem::size_of::<I>() + written * std::mem::size_of::<O>();
    Throughput::Bytes(bytes as u64)
}

/// Token positions of a pass of `m` tokens: a decode step after the cache, or a prefill
/// from position 0.
fn positions(m: usize) -> Vec<usize> {
    if m == 1 {
        vec![CACHED]
    } else {
        (0..m).collect()
    }
}

fn attn_shape() -> AttnShape {
    AttnShape {
        num_heads: HEADS,
        num_kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
    }
}

// ---- matmul ----------------------------------------------------------------------------

fn bench_matmul(c: &mut Criterion) {
    let dev = gpu();
    let mut g = c.benchmark_group("matmul");
    for (seed, &(name, n, k)) in MATMULS.iter().enumerate() {
        let w = values(n * k, seed as u64);
        let w_gpu = dev.map(|d| (upload::<f32>(d, &w), upload::<f16>(d, &w)));
        for m in ROWS {
            let x = values(m * k, 100 + m as u64);
            let mut y = vec![0.0f32; m * n];
            g.throughput(matmul_throughput(m, n, k, 4));
            // `matmul_bt` rather than `linear`: the bias add of Qwen2's qkv is an
            // elementwise pass, not part of the product being measured
            g.bench_function(id(&format!("cpu/{name}"), m), |b| {
                b.iter(|| matmul::matmul_bt(black_box(&x), m, k, &w, n, &mut y))
            });
            if let (Some(d), Some((w32, w16))) = (dev, &w_gpu) {
                cuda_matmul(&mut g, d, name, (m, n, k), w32, &x);
                cuda_matmul(&mut g, d, name, (m, n, k), w16, &x);
            }
        }
    }
    g.finish();
}

/// cuBLAS with x and W in `T` (what `CudaModel` runs for that weight dtype), y in f32.
fn cuda_matmul<T: HostFloat>(
    g: &mut BenchmarkGroup<WallTime>,
    dev: &Device,
    name: &str,
    (m, n, k): (usize, usize, usize),
    w: &CudaSlice<T>,
    x: &[f32],
) {
    let x = upload::<T>(dev, x);
    let mut y = zeros::<f32>(dev, m * n);
    g.throughput(matmul_throughput(m, n, k, std::mem::size_of::<T>()));
    g.bench_function(id(&format!("{}/{name}", cuda_label::<T>()), m), |b| {
        b.iter(|| run_sync(dev, || gemm::matmul_bt(dev, &x, m, k, w, n, &mut y)))
    });
}

// ---- elementwise families --------------------------------------------------------------

fn bench_rmsnorm(c: &mut Criterion) {
    let dev = gpu();
    let mut g = c.benchmark_group("rmsnorm");
    let w = values(HIDDEN, 1);
    for m in ROWS {
        let x = values(m * HIDDEN, 2);
        let mut y = vec![0.0f32; m * HIDDEN];
        g.throughput(moved::<f32, f32>(m * HIDDEN, m * HIDDEN));
        g.bench_function(id("cpu", m), |b| {
            b.iter(|| rmsnorm::rmsnorm(black_box(&x), &w, RMS_EPS, &mut y))
        });
        if let Some(d) = dev {
            // f16 output: the normed stream is the next GEMM's input in f16 mode
            cuda_rmsnorm::<f32>(&mut g, d, m, &x, &w);
            cuda_rmsnorm::<f16>(&mut g, d, m, &x, &w);
        }
    }
    g.finish();
}

fn cuda_rmsnorm<O: HostFloat>(
    g: &mut BenchmarkGroup<WallTime>,
    dev: &Device,
    m: usize,
    x: &[f32],
    w: &[f32],
) {
    let (x, w) = (upload::<f32>(dev, x), upload::<f32>(dev, w));
    let mut y = zeros::<O>(dev, x.len());
    g.throughput(moved::<f32, O>(x.len(), x.len()));
    g.bench_function(id(&cuda_label::<O>(), m), |b| {
        b.iter(|| run_sync(dev, || ck::rmsnorm(dev, &x, &w, RMS_EPS, &mut y)))
    });
}

/// RoPE on a pass's queries and keys, as a block applies it.
fn bench_rope(c: &mut Criterion) {
    let dev = gpu();
    let inv_freq = rope::inv_freq(HEAD_DIM, ROPE_THETA);
    let mut g = c.benchmark_group("rope");
    for m in ROWS {
        let pos = positions(m);
        let mut q = values(m * Q_DIM, 3);
        let mut k = values(m * KV_DIM, 4);
        let n = m * (Q_DIM + KV_DIM);
        g.throughput(moved::<f32, f32>(n, n));
        g.bench_function(id("cpu", m), |b| {
            b.iter(|| {
                rope::rope(
                    &mut q,
                    RowLayout::packed(Q_DIM),
                    HEADS,
                    HEAD_DIM,
                    &pos,
                    &inv_freq,
                );
                rope::rope(
                    &mut k,
                    RowLayout::packed(KV_DIM),
                    KV_HEADS,
                    HEAD_DIM,
                    &pos,
                    &inv_freq,
                );
            })
        });
        if let Some(d) = dev {
            cuda_rope(&mut g, d, &pos, &inv_freq);
        }
    }
    g.finish();
}

/// On the GPU the queries and keys are rotated inside the fused QKV buffer.
fn cuda_rope(g: &mut BenchmarkGroup<WallTime>, dev: &Device, pos: &[usize], inv_freq: &[f32]) {
    let m = pos.len();
    let width = Q_DIM + 2 * KV_DIM;
    let mut qkv = upload::<f32>(dev, &values(m * width, 5));
    let pos: Vec<u32> = pos.iter().map(|&p| p as u32).collect();
    let pos = dev.upload(&pos).expect("upload");
    let inv_freq = upload::<f32>(dev, inv_freq);
    let at = |offset| RowLayout {
        stride: width,
        offset,
    };
    g.bench_function(id("cuda-f32", m), |b| {
        b.iter(|| {
            run_sync(dev, || {
                ck::rope(dev, &mut qkv, at(0), HEADS, HEAD_DIM, &pos, &inv_freq)?;
                ck::rope(
                    dev,
                    &mut qkv,
                    at(Q_DIM),
                    KV_HEADS,
                    HEAD_DIM,
                    &pos,
                    &inv_freq,
                )
            })
        })
    });
}

fn bench_swiglu(c: &mut Criterion) {
    let dev = gpu();
    let mut g = c.benchmark_group("swiglu");
    for m in ROWS {
        let gate_up = values(m * 2 * INTERMEDIATE, 6);
        let mut out = vec![0.0f32; m * INTERMEDIATE];
        g.throughput(moved::<f32, f32>(2 * m * INTERMEDIATE, m * INTERMEDIATE));
        g.bench_function(id("cpu", m), |b| {
            b.iter(|| swiglu::swiglu(black_box(&gate_up), INTERMEDIATE, &mut out))
        });
        if let Some(d) = dev {
            // f16 output: the activation is the down projection's input in f16 mode
            cuda_swiglu::<f32>(&mut g, d, m, &gate_up);
            cuda_swiglu::<f16>(&mut g, d, m, &gate_up);
        }
    }
    g.finish();
}

fn cuda_swiglu<O: HostFloat>(
    g: &mut BenchmarkGroup<WallTime>,
    dev: &Device,
    m: usize,
    gate_up: &[f32],
) {
    let gate_up = upload::<f32>(dev, gate_up);
    let mut out = zeros::<O>(dev, m * INTERMEDIATE);
    g.throughput(moved::<f32, O>(gate_up.len(), out.len()));
    g.bench_function(id(&cuda_label::<O>(), m), |b| {
        b.iter(|| run_sync(dev, || ck::swiglu(dev, &gate_up, INTERMEDIATE, &mut out)))
    });
}

fn bench_residual(c: &mut Criterion) {
    let dev = gpu();
    let mut g = c.benchmark_group("residual_add");
    for m in ROWS {
        // h grows by delta each iteration: bounded by the iteration count, far from overflow
        let mut h = values(m * HIDDEN, 7);
        let delta = values(m * HIDDEN, 8);
        g.throughput(moved::<f32, f32>(2 * m * HIDDEN, m * HIDDEN));
        g.bench_function(id("cpu", m), |b| {
            b.iter(|| residual::add_inplace(&mut h, black_box(&delta)))
        });
        if let Some(d) = dev {
            let (mut h, delta) = (upload::<f32>(d, &h), upload::<f32>(d, &delta));
            g.bench_function(id("cuda-f32", m), |b| {
                b.iter(|| run_sync(d, || ck::add_inplace(d, &mut h, &delta)))
            });
        }
    }
    g.finish();
}

// ---- logits and embedding --------------------------------------------------------------

/// The vocabulary-side ops on one row of logits.
fn bench_logits(c: &mut Criterion) {
    let dev = gpu();
    let mut g = c.benchmark_group("logits");
    // logit-sized values, so exp() sees a realistic range
    let x: Vec<f32> = values(VOCAB, 9).iter().map(|v| 12.0 * v).collect();
    g.throughput(Throughput::Elements(VOCAB as u64));
    g.bench_function("cpu/log_softmax", |b| {
        b.iter(|| logits::log_softmax(black_box(&x)))
    });
    g.bench_function("cpu/argmax", |b| b.iter(|| logits::argmax(black_box(&x))));
    g.bench_function(format!("cpu/top_{TOP_K}"), |b| {
        b.iter(|| logits::top_k(black_box(&x), TOP_K))
    });
    if let Some(d) = dev {
        let x = upload::<f32>(d, &x);
        let mut y = zeros::<f32>(d, VOCAB);
        let mut top1 = zeros::<u32>(d, 1);
        let mut idx = zeros::<u32>(d, TOP_K);
        let mut vals = zeros::<f32>(d, TOP_K);
        g.bench_function("cuda-f32/log_softmax", |b| {
            b.iter(|| run_sync(d, || ck::log_softmax(d, &x, VOCAB, &mut y)))
        });
        g.bench_function("cuda-f32/argmax", |b| {
            b.iter(|| run_sync(d, || ck::argmax(d, &x, VOCAB, &mut top1)))
        });
        g.bench_function(format!("cuda-f32/top_{TOP_K}"), |b| {
            b.iter(|| run_sync(d, || ck::top_k(d, &x, VOCAB, TOP_K, &mut idx, &mut vals)))
        });
    }
    g.finish();
}

/// Looking up a 32-token prompt in the [vocab, hidden] table (the tied LM head).
fn bench_embedding(c: &mut Criterion) {
    let dev = gpu();
    let mut g = c.benchmark_group("embedding");
    let table = values(VOCAB * HIDDEN, 10);
    let ids = fixed_token_rows(1, PREFILL, VOCAB).remove(0);
    g.throughput(moved::<f32, f32>(PREFILL * HIDDEN, PREFILL * HIDDEN));
    g.bench_function(id("cpu", PREFILL), |b| {
        b.iter(|| embedding::embedding(&table, HIDDEN, black_box(&ids)))
    });
    if let Some(d) = dev {
        let ids = d.upload(&ids).expect("upload");
        cuda_embedding::<f32>(&mut g, d, &table, &ids);
        cuda_embedding::<f16>(&mut g, d, &table, &ids);
    }
    g.finish();
}

fn cuda_embedding<T: HostFloat>(
    g: &mut BenchmarkGroup<WallTime>,
    dev: &Device,
    table: &[f32],
    ids: &CudaSlice<u32>,
) {
    let table = upload::<T>(dev, table);
    let mut out = zeros::<f32>(dev, ids.len() * HIDDEN);
    g.throughput(moved::<T, f32>(out.len(), out.len()));
    g.bench_function(id(&cuda_label::<T>(), ids.len()), |b| {
        b.iter(|| run_sync(dev, || ck::embedding(dev, &table, HIDDEN, ids, &mut out)))
    });
}

// ---- attention -------------------------------------------------------------------------

/// A one-block random model with Qwen2-0.5B's attention shape in a temporary folder. A
/// `KvCache` is only filled by a forward pass, so the attention benches get real (RoPE'd)
/// keys and values by running one. Llama layout (no q/k/v biases) and a 16-wide MLP: the
/// benches read only the cache, so the rest of the block is kept small.
fn attention_model() -> (tempfile::TempDir, CpuModel) {
    use safetensors::{tensor::TensorView, Dtype};
    let dir = tempfile::tempdir().expect("temporary folder");
    let (vocab, inter) = (512, 16);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": inter,
        "num_hidden_layers": 1,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
    });
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes);
    write("config.json", config.to_string().as_bytes()).expect("config");
    // any tokenizer will do: the benches pass token ids
    let tok = common::crate_path(common::TINY);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), dir.path().join(f)).expect("tokenizer");
    }
    let p = "model.layers.0";
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, HIDDEN]),
        (format!("{p}.input_layernorm.weight"), vec![HIDDEN]),
        (format!("{p}.self_attn.q_proj.weight"), vec![Q_DIM, HIDDEN]),
        (format!("{p}.self_attn.k_proj.weight"), vec![KV_DIM, HIDDEN]),
        (format!("{p}.self_attn.v_proj.weight"), vec![KV_DIM, HIDDEN]),
        (format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, Q_DIM]),
        (format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]),
        (format!("{p}.mlp.gate_proj.weight"), vec![inter, HIDDEN]),
        (format!("{p}.mlp.up_proj.weight"), vec![inter, HIDDEN]),
        (format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, inter]),
        ("model.norm.weight".into(), vec![HIDDEN]),
    ];
    // scaled like an initialisation (|w| < 1/sqrt(hidden)) so the scores stay moderate
    let scale = 1.0 / (HIDDEN as f32).sqrt();
    let data: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, (_, s))| {
            let v = values(s.iter().product(), 20 + i as u64);
            v.iter().map(|x| x * scale).collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, shape), v)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v));
            (name.clone(), view.expect("shape matches data"))
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors"))
        .expect("weights");
    let model = common::load(dir.path());
    (dir, model)
}

/// A cache holding `len` positions of a random prompt.
fn filled_cache(model: &CpuModel, len: usize) -> KvCache {
    let ids = fixed_token_rows(1, len, model.config.vocab_size);
    let mut caches = [model.new_cache()];
    let req = Request::tokens(ids).logits(LogitsAt::None);
    model.forward(&mut caches, &req).expect("cache fill");
    let [cache] = caches;
    cache
}

/// The 32-token prefill (each token attends to itself and the ones before), and one
/// decode token at position 256 attending over the 256 cached before it and itself.
fn bench_attention(c: &mut Criterion) {
    let dev = gpu();
    let (_dir, model) = attention_model();
    let prefill: Vec<TokenAt> = (0..PREFILL).map(|pos| TokenAt { row: 0, pos }).collect();
    let decode = vec![TokenAt {
        row: 0,
        pos: CACHED,
    }];
    let shape = attn_shape();
    let mut g = c.benchmark_group("attention");
    for (name, tokens) in [("prefill", prefill), ("decode", decode)] {
        let cache = [filled_cache(&model, tokens.last().expect("tokens").pos + 1)];
        let q = values(tokens.len() * Q_DIM, 30);
        // elements: query-head x key score pairs, the work that grows with the cache
        let pairs: usize = tokens.iter().map(|t| HEADS * (t.pos + 1)).sum();
        g.throughput(Throughput::Elements(pairs as u64));
        let label = format!("{name}/{}x{}", tokens.len(), tokens.last().unwrap().pos + 1);
        g.bench_function(BenchmarkId::new("cpu", &label), |b| {
            b.iter(|| {
                attention::attention(
                    black_box(&q),
                    RowLayout::packed(Q_DIM),
                    &tokens,
                    &cache,
                    0,
                    &shape,
                )
            })
        });
        if let Some(d) = dev {
            cuda_attention::<f32>(&mut g, d, &label, &q, &tokens, &cache[0]);
            cuda_attention::<f16>(&mut g, d, &label, &q, &tokens, &cache[0]);
        }
    }
    g.finish();
}

/// The same keys, values and queries on the GPU, the cache in `T` (the model's weight
/// dtype), the KV range split as the forward pass splits it.
fn cuda_attention<T: HostFloat>(
    g: &mut BenchmarkGroup<WallTime>,
    dev: &Device,
    label: &str,
    q: &[f32],
    tokens: &[TokenAt],
    cache: &KvCache,
) {
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for seg in cache.segments(0, cache.len(0)) {
        k.extend_from_slice(seg.k);
        v.extend_from_slice(seg.v);
    }
    let (mut k, mut v) = (upload::<T>(dev, &k), upload::<T>(dev, &v));
    let mut table = KvTable::<T>::builder(dev, KV_DIM);
    table.row(&mut k, &mut v).expect("KV row");
    let table = table.build().expect("KV table");
    let shape = attn_shape();
    let batch = AttnBatch::new(dev, tokens, &shape).expect("attention batch");
    let q = upload::<f32>(dev, q);
    let mut out = zeros::<f32>(dev, q.len());
    g.bench_function(BenchmarkId::new(cuda_label::<T>(), label), |b| {
        b.iter(|| {
            run_sync(dev, || {
                let at = RowLayout::packed(Q_DIM);
                ck::attention(dev, &q, at, &batch, &table, &shape, &mut out, Splits::Auto)
            })
        })
    });
}

criterion_group! {
    name = kernels;
    config = common::criterion(500, 1500);
    targets = bench_matmul, bench_rmsnorm, bench_rope, bench_attention, bench_swiglu,
        bench_residual, bench_logits, bench_embedding
}
criterion_main!(kernels);
