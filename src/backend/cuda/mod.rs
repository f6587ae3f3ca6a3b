//! The CUDA backend's kernel half: one device with the embedded kernels loaded
//! ([`Device`]), a safe wrapper per kernel ([`kernels`]) and cuBLAS GEMMs ([`gemm`]).
//!
//! Every kernel has a twin in [`crate::backend::cpu`] that it is tested against
//! (tests/cuda_kernels.rs). The residual stream and all accumulation are f32; weights, KV
//! caches and GEMM inputs may be f32, f16 or bf16 ([`CudaFloat`]).
//!
//! The kernels (kernels/*.cu) are compiled by build.rs into one fatbin embedded in the
//! binary (or build.rs embeds one made by tools/build_cu12.sh). A build made without nvcc
//! has none: [`Device::new`] then fails with a message
//! saying how to rebuild, and [`kernels_embedded`] is false.
//!
//! All work goes to the device's one stream ([`Device::stream`]), so launches are ordered;
//! buffers must be allocated on that stream.

pub mod device;
pub mod gemm;
pub mod kernels;
mod kv_cache;
pub mod model;
mod storage;

pub use device::{gpu_count, Device};
pub use kv_cache::{CudaKvCache, DeviceKv};
pub use model::CudaModel;

use crate::error::Error;
use cudarc::driver::DeviceRepr;

/// Element types the kernels read and write besides f32 accumulators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// The suffix of kernel names for this type.
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// f32, half::f16 or half::bf16.
pub trait CudaFloat: DeviceRepr + Copy + Send + Sync + 'static + private::Sealed {
    const DTYPE: DType;
}

impl CudaFloat for f32 {
    const DTYPE: DType = DType::F32;
}
impl CudaFloat for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl CudaFloat for half::bf16 {
    const DTYPE: DType = DType::BF16;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// Whether this build carries the compiled kernels (nvcc was found at build time).
pub fn kernels_embedded() -> bool {
    cfg!(qwen_scope_kernels)
}

/// How the embedded kernels were built: the compiler, SASS architectures and the PTX
/// architecture (0: none), e.g. ("nvcc 13.0.88", [75, 80, ...], 121) or
/// ("NVRTC 12.4", [60, 75], 75). None in a CPU-only build.
pub fn kernel_build_info() -> Option<(&'static str, Vec<u32>, u32)> {
    #[cfg(qwen_scope_kernels)]
    {
        let sass = env!("QWEN_SCOPE_CUDA_SASS")
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect();
        let ptx = env!("QWEN_SCOPE_CUDA_PTX").parse().unwrap_or(0);
        Some((env!("QWEN_SCOPE_CUDA_COMPILER"), sass, ptx))
    }
    #[cfg(not(qwen_scope_kernels))]
    {
        None
    }
}

pub(crate) fn cuda_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}
