//! The GPU KV cache of one sequence: its own keys and values per block, over a shared,
//! read-only prefix it was forked from, and the tables the attention kernel reads.

use super::device::Device;
use super::kernels::KvTable;
use super::{cuda_err, DType};
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use std::sync::Arc;

use super::storage::*;

/// A row's own keys and values in one block: `cap` positions allocated, `len` used.
#[derive(Default)]
pub(super) struct OwnKv {
    pub(super) k: Option<Buf>,
    pub(super) v: Option<Buf>,
    pub(super) len: usize,
    pub(super) cap: usize,
}

/// The device twin of [`crate::kv::KvCache`]: per block, the row's own K/V buffers
/// ([capacity, kv_dim] in the model's weight dtype, grown by doubling), optionally after
/// a read-only prefix shared with other caches through an `Arc` ([`CudaKvCache::fork`]).
/// One prefix level only: a fork cannot be forked again.
pub struct CudaKvCache {
    pub(super) dev: Arc<Device>,
    pub(super) dtype: DType,
    pub(super) kv_dim: usize,
    pub(super) max_positions: usize,
    pub(super) prefix: Option<Arc<CudaKvCache>>,
    /// Per block: how many positions of `prefix` this cache sees.
    pub(super) prefix_len: Vec<usize>,
    pub(super) own: Vec<OwnKv>,
}

impl std::fmt::Debug for CudaKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKvCache")
            .field("dtype", &self.dtype)
            .field(
                "lens",
                &(0..self.num_layers())
                    .map(|l| self.len(l))
                    .collect::<Vec<_>>(),
            )
            .field("forked", &self.prefix.is_some())
            .finish()
    }
}

impl CudaKvCache {
    pub fn num_layers(&self) -> usize {
        self.own.len()
    }

    /// Number of cached positions in block `layer`.
    pub fn len(&self, layer: usize) -> usize {
        self.prefix_len[layer] + self.own[layer].len
    }

    pub fn is_empty(&self) -> bool {
        (0..self.num_layers()).all(|l| self.len(l) == 0)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether this cache sits on a shared prefix.
    pub fn is_fork(&self) -> bool {
        self.prefix.is_some()
    }

    /// A new cache that sees the first `lens[l]` positions of `self` in block l and appends
    /// its own positions after them. Nothing is copied. `self` must not be a fork itself.
    pub fn fork(self: &Arc<Self>, lens: &[usize]) -> Result<CudaKvCache> {
        crate::plan::check_fork(self.as_ref(), lens)?;
        if self.prefix.is_some() {
            return Err(Error::input(
                "fork: this GPU KV cache is itself a fork; the CUDA backend supports one \
                 level of shared prefix only (fork the original cache instead)",
            ));
        }
        Ok(CudaKvCache {
            dev: self.dev.clone(),
            dtype: self.dtype,
            kv_dim: self.kv_dim,
            max_positions: self.max_positions,
            prefix: Some(Arc::clone(self)),
            prefix_len: lens.to_vec(),
            own: (0..self.num_layers()).map(|_| OwnKv::default()).collect(),
        })
    }

    /// Fork seeing the first `len` positions of every block.
    pub fn fork_at(self: &Arc<Self>, len: usize) -> Result<CudaKvCache> {
        self.fork(&vec![len; self.num_layers()])
    }

    /// Keys and values of the `len(layer)` positions of block `layer` (prefix, then own),
    /// widened to f32: [positions, kv_dim] each. For tests and inspection.
    pub fn keys_values(&self, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let (mut ks, mut vs) = match &self.prefix {
            Some(p) if self.prefix_len[layer] > 0 => {
                let (mut k, mut v) = p.keys_values(layer)?;
                k.truncate(self.prefix_len[layer] * self.kv_dim);
                v.truncate(self.prefix_len[layer] * self.kv_dim);
                (k, v)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let own = &self.own[layer];
        if own.len > 0 {
            let n = own.len * self.kv_dim;
            let (k, v) = match self.dtype {
                DType::F32 => own_download::<f32>(&self.dev, own, n)?,
                DType::F16 => own_download::<f16>(&self.dev, own, n)?,
                DType::BF16 => own_download::<bf16>(&self.dev, own, n)?,
            };
            ks.extend(k);
            vs.extend(v);
        }
        Ok((ks, vs))
    }

    /// Makes room for `need` own positions in block `layer` (copying what is there).
    pub(super) fn reserve<T: Elem>(&mut self, layer: usize, need: usize) -> Result<()> {
        let kv_dim = self.kv_dim;
        let limit = self
            .max_positions
            .saturating_sub(self.prefix_len[layer])
            .max(need);
        let own = &mut self.own[layer];
        if need <= own.cap {
            return Ok(());
        }
        let cap = need.max(2 * own.cap).max(16).min(limit);
        let dev = &self.dev;
        let mut k_new: CudaSlice<T> = dev.zeros(cap * kv_dim)?;
        let mut v_new: CudaSlice<T> = dev.zeros(cap * kv_dim)?;
        if own.len > 0 {
            let n = own.len * kv_dim;
            let (k_old, v_old) = typed::<T>(own)?;
            let s = dev.stream();
            s.memcpy_dtod(&k_old.slice(..n), &mut k_new.slice_mut(..n))
                .map_err(|e| cuda_err("growing a KV cache", e))?;
            s.memcpy_dtod(&v_old.slice(..n), &mut v_new.slice_mut(..n))
                .map_err(|e| cuda_err("growing a KV cache", e))?;
        }
        own.k = Some(T::wrap(k_new));
        own.v = Some(T::wrap(v_new));
        own.cap = cap;
        Ok(())
    }
}

pub(super) fn typed<T: Elem>(own: &OwnKv) -> Result<(&CudaSlice<T>, &CudaSlice<T>)> {
    Ok((typed_buf(&own.k)?, typed_buf(&own.v)?))
}

pub(super) fn typed_buf<T: Elem>(b: &Option<Buf>) -> Result<&CudaSlice<T>> {
    b.as_ref().and_then(T::get).ok_or_else(not_typed::<T>)
}

fn typed_mut<T: Elem>(own: &mut OwnKv) -> Result<(&mut CudaSlice<T>, &mut CudaSlice<T>)> {
    let k = own
        .k
        .as_mut()
        .and_then(T::get_mut)
        .ok_or_else(not_typed::<T>)?;
    let v = own
        .v
        .as_mut()
        .and_then(T::get_mut)
        .ok_or_else(not_typed::<T>)?;
    Ok((k, v))
}

fn not_typed<T: Elem>() -> Error {
    Error::internal(format!(
        "KV cache buffer is missing or not {}",
        T::DTYPE.suffix()
    ))
}

pub(super) fn own_download<T: Elem>(
    dev: &Device,
    own: &OwnKv,
    n: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (k, v) = typed::<T>(own)?;
    Ok((
        T::to_f32(dev.download(&k.slice(..n))?),
        T::to_f32(dev.download(&v.slice(..n))?),
    ))
}

/// The attention/append table of block `layer` over `caches`, borrowing their buffers.
pub(super) fn kv_table<'a, T: Elem>(
    dev: &'a Device,
    caches: &'a mut [CudaKvCache],
    layer: usize,
) -> Result<KvTable<'a, T>> {
    let kv_dim = caches.first().map_or(0, |c| c.kv_dim);
    let mut b = KvTable::<T>::builder(dev, kv_dim);
    for c in caches {
        let prefix_len = c.prefix_len[layer];
        let (ok, ov) = typed_mut::<T>(&mut c.own[layer])?;
        match &c.prefix {
            Some(p) if prefix_len > 0 => {
                let (pk, pv) = typed::<T>(&p.own[layer])?;
                b.row_with_prefix(pk, pv, prefix_len, ok, ov)?;
            }
            _ => {
                b.row(ok, ov)?;
            }
        }
    }
    b.build()
}
