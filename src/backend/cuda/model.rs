//! The whole Qwen2/Llama forward pass on one GPU, with the semantics and the request API of
//! the CPU pass (`Model::forward` in src/forward.rs): packed rows of unequal lengths, each
//! continuing its own KV cache; input tokens or states at any site; residual-stream reads
//! and writes where the pass reaches their site (writes first); logits where asked.
//!
//! Numerics: weights (GEMM matrices, the embedding table and the LM head) are held in the
//! chosen [`DType`]; norm weights and biases in f32. The residual stream, every GEMM
//! accumulation, softmax and all elementwise math are f32. Activations are rounded to the
//! weight dtype just before each GEMM (RMSNorm and SwiGLU write that dtype directly; the
//! attention output and the rows fed to the LM head are cast); in f32 mode nothing is
//! rounded. KV caches hold keys and values in the weight dtype (f32 in f32 mode).
//!
//! Requests are checked by the same plan as the CPU pass's (src/plan.rs: rows, positions,
//! sites, write sizes, token ids, cache lengths, logit rows) before any block runs, so
//! both backends refuse the same requests with the same messages and leave the caches
//! untouched when they do.

use super::device::Device;
use super::gemm;
use super::kernels::{self as k, AttnBatch, RowLayout, RowWrite, Splits, HEAD_DIM_MAX};
use super::{cuda_err, DType};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::{CacheShape, Init, Plan, StreamOps};
use crate::request::{Logits, Output, Request};
use crate::shape::{AttnShape, TokenAt};
use crate::stream::{Site, State, WriteOp};
use crate::tokenizer::Tokenizer;
use cudarc::driver::{CudaSlice, CudaViewMut};
use std::sync::Arc;

use super::kv_cache::*;
use super::storage::*;

/// Rows per gather launch (the gather kernel's grid.y limit).
const GATHER_ROWS: usize = 65535;
/// Rows of the LM head product per chunk, to bound the scratch for `LogitsAt::All`.
const LOGIT_CHUNK: usize = 1024;

// ---- the pass --------------------------------------------------------------------------

impl CacheShape for CudaKvCache {
    fn num_layers(&self) -> usize {
        CudaKvCache::num_layers(self)
    }

    fn len(&self, layer: usize) -> usize {
        CudaKvCache::len(self, layer)
    }
}

/// Per-pass buffers of the blocks.
struct Scratch<T: Elem> {
    /// Normed stream, GEMM input [n, hidden].
    x: CudaSlice<T>,
    /// [n, q_dim + 2 kv_dim]
    qkv: CudaSlice<f32>,
    /// [n, q_dim]
    attn: CudaSlice<f32>,
    attn_t: Option<CudaSlice<T>>,
    /// [n, hidden]
    o: CudaSlice<f32>,
    /// [n, 2 intermediate]
    gate_up: CudaSlice<f32>,
    /// [n, intermediate]
    act: CudaSlice<T>,
}

/// A pass's results before the logits leave the device.
struct Pass {
    states: Vec<State>,
    /// [logit rows, vocab], with the (row, pos) of each.
    logits: Option<(CudaSlice<f32>, Vec<TokenAt>)>,
}

/// Qwen2/Llama on one GPU. Build it from a loaded host [`Model`] with [`CudaModel::new`].
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
    /// `dtype`, norms and biases in f32.
    pub fn new(host: &Model, dev: Arc<Device>, dtype: DType) -> Result<CudaModel> {
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

    /// An empty KV cache for one sequence of this model (nothing is allocated until the
    /// first pass).
    pub fn new_cache(&self) -> CudaKvCache {
        CudaKvCache {
            dev: self.dev.clone(),
            dtype: self.dtype,
            kv_dim: self.config.kv_dim(),
            max_positions: self.config.max_position_embeddings,
            prefix: None,
            prefix_len: vec![0; self.config.num_layers],
            own: (0..self.config.num_layers)
                .map(|_| OwnKv::default())
                .collect(),
        }
    }

    /// Runs one pass over `caches.len()` rows (row r continues `caches[r]`), like
    /// `Model::forward`.
    pub fn forward(&self, caches: &mut [CudaKvCache], req: &Request) -> Result<Output> {
        let pass = self.run(caches, req)?;
        let mut out = Output {
            logits: Vec::new(),
            states: pass.states,
        };
        if let Some((buf, at)) = pass.logits {
            let vocab = self.config.vocab_size;
            let host = self.dev.download(&buf)?;
            out.logits = at
                .iter()
                .zip(host.chunks_exact(vocab))
                .map(|(t, v)| Logits {
                    row: t.row,
                    pos: t.pos,
                    values: v.to_vec(),
                })
                .collect();
        }
        Ok(out)
    }

    /// Runs `first`, then feeds each row's argmax (taken on the device) back until
    /// `max_new` tokens per row exist, like `Model::greedy`. Returns the new tokens per row.
    pub fn greedy(
        &self,
        caches: &mut [CudaKvCache],
        first: Request,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let rows = caches.len();
        crate::generate::greedy_loop(rows, first, max_new, |req| {
            let pass = self.run(caches, req)?;
            let (logits, _) = pass
                .logits
                .as_ref()
                .expect("LogitsAt::Last yields one per row");
            let mut ids: CudaSlice<u32> = self.dev.zeros(rows)?;
            k::argmax(&self.dev, logits, self.config.vocab_size, &mut ids)?;
            self.dev.download(&ids)
        })
    }

    fn run(&self, caches: &mut [CudaKvCache], req: &Request) -> Result<Pass> {
        match &self.weights {
            WeightSet::F32(w) => self.run_t(w, caches, req),
            WeightSet::F16(w) => self.run_t(w, caches, req),
            WeightSet::BF16(w) => self.run_t(w, caches, req),
        }
    }

    fn run_t<T: Elem>(
        &self,
        w: &Weights<T>,
        caches: &mut [CudaKvCache],
        req: &Request,
    ) -> Result<Pass> {
        debug_assert!(T::weights(&self.weights).is_some());
        let c = &self.config;
        let dev = &*self.dev;
        let (l, d) = (c.num_layers, c.hidden_size);
        self.check_caches(caches)?;
        let (start, plan, init) = Plan::new(&self.config, caches, &req.input)?;
        let ops = plan.stream_ops(&self.config, req, start)?;
        let logit_rows = plan.logit_rows(&req.logits)?;
        let n = plan.tokens.len();

        let mut h: CudaSlice<f32> = match init {
            Init::Ids(ids) => {
                let ids_d = dev.upload(&ids)?;
                // SAFETY: the embedding kernel writes every row.
                let mut h = unsafe { dev.alloc::<f32>(n * d)? };
                k::embedding(dev, &w.embed, d, &ids_d, &mut h)?;
                h
            }
            Init::States(s) => dev.upload(&s)?,
        };
        let mut states = Vec::new();
        self.apply_site(start, &mut h, &plan, &ops, &mut states)?;

        let shape = self.attn_shape();
        for (blocks, active) in plan.segments(start, l) {
            let nt = active.tokens.len();
            let batch = AttnBatch::new(dev, &active.tokens, &shape)?;
            let mut s = self.scratch::<T>(nt)?;
            for b in blocks {
                self.block(
                    &w.blocks[b],
                    b,
                    &mut h.slice_mut(..nt * d),
                    &active,
                    &batch,
                    &mut caches[..active.rows.len()],
                    &mut s,
                )?;
                self.apply_site(Site::BlockOut(b), &mut h, &plan, &ops, &mut states)?;
            }
        }
        let needs_norm = !logit_rows.is_empty()
            || ops.reads.iter().any(|r| r.0 == Site::FinalNorm)
            || ops.writes.iter().any(|w| w.0 == Site::FinalNorm);
        if start != Site::FinalNorm && needs_norm {
            // rows that join at the final norm come normed already
            let nn = plan.joined(Site::BlockOut(l - 1), l).tokens.len() * d;
            // SAFETY: rmsnorm writes the first nn values, the copy the rest.
            let mut normed = unsafe { dev.alloc::<f32>(n * d)? };
            k::rmsnorm(
                dev,
                &h.slice(..nn),
                &w.final_norm,
                c.rms_norm_eps,
                &mut normed.slice_mut(..nn),
            )?;
            if nn < n * d {
                dev.stream()
                    .memcpy_dtod(&h.slice(nn..), &mut normed.slice_mut(nn..))
                    .map_err(|e| cuda_err("copying final-norm rows", e))?;
            }
            h = normed;
            self.apply_site(Site::FinalNorm, &mut h, &plan, &ops, &mut states)?;
        }
        let logits = if logit_rows.is_empty() {
            None
        } else {
            let head = w.lm_head.as_ref().unwrap_or(&w.embed);
            let buf = self.lm_head::<T>(&h, &logit_rows, head)?;
            Some((buf, logit_rows.iter().map(|&t| plan.tokens[t]).collect()))
        };
        Ok(Pass { states, logits })
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            num_heads: self.config.num_heads,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    fn scratch<T: Elem>(&self, n: usize) -> Result<Scratch<T>> {
        let c = &self.config;
        let dev = &*self.dev;
        let (d, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        // SAFETY: every buffer is written by a kernel or GEMM before it is read in `block`.
        unsafe {
            Ok(Scratch {
                x: dev.alloc(n * d)?,
                qkv: dev.alloc(n * (q + 2 * kv))?,
                attn: dev.alloc(n * q)?,
                attn_t: None,
                o: dev.alloc(n * d)?,
                gate_up: dev.alloc(n * 2 * i)?,
                act: dev.alloc(n * i)?,
            })
        }
    }

    /// One decoder block over all new tokens, appending their keys/values to the caches.
    #[allow(clippy::too_many_arguments)]
    fn block<T: Elem>(
        &self,
        b: &BlockW<T>,
        layer: usize,
        h: &mut CudaViewMut<'_, f32>,
        plan: &Plan,
        batch: &AttnBatch,
        caches: &mut [CudaKvCache],
        s: &mut Scratch<T>,
    ) -> Result<()> {
        let c = &self.config;
        let dev = &*self.dev;
        let n = plan.tokens.len();
        let (d, qd, kvd, inter) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let width = qd + 2 * kvd;
        let eps = c.rms_norm_eps;

        k::rmsnorm(dev, h, &b.input_norm, eps, &mut s.x)?;
        gemm::linear(
            dev,
            &s.x,
            n,
            d,
            &b.qkv,
            width,
            b.qkv_bias.as_ref(),
            &mut s.qkv,
        )?;
        let q_at = RowLayout {
            stride: width,
            offset: 0,
        };
        let k_at = RowLayout {
            stride: width,
            offset: qd,
        };
        let pos = batch.positions();
        k::rope(
            dev,
            &mut s.qkv,
            q_at,
            c.num_heads,
            c.head_dim,
            pos,
            &self.inv_freq,
        )?;
        k::rope(
            dev,
            &mut s.qkv,
            k_at,
            c.num_kv_heads,
            c.head_dim,
            pos,
            &self.inv_freq,
        )?;

        for (cache, &(_, len)) in caches.iter_mut().zip(&plan.rows) {
            let need = cache.own[layer].len + len;
            cache.reserve::<T>(layer, need)?;
        }
        let table = kv_table::<T>(dev, caches, layer)?;
        // SAFETY: the table names the caches' buffers, which `caches` (borrowed for the
        // whole call) keeps alive and unmoved; all work is ordered on the device's stream,
        // and a buffer that is dropped later is freed in stream order.
        unsafe { k::kv_append(dev, &s.qkv, width, qd, qd + kvd, batch, &table)? };
        for (cache, &(_, len)) in caches.iter_mut().zip(&plan.rows) {
            cache.own[layer].len += len;
        }
        let shape = self.attn_shape();
        // SAFETY: as for kv_append.
        unsafe {
            k::attention(
                dev,
                &s.qkv,
                q_at,
                batch,
                &table,
                &shape,
                &mut s.attn,
                Splits::Auto,
            )?
        };
        let a = T::gemm_input(dev, &s.attn, &mut s.attn_t)?;
        gemm::matmul_bt(dev, a, n, qd, &b.o_proj, d, &mut s.o)?;
        k::add_inplace(dev, h, &s.o)?;

        k::rmsnorm(dev, h, &b.post_norm, eps, &mut s.x)?;
        gemm::matmul_bt(dev, &s.x, n, d, &b.gate_up, 2 * inter, &mut s.gate_up)?;
        k::swiglu(dev, &s.gate_up, inter, &mut s.act)?;
        gemm::matmul_bt(dev, &s.act, n, inter, &b.down, d, &mut s.o)?;
        k::add_inplace(dev, h, &s.o)
    }

    /// Logits [rows.len(), vocab] of the stream rows `rows` (already final-normed).
    fn lm_head<T: Elem>(
        &self,
        h: &CudaSlice<f32>,
        rows: &[usize],
        head: &CudaSlice<T>,
    ) -> Result<CudaSlice<f32>> {
        let dev = &*self.dev;
        let (d, vocab) = (self.config.hidden_size, self.config.vocab_size);
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

    /// Applies the writes, then the reads, of `site`.
    fn apply_site(
        &self,
        site: Site,
        h: &mut CudaSlice<f32>,
        plan: &Plan,
        ops: &StreamOps,
        states: &mut Vec<State>,
    ) -> Result<()> {
        let dev = &*self.dev;
        let d = self.config.hidden_size;
        let writes: Vec<RowWrite> = ops
            .writes
            .iter()
            .filter(|w| w.0 == site)
            .map(|&(_, t, op)| {
                let (WriteOp::Replace(v) | WriteOp::Add(v)) = op;
                RowWrite {
                    token: t,
                    add: matches!(op, WriteOp::Add(_)),
                    values: v,
                }
            })
            .collect();
        k::write_rows(dev, h, d, &writes)?;
        let reads: Vec<usize> = ops
            .reads
            .iter()
            .filter(|r| r.0 == site)
            .map(|r| r.1)
            .collect();
        if reads.is_empty() {
            return Ok(());
        }
        let idx: Vec<u32> = reads.iter().map(|&t| t as u32).collect();
        let values = dev.download(&gather(dev, h, d, &idx)?)?;
        for (&t, v) in reads.iter().zip(values.chunks_exact(d)) {
            states.push(State {
                site,
                row: plan.tokens[t].row,
                pos: plan.tokens[t].pos,
                values: v.to_vec(),
            });
        }
        Ok(())
    }

    /// The checks only a device cache needs; the rest is the shared [`Plan`].
    fn check_caches(&self, caches: &[CudaKvCache]) -> Result<()> {
        for (r, kv) in caches.iter().enumerate() {
            if kv.kv_dim != self.config.kv_dim() {
                return Err(Error::input(format!(
                    "row {r}: KV cache is for another model"
                )));
            }
            if kv.dtype != self.dtype {
                return Err(Error::input(format!(
                    "row {r}: KV cache holds {} but this model runs in {}",
                    kv.dtype.suffix(),
                    self.dtype.suffix()
                )));
            }
            if kv.dev.context().ordinal() != self.dev.context().ordinal() {
                return Err(Error::input(format!(
                    "row {r}: KV cache is on CUDA device {}, the model on {}",
                    kv.dev.context().ordinal(),
                    self.dev.context().ordinal()
                )));
            }
        }
        Ok(())
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
