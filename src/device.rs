//! Choosing where a loaded model runs: `--device cpu|cuda|cuda:N|auto` and `--dtype`, the
//! same rules for the CLI and the Python package, and [`Loaded`], the model on the chosen
//! backend. Experiments are generic over [`Engine`](crate::Engine); [`with_engine!`]
//! runs one on whichever backend holds the model.

use crate::backend::cpu::CpuModel;
use crate::backend::cuda::{CudaModel, DType, Device};
use crate::error::{Error, Result};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

/// Where the pass runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    /// GPU 0 when one is usable, else the CPU.
    Auto,
    /// Several GPUs (`cuda:0,cuda:1`), each running a shard of a sweep or attributes run.
    Gpus(Vec<usize>),
    /// Every GPU of the machine (`cuda:all`), likewise.
    AllGpus,
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let one = |d: &str| match d {
            "cuda" => Some(0),
            _ => d.strip_prefix("cuda:")?.parse().ok(),
        };
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda:all" => Ok(DeviceSpec::AllGpus),
            _ if s.contains(',') => {
                let gpus: Option<Vec<usize>> = s.split(',').map(|d| one(d.trim())).collect();
                let gpus = gpus.ok_or_else(|| {
                    format!("unknown devices {s:?}: list GPUs as cuda:0,cuda:1 (or use cuda:all)")
                })?;
                let mut distinct = gpus.clone();
                distinct.sort_unstable();
                distinct.dedup();
                if distinct.len() != gpus.len() {
                    return Err(format!("devices {s:?}: a GPU is listed twice"));
                }
                Ok(DeviceSpec::Gpus(gpus))
            }
            _ => one(s).map(DeviceSpec::Cuda).ok_or_else(|| {
                format!(
                    "unknown device {s:?}: use cpu, cuda, cuda:N, cuda:0,cuda:1, cuda:all or auto"
                )
            }),
        }
    }
}

/// The weight type on a GPU (the residual stream and all accumulation stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeSpec {
    Auto,
    F32,
    F16,
    Bf16,
}

impl FromStr for DTypeSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        <DTypeSpec as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("unknown dtype {s:?}: use auto, f32, f16 or bf16"))
    }
}

impl DTypeSpec {
    /// `auto`: bf16 for bf16 checkpoints on sm_80 and newer, else f16.
    pub fn resolve(self, model: &CpuModel, dev: &Device) -> DType {
        match self {
            DTypeSpec::F32 => DType::F32,
            DTypeSpec::F16 => DType::F16,
            DTypeSpec::Bf16 => DType::BF16,
            DTypeSpec::Auto => {
                let bf16_checkpoint = model.config.dtype.as_deref() == Some("bfloat16");
                if bf16_checkpoint && dev.compute_capability().0 >= 8 {
                    DType::BF16
                } else {
                    DType::F16
                }
            }
        }
    }
}

/// A model on the backend the user chose.
pub enum Loaded {
    Cpu(CpuModel),
    Cuda(CudaModel),
}

impl DeviceSpec {
    /// The GPUs of a several-GPU device (`cuda:all`: every GPU found), or None for one
    /// device.
    pub fn several(&self) -> Result<Option<Vec<usize>>> {
        if !matches!(self, DeviceSpec::Gpus(_) | DeviceSpec::AllGpus) {
            return Ok(None);
        }
        let found = crate::backend::cuda::gpu_count()?;
        let gpus = match self {
            DeviceSpec::Gpus(g) => g.clone(),
            _ => (0..found).collect(),
        };
        // every GPU is checked before any shard starts
        if let Some(g) = gpus.iter().find(|&&g| g >= found) {
            return Err(Error::Cuda(format!(
                "CUDA device {g} does not exist: {found} device(s) found"
            )));
        }
        if gpus.is_empty() {
            return Err(Error::Cuda("cuda:all: no CUDA device found".into()));
        }
        Ok(Some(gpus))
    }
}

impl Loaded {
    /// Puts a loaded (host) model on `device`. `note` receives what a user should know:
    /// why `auto` fell back to the CPU, and the upload time.
    pub fn place(
        host: CpuModel,
        device: DeviceSpec,
        dtype: DTypeSpec,
        note: &mut dyn FnMut(String),
    ) -> Result<Loaded> {
        let device = match device {
            DeviceSpec::Cpu => {
                if !matches!(dtype, DTypeSpec::Auto | DTypeSpec::F32) {
                    return Err(Error::Input(
                        "--dtype applies to GPUs only: the CPU backend runs in f32".into(),
                    ));
                }
                return Ok(Loaded::Cpu(host));
            }
            DeviceSpec::Cuda(n) => return Loaded::on_gpu(&host, n, dtype, note),
            DeviceSpec::Gpus(_) | DeviceSpec::AllGpus => {
                return Err(Error::Input(
                    "several GPUs run a sweep or an attributes run, one shard each: give one \
                     device here (cuda:0)"
                        .into(),
                ))
            }
            DeviceSpec::Auto => match Device::new(0) {
                Ok(d) => d,
                Err(e) => {
                    note(format!(
                        "note: no usable GPU ({e}); running on the CPU in f32"
                    ));
                    return Ok(Loaded::Cpu(host));
                }
            },
        };
        Loaded::upload(&host, device, dtype, note)
    }

    /// Uploads a copy of `host`'s weights to GPU `ordinal`.
    pub fn on_gpu(
        host: &CpuModel,
        ordinal: usize,
        dtype: DTypeSpec,
        note: &mut dyn FnMut(String),
    ) -> Result<Loaded> {
        Loaded::upload(host, Device::new(ordinal)?, dtype, note)
    }

    fn upload(
        host: &CpuModel,
        device: Device,
        dtype: DTypeSpec,
        note: &mut dyn FnMut(String),
    ) -> Result<Loaded> {
        let t = Instant::now();
        let dtype = dtype.resolve(host, &device);
        let model = CudaModel::new(host, Arc::new(device), dtype)?;
        note(format!(
            "uploaded to {} in {:.2}s",
            crate::Engine::describe(&model),
            t.elapsed().as_secs_f64()
        ));
        Ok(Loaded::Cuda(model))
    }
}

/// Runs `$body` with `$m` bound to the model in `$loaded` (a `&Loaded`), whichever backend
/// holds it: the body is compiled once per backend, so it can call generic experiments.
#[macro_export]
macro_rules! with_engine {
    ($loaded:expr, |$m:ident| $body:expr) => {
        match $loaded {
            $crate::device::Loaded::Cpu(model) => {
                let $m = model;
                $body
            }
            $crate::device::Loaded::Cuda(model) => {
                let $m = model;
                $body
            }
        }
    };
}
