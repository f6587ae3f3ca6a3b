//! The GPU's KV store (the device buffers behind a [`CudaKvCache`]; the forks are
//! `crate::kv`'s, shared with the CPU) and the tables the attention kernels read.

use super::device::Device;
use super::kernels::KvTable;
use super::{cuda_err, DType};
use crate::error::{Error, Result};
use crate::kv::{KvCache, KvStore};
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

/// The GPU's store of one sequence: per block, its own K/V buffers ([capacity, kv_dim] in
/// the model's weight dtype, grown by doubling).
pub struct DeviceKv {
    pub(super) dev: Arc<Device>,
    pub(super) dtype: DType,
    pub(super) kv_dim: usize,
    pub(super) max_positions: usize,
    pub(super) layers: Vec<OwnKv>,
}

impl KvStore for DeviceKv {
    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn len(&self, layer: usize) -> usize {
        self.layers[layer].len
    }

    fn empty_like(&self) -> Self {
        DeviceKv {
            dev: self.dev.clone(),
            dtype: self.dtype,
            kv_dim: self.kv_dim,
            max_positions: self.max_positions,
            layers: (0..self.layers.len()).map(|_| OwnKv::default()).collect(),
        }
    }

    /// The attention kernels read one prefix level (`RowKv` has one prefix pointer).
    const NESTED_FORKS: bool = false;
}

/// The GPU KV cache of one sequence: [`KvCache`] over a [`DeviceKv`], with the same forks
/// as the CPU's (one prefix level only: a fork cannot be forked again).
pub type CudaKvCache = KvCache<DeviceKv>;

impl std::fmt::Debug for CudaKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKvCache")
            .field("dtype", &self.own.dtype)
            .field(
                "lens",
                &(0..self.num_layers())
                    .map(|l| self.len(l))
                    .collect::<Vec<_>>(),
            )
            .field("forked", &self.is_fork())
            .finish()
    }
}

impl CudaKvCache {
    pub fn dtype(&self) -> DType {
        self.own.dtype
    }

    /// Keys and values of the `len(layer)` positions of block `layer` (prefix, then own),
    /// widened to f32: [positions, kv_dim] each. For tests and inspection.
    pub fn keys_values(&self, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let (mut ks, mut vs) = match &self.prefix {
            Some(p) if self.prefix_len[layer] > 0 => {
                let (mut k, mut v) = p.keys_values(layer)?;
                k.truncate(self.prefix_len[layer] * self.own.kv_dim);
                v.truncate(self.prefix_len[layer] * self.own.kv_dim);
                (k, v)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let store = &self.own;
        let own = &store.layers[layer];
        if own.len > 0 {
            let n = own.len * store.kv_dim;
            let (k, v) = match store.dtype {
                DType::F32 => own_download::<f32>(&store.dev, own, n)?,
                DType::F16 => own_download::<f16>(&store.dev, own, n)?,
                DType::BF16 => own_download::<bf16>(&store.dev, own, n)?,
            };
            ks.extend(k);
            vs.extend(v);
        }
        Ok((ks, vs))
    }

    /// Makes room for `need` own positions in block `layer` (copying what is there).
    pub(super) fn reserve<T: Elem>(&mut self, layer: usize, need: usize) -> Result<()> {
        let store = &mut self.own;
        let kv_dim = store.kv_dim;
        let limit = store
            .max_positions
            .saturating_sub(self.prefix_len[layer])
            .max(need);
        let own = &mut store.layers[layer];
        if need <= own.cap {
            return Ok(());
        }
        let cap = need.max(2 * own.cap).max(16).min(limit);
        let dev = &store.dev;
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
    let kv_dim = caches.first().map_or(0, |c| c.own.kv_dim);
    let mut b = KvTable::<T>::builder(dev, kv_dim);
    for c in caches {
        let prefix_len = c.prefix_len[layer];
        let (ok, ov) = typed_mut::<T>(&mut c.own.layers[layer])?;
        match &c.prefix {
            Some(p) if prefix_len > 0 => {
                let (pk, pv) = typed::<T>(&p.own.layers[layer])?;
                b.row_with_prefix(pk, pv, prefix_len, ok, ov)?;
            }
            _ => {
                b.row(ok, ov)?;
            }
        }
    }
    b.build()
}
