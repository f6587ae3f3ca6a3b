//! The model on one GPU: the weights uploaded in the chosen [`DType`], and the ops the
//! pass of `crate::model` runs it with (the CPU model's twin, tested against it).
//!
//! Numerics: weights (GEMM matrices, the embedding table and the LM head) are held in the
//! chosen dtype; norm weights and biases in f32. The residual stream, every GEMM
//! accumulation, softmax and all elementwise math are f32. Activations are rounded to the
//! weight dtype just before each GEMM (RMSNorm and SwiGLU write that dtype directly; the
//! attention output and the rows fed to the LM head are cast); in f32 mode nothing is
//! rounded. KV caches hold keys and values in the weight dtype (f32 in f32 mode).
//!
//! The dtype is chosen once, in [`CudaModel::new`]; each pass then runs on [`Typed`], where
//! every buffer has its static element type.

use super::device::Device;
use super::gemm;
use super::kernels::{self as k, AttnBatch, RowWrite, Splits, HEAD_DIM_MAX};
use super::{cuda_err, DType};
use crate::backend::cpu::CpuModel;
use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::kv::KvCache;
use crate::model::{self, Norm, Ops, Proj};
use crate::plan::Plan;
use crate::request::{Output, Request};
use crate::shape::{AttnShape, RowLayout};
use crate::stream::WriteOp;
use crate::tokenizer::Tokenizer;
use cudarc::driver::CudaSlice;
use std::sync::Arc;

use super::kv_cache::*;
use super::storage::*;

/// Rows per gather launch (the gather kernel's grid.y limit).
const GATHER_ROWS: usize = 65535;
/// Rows of the LM head product per chunk, to bound the scratch for `LogitsAt::All`.
const LOGIT_CHUNK: usize = 1024;

/// Qwen2/Qwen3/Llama on one GPU. Build it from a loaded host [`CpuModel`] with [`CudaModel::new`].
pub struct CudaModel {
    dev: Arc<Device>,
    config: Config,
    tokenizer: Tokenizer,
    dtype: DType,
    inv_freq: CudaSlice<f32>,
    weights: WeightSet,
}

impl CudaModel {
    /// Uploads `host`'s weights to `dev`: matrices, embedding table and LM head in
    /// `dtype`, norms (q/k norms included) and biases in f32.
    pub fn new(host: &CpuModel, dev: Arc<Device>, dtype: DType) -> Result<CudaModel> {
        let c = &host.config;
        if c.head_dim == 0 || c.head_dim > HEAD_DIM_MAX {
            return Err(Error::Cuda(format!(
                "head_dim {} is not supported by the CUDA attention kernels (1..={HEAD_DIM_MAX})",
                c.head_dim
            )));
        }
        let (major, minor) = dev.compute_capability();
        if dtype == DType::BF16 && major < 8 {
            return Err(Error::Cuda(format!(
                "bf16 weights need a GPU with bf16 arithmetic (sm_80 or newer); {} is \
                 sm_{major}{minor}: use --dtype f16 or f32",
                dev.name()
            )));
        }
        let weights = match dtype {
            DType::F32 => WeightSet::F32(upload_weights(&dev, host)?),
            DType::F16 => WeightSet::F16(upload_weights(&dev, host)?),
            DType::BF16 => WeightSet::BF16(upload_weights(&dev, host)?),
        };
        let inv_freq = dev.upload(&host.inv_freq)?;
        dev.synchronize()?;
        Ok(CudaModel {
            config: host.config.clone(),
            tokenizer: host.tokenizer.clone(),
            dtype,
            inv_freq,
            weights,
            dev,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    pub fn num_layers(&self) -> usize {
        self.config.num_layers
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            num_heads: self.config.num_heads,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// An empty KV cache for one sequence of this model (nothing is allocated until the
    /// first pass).
    pub fn new_cache(&self) -> CudaKvCache {
        KvCache::from_store(DeviceKv {
            dev: self.dev.clone(),
            dtype: self.dtype,
            kv_dim: self.config.kv_dim(),
            max_positions: self.config.max_position_embeddings,
            layers: (0..self.config.num_layers)
                .map(|_| OwnKv::default())
                .collect(),
        })
    }
}

/// Runs `$body` with `$m` bound to `$model`'s [`Typed`] view: the one place the pass
/// dispatches on the weight dtype.
macro_rules! with_typed {
    ($model:expr, $m:ident => $body:expr) => {
        match &$model.weights {
            WeightSet::F32(w) => {
                let $m = Typed { m: $model, w };
                $body
            }
            WeightSet::F16(w) => {
                let $m = Typed { m: $model, w };
                $body
            }
            WeightSet::BF16(w) => {
                let $m = Typed { m: $model, w };
                $body
            }
        }
    };
}

impl Engine for CudaModel {
    type Cache = CudaKvCache;

    fn config(&self) -> &Config {
        &self.config
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn new_cache(&self) -> CudaKvCache {
        CudaModel::new_cache(self)
    }
    fn forward(&self, caches: &mut [CudaKvCache], req: &Request) -> Result<Output> {
        with_typed!(self, m => model::forward(&m, caches, req))
    }
    fn greedy(
        &self,
        caches: &mut [CudaKvCache],
        first: Request,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        with_typed!(self, m => model::greedy(&m, caches, first, max_new))
    }
    fn head_argmax(&self, final_normed: Vec<Vec<f32>>) -> Result<Vec<u32>> {
        with_typed!(self, m => model::head_argmax(&m, final_normed, || self.new_cache()))
    }
    fn describe(&self) -> String {
        format!(
            "cuda:{} {}",
            self.device().context().ordinal(),
            self.hardware()
        )
    }
    fn hardware(&self) -> String {
        let d = self.device();
        let (major, minor) = d.compute_capability();
        format!("{} (sm_{major}{minor}) {:?}", d.name(), self.dtype)
    }
    fn weight_elem_bytes(&self) -> usize {
        match self.dtype {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// The model with its weights in `T`, for one pass.
pub(super) struct Typed<'a, T: Elem> {
    m: &'a CudaModel,
    w: &'a Weights<T>,
}

impl<T: Elem> Typed<'_, T> {
    fn dev(&self) -> &Device {
        &self.m.dev
    }

    fn qkv_layouts(&self) -> [RowLayout; 3] {
        let c = &self.m.config;
        let stride = c.q_dim() + 2 * c.kv_dim();
        [0, c.q_dim(), c.q_dim() + c.kv_dim()].map(|offset| RowLayout { stride, offset })
    }
}

impl<T: Elem> Ops for Typed<'_, T> {
    type Cache = CudaKvCache;
    type Stream = CudaSlice<f32>;
    type Act = CudaSlice<T>;
    type Wide = CudaSlice<f32>;
    type Batch = AttnBatch;

    fn config(&self) -> &Config {
        &self.m.config
    }

    /// The checks only a device cache needs; the rest is the shared [`Plan`].
    fn check_caches(&self, caches: &[CudaKvCache]) -> Result<()> {
        let m = self.m;
        for (r, kv) in caches.iter().map(|c| &c.own).enumerate() {
            if kv.kv_dim != m.config.kv_dim() {
                return Err(Error::input(format!(
                    "row {r}: KV cache is for another model"
                )));
            }
            if kv.dtype != m.dtype {
                return Err(Error::input(format!(
                    "row {r}: KV cache holds {} but this model runs in {}",
                    kv.dtype.suffix(),
                    m.dtype.suffix()
                )));
            }
            if kv.dev.context().ordinal() != m.dev.context().ordinal() {
                return Err(Error::input(format!(
                    "row {r}: KV cache is on CUDA device {}, the model on {}",
                    kv.dev.context().ordinal(),
                    m.dev.context().ordinal()
                )));
            }
        }
        Ok(())
    }

    fn embed(&self, ids: &[u32]) -> Result<CudaSlice<f32>> {
        let dev = self.dev();
        let d = self.m.config.hidden_size;
        let ids_d = dev.upload(ids)?;
        // SAFETY: the embedding kernel writes every row.
        let mut h = unsafe { dev.alloc::<f32>(ids.len() * d)? };
        k::embedding(dev, &self.w.embed, d, &ids_d, &mut h)?;
        Ok(h)
    }

    fn stream_from(&self, states: Vec<f32>) -> Result<CudaSlice<f32>> {
        self.dev().upload(&states)
    }

    fn act(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every block buffer is written by a kernel or GEMM before it is read.
        unsafe { self.dev().alloc(len) }
    }

    fn wide(&self, len: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: as for `act`.
        unsafe { self.dev().alloc(len) }
    }

    fn batch(&self, plan: &Plan) -> Result<AttnBatch> {
        AttnBatch::new(self.dev(), &plan.tokens, &self.m.attn_shape())
    }

    fn rmsnorm(
        &self,
        h: &CudaSlice<f32>,
        n: usize,
        layer: usize,
        norm: Norm,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let b = &self.w.blocks[layer];
        let w = match norm {
            Norm::Input => &b.input_norm,
            Norm::PostAttention => &b.post_norm,
        };
        let c = &self.m.config;
        let x = h.slice(..n * c.hidden_size);
        k::rmsnorm(self.dev(), &x, w, c.rms_norm_eps, out)
    }

    fn linear(
        &self,
        x: &CudaSlice<T>,
        layer: usize,
        proj: Proj,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let b = &self.w.blocks[layer];
        let c = &self.m.config;
        let (d, inter) = (c.hidden_size, c.intermediate_size);
        let (w, bias, inp, width) = match proj {
            Proj::Qkv => (&b.qkv, b.qkv_bias.as_ref(), d, c.q_dim() + 2 * c.kv_dim()),
            Proj::O => (&b.o_proj, b.o_bias.as_ref(), c.q_dim(), d),
            Proj::GateUp => (&b.gate_up, None, d, 2 * inter),
            Proj::Down => (&b.down, None, inter, d),
        };
        gemm::linear(self.dev(), x, x.len() / inp, inp, w, width, bias, out)
    }

    fn qk_norm(&self, qkv: &mut CudaSlice<f32>, layer: usize) -> Result<()> {
        let c = &self.m.config;
        let b = &self.w.blocks[layer];
        let (Some(qw), Some(kw)) = (&b.q_norm, &b.k_norm) else {
            return Err(Error::Internal(format!(
                "block {layer} has no q_norm/k_norm weights"
            )));
        };
        let [q_at, k_at, _] = self.qkv_layouts();
        let n = qkv.len() / q_at.stride;
        let eps = c.rms_norm_eps;
        k::rmsnorm_heads(self.dev(), qkv, q_at, n, c.num_heads, qw, eps)?;
        k::rmsnorm_heads(self.dev(), qkv, k_at, n, c.num_kv_heads, kw, eps)
    }

    fn rope(&self, qkv: &mut CudaSlice<f32>, batch: &AttnBatch) -> Result<()> {
        let c = &self.m.config;
        let [q_at, k_at, _] = self.qkv_layouts();
        let (pos, f) = (batch.positions(), &self.m.inv_freq);
        k::rope(self.dev(), qkv, q_at, c.num_heads, c.head_dim, pos, f)?;
        k::rope(self.dev(), qkv, k_at, c.num_kv_heads, c.head_dim, pos, f)
    }

    fn attention(
        &self,
        qkv: &CudaSlice<f32>,
        batch: &AttnBatch,
        plan: &Plan,
        caches: &mut [CudaKvCache],
        layer: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let dev = self.dev();
        let [q_at, k_at, v_at] = self.qkv_layouts();
        for (cache, &(_, len)) in caches.iter_mut().zip(&plan.rows) {
            let need = cache.own.layers[layer].len + len;
            cache.reserve::<T>(layer, need)?;
        }
        let shape = self.m.attn_shape();
        {
            let table = kv_table::<T>(dev, caches, layer)?;
            let stride = q_at.stride;
            k::kv_append(dev, qkv, stride, k_at.offset, v_at.offset, batch, &table)?;
            k::attention(dev, qkv, q_at, batch, &table, &shape, out, Splits::Auto)?;
        }
        for (cache, &(_, len)) in caches.iter_mut().zip(&plan.rows) {
            cache.own.layers[layer].len += len;
        }
        Ok(())
    }

    fn gemm_input<'a>(
        &self,
        x: &'a CudaSlice<f32>,
        tmp: &'a mut Option<CudaSlice<T>>,
    ) -> Result<&'a CudaSlice<T>> {
        T::gemm_input(self.dev(), x, tmp)
    }

    fn add(&self, h: &mut CudaSlice<f32>, n: usize, delta: &CudaSlice<f32>) -> Result<()> {
        let mut rows = h.slice_mut(..n * self.m.config.hidden_size);
        k::add_inplace(self.dev(), &mut rows, delta)
    }

    fn swiglu(&self, gate_up: &CudaSlice<f32>, out: &mut CudaSlice<T>) -> Result<()> {
        k::swiglu(self.dev(), gate_up, self.m.config.intermediate_size, out)
    }

    fn final_norm(&self, h: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        let dev = self.dev();
        let c = &self.m.config;
        let nn = n * c.hidden_size;
        // SAFETY: rmsnorm writes the first nn values, the copy the rest.
        let mut normed = unsafe { dev.alloc::<f32>(h.len())? };
        let (x, w) = (h.slice(..nn), &self.w.final_norm);
        k::rmsnorm(dev, &x, w, c.rms_norm_eps, &mut normed.slice_mut(..nn))?;
        if nn < h.len() {
            dev.stream()
                .memcpy_dtod(&h.slice(nn..), &mut normed.slice_mut(nn..))
                .map_err(|e| cuda_err("copying final-norm rows", e))?;
        }
        *h = normed;
        Ok(())
    }

    fn write_rows(&self, h: &mut CudaSlice<f32>, writes: &[(usize, &WriteOp)]) -> Result<()> {
        let writes: Vec<RowWrite> = writes
            .iter()
            .map(|&(token, op)| {
                let (WriteOp::Replace(v) | WriteOp::Add(v)) = op;
                RowWrite {
                    token,
                    add: matches!(op, WriteOp::Add(_)),
                    values: v,
                }
            })
            .collect();
        k::write_rows(self.dev(), h, self.m.config.hidden_size, &writes)
    }

    fn read_rows(&self, h: &CudaSlice<f32>, rows: &[usize]) -> Result<Vec<f32>> {
        let dev = self.dev();
        let idx: Vec<u32> = rows.iter().map(|&t| t as u32).collect();
        dev.download(&gather(dev, h, self.m.config.hidden_size, &idx)?)
    }

    fn logits(&self, h: &CudaSlice<f32>, rows: &[usize]) -> Result<Vec<f32>> {
        self.dev().download(&self.lm_head(h, rows)?)
    }

    /// Taken on the device: only the token ids come back.
    fn head_argmax(&self, h: &CudaSlice<f32>, rows: &[usize]) -> Result<Vec<u32>> {
        let dev = self.dev();
        let logits = self.lm_head(h, rows)?;
        let mut ids: CudaSlice<u32> = dev.zeros(rows.len())?;
        k::argmax(dev, &logits, self.m.config.vocab_size, &mut ids)?;
        dev.download(&ids)
    }
}

impl<T: Elem> Typed<'_, T> {
    /// Logits [rows.len(), vocab] of the stream rows `rows` (already final-normed).
    fn lm_head(&self, h: &CudaSlice<f32>, rows: &[usize]) -> Result<CudaSlice<f32>> {
        let dev = self.dev();
        let (d, vocab) = (self.m.config.hidden_size, self.m.config.vocab_size);
        let head = self.w.lm_head.as_ref().unwrap_or(&self.w.embed);
        // SAFETY: every chunk below writes its rows.
        let mut out = unsafe { dev.alloc::<f32>(rows.len() * vocab)? };
        let mut tmp = None;
        for (ci, chunk) in rows.chunks(LOGIT_CHUNK).enumerate() {
            let idx: Vec<u32> = chunk.iter().map(|&t| t as u32).collect();
            let x = gather(dev, h, d, &idx)?;
            let xt = T::gemm_input(dev, &x, &mut tmp)?;
            let r0 = ci * LOGIT_CHUNK;
            let mut y = out.slice_mut(r0 * vocab..(r0 + chunk.len()) * vocab);
            gemm::matmul_bt(dev, xt, chunk.len(), d, head, vocab, &mut y)?;
        }
        Ok(out)
    }
}

/// Rows `idx` of `src` ([rows, width]) into a new buffer [idx.len(), width].
fn gather(dev: &Device, src: &CudaSlice<f32>, width: usize, idx: &[u32]) -> Result<CudaSlice<f32>> {
    // SAFETY: every row is written by the gathers below.
    let mut dst = unsafe { dev.alloc::<f32>(idx.len() * width)? };
    for (ci, chunk) in idx.chunks(GATHER_ROWS).enumerate() {
        let r0 = ci * GATHER_ROWS;
        let idx_d = dev.upload(chunk)?;
        let mut view = dst.slice_mut(r0 * width..(r0 + chunk.len()) * width);
        k::gather_rows(dev, src, width, &idx_d, &mut view)?;
    }
    Ok(dst)
}
