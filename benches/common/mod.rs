//! What the three criterion suites share: timing settings sized for a two-core machine,
//! deterministic inputs, the models they run on, and the CUDA device (or the one line
//! saying why there is none).
// Each suite uses a different part of this module.
#![allow(dead_code)]

use criterion::Criterion;
use qwen_scope::backend::cuda::{self, Device};
use qwen_scope::CpuModel;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Criterion's defaults (100 samples, 3 s warm-up, 5 s measurement per bench) would run
/// the three suites for a quarter of an hour; ten samples over a short window keep
/// `cargo bench` to a few minutes and still give a confidence interval. Command-line
/// flags (`--quick`, `--sample-size`, ...) override these.
pub fn criterion(warm_up_ms: u64, measure_ms: u64) -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(warm_up_ms))
        .measurement_time(Duration::from_millis(measure_ms))
}

/// Qwen2-0.5B's shapes: the kernels are timed at the size they run at in a real model.
pub mod qwen2_05b {
    pub const HIDDEN: usize = 896;
    pub const HEADS: usize = 14;
    pub const KV_HEADS: usize = 2;
    pub const HEAD_DIM: usize = 64;
    pub const INTERMEDIATE: usize = 4864;
    pub const VOCAB: usize = 151_936;
    pub const ROPE_THETA: f32 = 1e6;
    pub const RMS_EPS: f32 = 1e-6;
    pub const Q_DIM: usize = HEADS * HEAD_DIM;
    pub const KV_DIM: usize = KV_HEADS * HEAD_DIM;
}

/// `n` values in [-1, 1) from an xorshift stream: reproducible inputs without a
/// dependency, different per `seed`.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // the top 24 bits as a fraction: exact in f32
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub fn crate_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The tiny random Qwen2 fixture, always present.
pub const TINY: &str = "tests/fixtures/tiny-qwen2";

/// models/smollm2-135m when `tools/get_model.sh smollm2-135m` has made it (it is not in git).
pub fn smollm2() -> Option<PathBuf> {
    let dir = crate_path("models/smollm2-135m");
    let complete = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| dir.join(f).is_file());
    complete.then_some(dir)
}

pub fn load(dir: &Path) -> CpuModel {
    CpuModel::load(&dir.to_string_lossy(), None)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// The real model when it is there, else the fixture; says which, since the numbers of
/// the two differ by orders of magnitude.
pub fn bench_model(suite: &str) -> (CpuModel, String) {
    let (dir, name) = match smollm2() {
        Some(d) => (d, "smollm2-135m"),
        None => (crate_path(TINY), "tiny-qwen2"),
    };
    println!(
        "{suite}: model {name} ({}){}",
        dir.display(),
        if name == "tiny-qwen2" {
            " -- models/smollm2-135m is missing (tools/get_model.sh smollm2-135m makes it)"
        } else {
            ""
        }
    );
    (load(&dir), name.to_string())
}

/// GPU 0 with the kernels loaded, or None after printing `<suite>: SKIPPED: <reason>`
/// (no driver, no GPU, or a build made without nvcc), so a CPU-only run says why it has
/// no CUDA numbers instead of silently omitting them.
pub fn cuda_device(suite: &str) -> Option<Arc<Device>> {
    let dev = if cuda::kernels_embedded() {
        Device::new(0).map_err(|e| e.to_string())
    } else {
        Err("this build has no CUDA kernels (nvcc was not found when it was built)".into())
    };
    match dev {
        Ok(d) => {
            println!(
                "{suite}: {} (sm_{}{}, driver {})",
                d.name(),
                d.compute_capability().0,
                d.compute_capability().1,
                d.driver_version()
            );
            Some(Arc::new(d))
        }
        Err(e) => {
            println!("{suite}: SKIPPED: {e}");
            None
        }
    }
}
