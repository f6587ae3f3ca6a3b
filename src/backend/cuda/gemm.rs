//! Matrix products through cuBLAS: `y[m, n] = x[m, k] · w^T` with `w` stored [n, k]
//! row-major as in the safetensors files, x and w in f32, f16 or bf16 (the same type),
//! y in f32, computed in f32 (CUBLAS_COMPUTE_32F: no TF32, no half-precision
//! accumulation). Twin: `cpu::matmul::linear`, which keeps W as stored, [n, k], too.

use super::cuda_err;
use super::device::Device;
use super::kernels::add_bias;
use super::{CudaFloat, DType};
use crate::error::{Error, Result};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use std::ffi::c_void;

fn data_type(d: DType) -> cudaDataType {
    match d {
        DType::F32 => cudaDataType::CUDA_R_32F,
        DType::F16 => cudaDataType::CUDA_R_16F,
        DType::BF16 => cudaDataType::CUDA_R_16BF,
    }
}

/// `y[m, n] = x[m, k] · w^T`; `y` is overwritten.
pub fn matmul_bt<T: CudaFloat>(
    dev: &Device,
    x: &impl DevicePtr<T>,
    m: usize,
    k: usize,
    w: &impl DevicePtr<T>,
    n: usize,
    y: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    let bad = |what: &str, got: usize, want: usize| {
        Error::internal(format!(
            "matmul: {what} has {got} elements, [{m}, {k}] x [{n}, {k}]^T needs {want}"
        ))
    };
    if x.len() != m * k {
        return Err(bad("x", x.len(), m * k));
    }
    if w.len() != n * k {
        return Err(bad("w", w.len(), n * k));
    }
    if y.len() != m * n {
        return Err(bad("y", y.len(), m * n));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        return Err(Error::internal("matmul: inner dimension k is 0"));
    }
    let dims: Vec<i32> = [m, n, k]
        .iter()
        .map(|&d| i32::try_from(d).map_err(|_| Error::input(format!("matmul: {d} too large"))))
        .collect::<Result<_>>()?;
    let (mi, ni, ki) = (dims[0], dims[1], dims[2]);
    let blas = dev.blas()?;
    dev.context()
        .bind_to_thread()
        .map_err(|e| cuda_err("binding the context", e))?;
    let s = dev.stream();
    let (xp, _g1) = x.device_ptr(s);
    let (wp, _g2) = w.device_ptr(s);
    let (yp, _g3) = y.device_ptr_mut(s);
    let (alpha, beta) = (1.0f32, 0.0f32);
    let dt = data_type(T::DTYPE);
    // Row-major y[m, n] is column-major y^T [n, m] = W (col-major [k, n], transposed) · x
    // (col-major [k, m]).
    // SAFETY: the handle is bound to the device's stream; sizes checked above; alpha and
    // beta are host f32 as CUBLAS_COMPUTE_32F with the default host pointer mode expects.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            ni,
            mi,
            ki,
            &alpha as *const f32 as *const c_void,
            wp as *const c_void,
            dt,
            ki,
            xp as *const c_void,
            dt,
            ki,
            &beta as *const f32 as *const c_void,
            yp as *mut c_void,
            cudaDataType::CUDA_R_32F,
            ni,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| cuda_err("cublasGemmEx", e))
}

/// A linear layer: `y = x · w^T + b` (bias optional, any [`CudaFloat`] type).
#[allow(clippy::too_many_arguments)]
pub fn linear<T: CudaFloat, B: CudaFloat>(
    dev: &Device,
    x: &impl DevicePtr<T>,
    m: usize,
    k: usize,
    w: &impl DevicePtr<T>,
    n: usize,
    bias: Option<&cudarc::driver::CudaSlice<B>>,
    y: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    matmul_bt(dev, x, m, k, w, n, y)?;
    if let Some(b) = bias {
        if b.len() != n {
            return Err(Error::internal(format!(
                "linear: bias has {} elements, the layer has {n} outputs",
                b.len()
            )));
        }
        add_bias(dev, y, b)?;
    }
    Ok(())
}
