//! One CUDA device: its context and stream, and the embedded kernel module loaded on it.

use super::cuda_err;
use super::kernels::KERNELS;
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{self, CUfunction, CUmodule};
use cudarc::driver::{
    result, CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, OnceLock};

/// How to get GPU support into a build that was made without nvcc.
pub const REBUILD_HINT: &str = "this qwen-scope was built without CUDA kernels (nvcc was not \
     found at build time). Install the CUDA toolkit (or, in a .venv-tools venv in the source \
     folder, `pip install nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-runtime nvidia-cuda-crt \
     nvidia-cuda-cccl`; see docs/CUDA.md), set NVCC=/path/to/nvcc if it is not on PATH or \
     under CUDA_HOME, then rebuild with `cargo build --release`; or run with --device cpu";

pub(crate) const NO_DRIVER: &str =
    "no CUDA driver found (libcuda): run with --device cpu or install the NVIDIA driver";

#[cfg(qwen_scope_kernels)]
#[repr(C, align(16))]
struct Aligned<B: ?Sized>(B);

/// The fatbin built by build.rs, aligned as cuModuleLoadData expects.
#[cfg(qwen_scope_kernels)]
static FATBIN: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/qwen_scope_kernels.fatbin"
)));

/// The embedded fatbin, or None in a build without kernels.
pub(crate) fn fatbin() -> Option<&'static [u8]> {
    #[cfg(qwen_scope_kernels)]
    {
        Some(&FATBIN.0)
    }
    #[cfg(not(qwen_scope_kernels))]
    {
        None
    }
}

/// A loaded CUmodule, unloaded on drop.
struct Module {
    raw: CUmodule,
    ctx: Arc<CudaContext>,
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `raw` was loaded in this context and no function of it is used after
            // the Device (which owns the module) is gone.
            let _ = unsafe { result::module::unload(self.raw) };
        }
    }
}

/// A GPU with the qwen-scope kernels loaded. All work is queued on [`Device::stream`].
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CUfunction>,
    _module: Module,
    name: String,
    cc: (u32, u32),
    sm_count: u32,
    /// Dynamic shared memory a block of the attention kernels may use (the card's opt-in
    /// limit, which Device::new grants them).
    max_dynamic_smem: u32,
    driver_version: i32,
    blas: OnceLock<CudaBlas>,
}

// SAFETY: CUfunction handles are plain driver handles, usable from any thread once the
// context is bound (every launch binds it); the module outlives them (same struct).
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("sm", &self.cc)
            .finish()
    }
}

/// Whether the kernels built for `sass` (SASS archs like 75, 86) and `ptx` (PTX arch) run
/// on a GPU of compute capability `cc`: SASS of the same major version and a minor version
/// not above the GPU's, or PTX not newer than the GPU (JIT-compiled by the driver).
pub fn arch_supported(cc: (u32, u32), sass: &[u32], ptx: u32) -> bool {
    let (major, minor) = cc;
    let sm = major * 10 + minor;
    sass.iter().any(|&a| a / 10 == major && a % 10 <= minor) || (ptx != 0 && ptx <= sm)
}

/// The CUDA major version of the toolkit named in `compiler` ("nvcc 13.0.88" -> 13).
fn toolkit_major(compiler: &str) -> Option<i32> {
    compiler
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse().ok())
}

/// True when a driver of CUDA version `driver` (e.g. 12040) is older than the toolkit that
/// built the kernels: CUDA 13's code needs a CUDA 13 driver (R580), so a CUDA 13 build
/// cannot serve the R550 drivers of Colab's T4s.
fn driver_too_old(compiler: &str, driver: i32) -> bool {
    toolkit_major(compiler).is_some_and(|m| m >= 13 && driver < m * 1000)
}

/// True when only PTX (no SASS) can serve `cc`.
fn needs_jit(cc: (u32, u32), sass: &[u32]) -> bool {
    !sass.iter().any(|&a| a / 10 == cc.0 && a % 10 <= cc.1)
}

fn driver_version() -> i32 {
    let mut v = 0;
    // SAFETY: plain query into a local.
    let _ = unsafe { sys::cuDriverGetVersion(&mut v) };
    v
}

fn version_str(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// How many GPUs the driver sees; an error (never a panic) where there is no driver.
pub fn gpu_count() -> Result<usize> {
    // cudarc panics on first use when libcuda is missing: check first.
    // SAFETY: only tries to dlopen the library.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Cuda(NO_DRIVER.into()));
    }
    result::init().map_err(|e| {
        Error::Cuda(format!(
            "the CUDA driver failed to initialise ({e}); is there an NVIDIA GPU? Run with \
             --device cpu otherwise"
        ))
    })?;
    let count = result::device::get_count().map_err(|e| cuda_err("device count", e))?;
    Ok(count.max(0) as usize)
}

impl Device {
    /// Opens GPU `ordinal` and loads the embedded kernels on it. Fails with a clear message
    /// (never panics) when there is no driver, no such GPU, no kernels in this build, or
    /// no code for this GPU's architecture.
    pub fn new(ordinal: usize) -> Result<Device> {
        let count = gpu_count()?;
        if ordinal >= count {
            return Err(Error::Cuda(format!(
                "CUDA device {ordinal} does not exist: {count} device(s) found{}",
                if count > 0 {
                    format!(" (ordinals 0..={})", count - 1)
                } else {
                    String::new()
                }
            )));
        }
        let Some((compiler, sass, ptx)) = super::kernel_build_info() else {
            return Err(Error::Cuda(REBUILD_HINT.into()));
        };
        let image = fatbin().ok_or_else(|| Error::Cuda(REBUILD_HINT.into()))?;

        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("creating the context", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_err("compute capability", e))?;
        let cc = (major as u32, minor as u32);
        let drv = driver_version();
        let sass_list = || {
            sass.iter()
                .map(|a| format!("sm_{a}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if !arch_supported(cc, &sass, ptx) {
            return Err(Error::Cuda(format!(
                "{name} is sm_{major}{minor}, but the embedded kernels ({compiler}) have SASS \
                 for {} and PTX for compute_{ptx} only. Rebuild with \
                 QWEN_SCOPE_CUDA_ARCHS={major}{minor} cargo build --release, with a compiler \
                 that supports sm_{major}{minor} (CUDA 13 starts at sm_75: for sm_60/sm_70 run \
                 tools/build_cu12.sh, or use a CUDA 12 nvcc; docs/CUDA.md)",
                sass_list()
            )));
        }
        if driver_too_old(compiler, drv) {
            return Err(Error::Cuda(format!(
                "{name} has driver {}, but the embedded kernels were built by {compiler}, whose \
                 code needs a CUDA {}.0 driver (R580 or newer). Update the NVIDIA driver, or \
                 rebuild for older drivers with tools/build_cu12.sh (CUDA 12.4; docs/CUDA.md)",
                version_str(drv),
                toolkit_major(compiler).unwrap_or(13)
            )));
        }

        ctx.bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: `image` is a complete fatbin, 16-byte aligned, alive for 'static.
        let raw =
            unsafe { result::module::load_data(image.as_ptr() as *const c_void) }.map_err(|e| {
                let jit = needs_jit(cc, &sass);
                let code = e.0;
                if code == sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
                    || code == sys::CUresult::CUDA_ERROR_INVALID_PTX
                    || (jit && code == sys::CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU)
                {
                    Error::Cuda(format!(
                        "loading the kernels on {name} (sm_{major}{minor}) needs the driver to \
                         JIT-compile PTX from {compiler}, and driver {} cannot ({e:?}). \
                         Update the NVIDIA driver, or rebuild with \
                         QWEN_SCOPE_CUDA_ARCHS={major}{minor} so the binary carries SASS for \
                         this GPU",
                        version_str(drv)
                    ))
                } else {
                    Error::Cuda(format!(
                        "loading the kernels ({compiler}, SASS {}) on {name} (sm_{major}{minor}, \
                         driver {}) failed: {e:?}",
                        sass_list(),
                        version_str(drv)
                    ))
                }
            })?;
        let module = Module {
            raw,
            ctx: ctx.clone(),
        };
        let mut funcs = HashMap::new();
        for &k in KERNELS {
            let c = CString::new(k).expect("kernel names have no NUL");
            // SAFETY: `raw` is a loaded module.
            let f = unsafe { result::module::get_function(raw, c) }.map_err(|e| {
                Error::Cuda(format!(
                    "kernel {k} is missing from the embedded module ({e:?}); kernels/ and \
                     src/backend/cuda/kernels/mod.rs disagree"
                ))
            })?;
            funcs.insert(k, f);
        }
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| cuda_err("SM count", e))? as u32;
        let smem_optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_or(48 * 1024, |v| v.max(48 * 1024) as u32);
        // Attention kernels for head_dim up to 256 use more than the default 48 KiB.
        for (&k, &f) in &funcs {
            if k.starts_with("attention_") && k != "attention_combine" {
                let hd = super::kernels::head_dim_max(k);
                let want = super::kernels::attention_smem_bytes(hd, hd + 1).min(smem_optin);
                // SAFETY: `f` is a function of the loaded module.
                unsafe {
                    result::function::set_function_attribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        want as i32,
                    )
                }
                .map_err(|e| cuda_err("shared memory attribute", e))?;
            }
        }
        let stream = ctx.default_stream();
        Ok(Device {
            ctx,
            stream,
            funcs,
            _module: module,
            name,
            cc,
            sm_count,
            max_dynamic_smem: smem_optin,
            driver_version: drv,
            blas: OnceLock::new(),
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every wrapper queues its work on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// (major, minor), e.g. (7, 5) for a T4.
    pub fn compute_capability(&self) -> (u32, u32) {
        self.cc
    }

    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// Bytes of dynamic shared memory a block may use (after the opt-in Device::new asks).
    pub fn max_dynamic_smem(&self) -> u32 {
        self.max_dynamic_smem
    }

    /// The driver's CUDA version, e.g. "12.4".
    pub fn driver_version(&self) -> String {
        version_str(self.driver_version)
    }

    /// Waits for all queued work; reports any error a kernel raised.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))?;
        self.ctx
            .check_err()
            .map_err(|e| cuda_err("asynchronous error", e))
    }

    /// Copies `data` to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(data)
            .map_err(|e| cuda_err("upload", e))
    }

    /// Copies a device buffer back (waits for the work queued before).
    pub fn download<T: DeviceRepr, S: DevicePtr<T>>(&self, src: &S) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(src)
            .map_err(|e| cuda_err("download", e))
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(len)
            .map_err(|e| cuda_err("alloc", e))
    }

    /// A buffer of `len` uninitialised values.
    ///
    /// # Safety
    /// The contents must be written before they are read.
    pub(crate) unsafe fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream.alloc(len).map_err(|e| cuda_err("alloc", e))
    }

    /// The cuBLAS handle (created on first use), bound to [`Device::stream`].
    pub fn blas(&self) -> Result<&CudaBlas> {
        if let Some(b) = self.blas.get() {
            return Ok(b);
        }
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Cuda(
                "cuBLAS (libcublas) not found: install the CUDA toolkit's cuBLAS or `pip install \
                 nvidia-cublas` and put it on the library path (LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        let b = CudaBlas::new(self.stream.clone()).map_err(|e| cuda_err("cuBLAS init", e))?;
        Ok(self.blas.get_or_init(|| b))
    }

    /// Launches kernel `name` on the stream.
    ///
    /// # Safety
    /// `args` must point to values of exactly the kernel's parameter types, in order, alive
    /// for the call; device pointers among them must be valid for what the kernel accesses
    /// with this grid.
    pub(crate) unsafe fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_mem: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let f = *self
            .funcs
            .get(name)
            .ok_or_else(|| Error::Cuda(format!("kernel {name} is not loaded")))?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: per this function's contract.
        unsafe { result::launch_kernel(f, grid, block, shared_mem, self.stream.cu_stream(), args) }
            .map_err(|e| cuda_err(&format!("launching {name}"), e))?;
        self.ctx
            .check_err()
            .map_err(|e| cuda_err(&format!("after {name}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_rules() {
        let sass = [75, 80, 86, 89, 90, 100, 120];
        assert!(arch_supported((7, 5), &sass, 120));
        assert!(arch_supported((8, 7), &sass, 120)); // sm_86 SASS runs on 8.7
        assert!(arch_supported((9, 0), &sass, 120));
        assert!(!arch_supported((7, 0), &sass, 120)); // V100 with CUDA 13 kernels
        assert!(!arch_supported((6, 1), &sass, 120));
        assert!(arch_supported((13, 0), &sass, 120)); // future GPU: PTX JIT
        assert!(needs_jit((13, 0), &sass));
        assert!(!needs_jit((8, 9), &sass));
        assert!(!arch_supported((7, 5), &[80], 0));
    }

    #[test]
    fn cuda13_kernels_need_a_cuda13_driver() {
        assert_eq!(toolkit_major("nvcc 13.0.88"), Some(13));
        assert_eq!(toolkit_major("NVRTC 12.4"), Some(12));
        assert!(driver_too_old("nvcc 13.0.88", 12040));
        assert!(!driver_too_old("nvcc 13.0.88", 13000));
        assert!(!driver_too_old("NVRTC 12.4", 12040));
        assert!(!driver_too_old("a prebuilt fatbin", 12040));
    }
}
