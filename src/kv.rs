//! Per-sequence key/value caches, one type for every backend. A cache may sit on a shared,
//! read-only prefix (another cache behind an `Arc`) of which it sees a chosen length per
//! block: that is how one target prompt run once serves thousands of patched
//! continuations. What a backend stores per block is its [`KvStore`]; the fork logic is
//! written once here.

use crate::config::Config;
use crate::error::{Error, Result};
use std::sync::Arc;

/// A backend's own keys and values of one sequence, block by block.
pub trait KvStore: Sized {
    fn num_layers(&self) -> usize;
    /// Positions held in block `layer`.
    fn len(&self, layer: usize) -> usize;
    /// An empty store for a fork of `self`.
    fn empty_like(&self) -> Self;
    /// Whether a fork of a fork can be read: a backend whose attention reads one prefix
    /// level says no, and such a fork is refused when it is made, not when it is used.
    const NESTED_FORKS: bool;
}

/// The KV cache of one sequence: a shared prefix it sees `prefix_len[l]` positions of in
/// block l, then its own positions. `KvCache` alone is the CPU's (f32 on the host);
/// `backend::cuda::CudaKvCache` is the GPU's.
#[derive(Clone)]
pub struct KvCache<S: KvStore = HostKv> {
    pub(crate) prefix: Option<Arc<KvCache<S>>>,
    /// Per block: how many positions of `prefix` this cache sees.
    pub(crate) prefix_len: Vec<usize>,
    pub(crate) own: S,
}

impl<S: KvStore> KvCache<S> {
    pub(crate) fn from_store(own: S) -> Self {
        KvCache {
            prefix: None,
            prefix_len: vec![0; own.num_layers()],
            own,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.own.num_layers()
    }

    /// Number of cached positions in block `layer`.
    pub fn len(&self, layer: usize) -> usize {
        self.prefix_len[layer] + self.own.len(layer)
    }

    pub fn is_empty(&self) -> bool {
        (0..self.num_layers()).all(|l| self.len(l) == 0)
    }

    /// Whether this cache sits on a shared prefix.
    pub fn is_fork(&self) -> bool {
        self.prefix.is_some()
    }

    /// A new cache that sees the first `lens[l]` positions of `self` in block l and appends
    /// its own positions after them. Nothing is copied.
    pub fn fork(self: &Arc<Self>, lens: &[usize]) -> Result<Self> {
        crate::plan::check_fork(self.as_ref(), lens)?;
        if !S::NESTED_FORKS && self.is_fork() {
            return Err(Error::input(
                "fork: this KV cache is itself a fork, and this backend reads one level of \
                 shared prefix only (fork the original cache instead)",
            ));
        }
        Ok(KvCache {
            prefix: Some(Arc::clone(self)),
            prefix_len: lens.to_vec(),
            own: self.own.empty_like(),
        })
    }

    /// Fork seeing the first `len` positions of every block.
    pub fn fork_at(self: &Arc<Self>, len: usize) -> Result<Self> {
        self.fork(&vec![len; self.num_layers()])
    }
}

impl<S: KvStore> crate::plan::CacheShape for KvCache<S> {
    fn num_layers(&self) -> usize {
        KvCache::num_layers(self)
    }

    fn len(&self, layer: usize) -> usize {
        KvCache::len(self, layer)
    }
}

/// The CPU's store: f32 keys and values per block, [positions, kv_dim] each.
#[derive(Clone)]
pub struct HostKv {
    kv_dim: usize,
    layers: Vec<LayerKv>,
}

#[derive(Clone, Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvStore for HostKv {
    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn len(&self, layer: usize) -> usize {
        self.layers[layer].k.len() / self.kv_dim
    }

    fn empty_like(&self) -> Self {
        HostKv {
            kv_dim: self.kv_dim,
            layers: vec![LayerKv::default(); self.layers.len()],
        }
    }

    const NESTED_FORKS: bool = true;
}

/// One contiguous run of cached positions: keys and values, [positions, kv_dim] each.
pub struct Segment<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
}

impl KvCache {
    pub fn new(config: &Config) -> Self {
        KvCache::from_store(HostKv {
            kv_dim: config.kv_dim(),
            layers: vec![LayerKv::default(); config.num_layers],
        })
    }

    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let own = &mut self.own.layers[layer];
        own.k.extend_from_slice(k);
        own.v.extend_from_slice(v);
    }

    /// The first `limit` positions of block `layer`, as contiguous segments in order.
    pub fn segments(&self, layer: usize, limit: usize) -> Vec<Segment<'_>> {
        let mut out = Vec::new();
        self.collect_segments(layer, limit, &mut out);
        out
    }

    /// [`KvCache::segments`] into `out` (cleared first), reusing its allocation.
    pub(crate) fn segments_into<'a>(
        &'a self,
        layer: usize,
        limit: usize,
        out: &mut Vec<Segment<'a>>,
    ) {
        out.clear();
        self.collect_segments(layer, limit, out);
    }

    fn collect_segments<'a>(&'a self, layer: usize, limit: usize, out: &mut Vec<Segment<'a>>) {
        let from_prefix = limit.min(self.prefix_len[layer]);
        if let Some(prefix) = &self.prefix {
            prefix.collect_segments(layer, from_prefix, out);
        }
        let own = (limit - from_prefix) * self.own.kv_dim;
        let layer_kv = &self.own.layers[layer];
        if own > 0 {
            out.push(Segment {
                k: &layer_kv.k[..own],
                v: &layer_kv.v[..own],
            });
        }
    }
}
