//! Typed device storage for the whole-model pass: buffers of the chosen weight type, and
//! the model's weights uploaded in it.

use super::device::Device;
use super::kernels as k;
use super::CudaFloat;
use crate::backend::cpu::matmul::Linear;
use crate::backend::cpu::CpuModel;
use crate::error::Result;
use cudarc::driver::{CudaSlice, ValidAsZeroBits};
use half::{bf16, f16};

/// A device buffer in one of the cache/weight dtypes.
pub(super) enum Buf {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

/// The element types a [`CudaModel`] can hold its weights and caches in.
pub(super) trait Elem: CudaFloat + ValidAsZeroBits {
    fn from_f32(v: &[f32]) -> Vec<Self>;
    fn to_f32(v: Vec<Self>) -> Vec<f32>;
    fn get(b: &Buf) -> Option<&CudaSlice<Self>>;
    fn get_mut(b: &mut Buf) -> Option<&mut CudaSlice<Self>>;
    fn wrap(s: CudaSlice<Self>) -> Buf;
    /// `x` as a GEMM input of this type: `x` itself in f32, else cast into `tmp`.
    fn gemm_input<'a>(
        dev: &Device,
        x: &'a CudaSlice<f32>,
        tmp: &'a mut Option<CudaSlice<Self>>,
    ) -> Result<&'a CudaSlice<Self>>;
}

pub(super) fn cast_into<'a, T: Elem>(
    dev: &Device,
    x: &CudaSlice<f32>,
    tmp: &'a mut Option<CudaSlice<T>>,
) -> Result<&'a CudaSlice<T>> {
    if tmp.as_ref().map(|t| t.len()) != Some(x.len()) {
        // SAFETY: written in full by the cast below before anything reads it.
        *tmp = Some(unsafe { dev.alloc::<T>(x.len())? });
    }
    let t = tmp.as_mut().expect("allocated above");
    k::cast(dev, x, t)?;
    Ok(t)
}

impl Elem for f32 {
    fn from_f32(v: &[f32]) -> Vec<Self> {
        v.to_vec()
    }
    fn to_f32(v: Vec<Self>) -> Vec<f32> {
        v
    }
    fn get(b: &Buf) -> Option<&CudaSlice<Self>> {
        match b {
            Buf::F32(s) => Some(s),
            _ => None,
        }
    }
    fn get_mut(b: &mut Buf) -> Option<&mut CudaSlice<Self>> {
        match b {
            Buf::F32(s) => Some(s),
            _ => None,
        }
    }
    fn wrap(s: CudaSlice<Self>) -> Buf {
        Buf::F32(s)
    }
    fn gemm_input<'a>(
        _dev: &Device,
        x: &'a CudaSlice<f32>,
        _tmp: &'a mut Option<CudaSlice<Self>>,
    ) -> Result<&'a CudaSlice<Self>> {
        Ok(x)
    }
}

/// The half types differ only in their enum variants: one impl for both.
macro_rules! half_elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            fn from_f32(v: &[f32]) -> Vec<Self> {
                v.iter().map(|&x| <$t>::from_f32(x)).collect()
            }
            fn to_f32(v: Vec<Self>) -> Vec<f32> {
                v.into_iter().map(<$t>::to_f32).collect()
            }
            fn get(b: &Buf) -> Option<&CudaSlice<Self>> {
                match b {
                    Buf::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn get_mut(b: &mut Buf) -> Option<&mut CudaSlice<Self>> {
                match b {
                    Buf::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn wrap(s: CudaSlice<Self>) -> Buf {
                Buf::$variant(s)
            }
            fn gemm_input<'a>(
                dev: &Device,
                x: &'a CudaSlice<f32>,
                tmp: &'a mut Option<CudaSlice<Self>>,
            ) -> Result<&'a CudaSlice<Self>> {
                cast_into(dev, x, tmp)
            }
        }
    };
}

half_elem!(f16, F16);
half_elem!(bf16, BF16);

// ---- weights ---------------------------------------------------------------------------

/// One decoder block. Matrices are W as in the safetensors files, [out, in] row-major
/// (what `gemm::matmul_bt` takes), fused like the CPU model: qkv rows q, k, v; gate_up rows
/// gate, up.
pub(super) struct BlockW<T: Elem> {
    pub(super) input_norm: CudaSlice<f32>,
    pub(super) qkv: CudaSlice<T>,
    pub(super) qkv_bias: Option<CudaSlice<f32>>,
    /// Per-head RMSNorm weights [head_dim] of q and k (Qwen3), f32.
    pub(super) q_norm: Option<CudaSlice<f32>>,
    pub(super) k_norm: Option<CudaSlice<f32>>,
    pub(super) o_proj: CudaSlice<T>,
    pub(super) o_bias: Option<CudaSlice<f32>>,
    pub(super) post_norm: CudaSlice<f32>,
    pub(super) gate_up: CudaSlice<T>,
    pub(super) down: CudaSlice<T>,
}

pub(super) struct Weights<T: Elem> {
    /// [vocab, hidden]
    pub(super) embed: CudaSlice<T>,
    pub(super) blocks: Vec<BlockW<T>>,
    pub(super) final_norm: CudaSlice<f32>,
    /// [vocab, hidden]; None when tied to `embed`.
    pub(super) lm_head: Option<CudaSlice<T>>,
}

pub(super) enum WeightSet {
    F32(Weights<f32>),
    F16(Weights<f16>),
    BF16(Weights<bf16>),
}

/// W [out, in] of a host `Linear`, in T on the device.
pub(super) fn upload_linear<T: Elem>(dev: &Device, lin: &Linear) -> Result<CudaSlice<T>> {
    dev.upload(&T::from_f32(&lin.w))
}

pub(super) fn upload_weights<T: Elem>(dev: &Device, host: &CpuModel) -> Result<Weights<T>> {
    let blocks = host
        .blocks
        .iter()
        .map(|b| {
            Ok(BlockW {
                input_norm: dev.upload(&b.input_norm)?,
                qkv: upload_linear(dev, &b.qkv)?,
                qkv_bias: b.qkv.b.as_ref().map(|v| dev.upload(v)).transpose()?,
                q_norm: b.q_norm.as_ref().map(|v| dev.upload(v)).transpose()?,
                k_norm: b.k_norm.as_ref().map(|v| dev.upload(v)).transpose()?,
                o_proj: upload_linear(dev, &b.o_proj)?,
                o_bias: b.o_proj.b.as_ref().map(|v| dev.upload(v)).transpose()?,
                post_norm: dev.upload(&b.post_attention_norm)?,
                gate_up: upload_linear(dev, &b.gate_up)?,
                down: upload_linear(dev, &b.down)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let lm_head = if host.config.tie_word_embeddings {
        None
    } else {
        Some(dev.upload(&T::from_f32(host.lm_head()))?)
    };
    Ok(Weights {
        embed: dev.upload(&T::from_f32(&host.embed))?,
        blocks,
        final_norm: dev.upload(&host.final_norm)?,
        lm_head,
    })
}
