//! Per-sequence key/value cache. A cache may sit on a shared, read-only prefix (another
//! cache behind an `Arc`) of which it sees a chosen length per block: that is how one
//! target prompt run once serves thousands of patched continuations.

use crate::config::Config;
use crate::error::Result;
use std::sync::Arc;

#[derive(Clone, Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

#[derive(Clone)]
pub struct KvCache {
    kv_dim: usize,
    prefix: Option<Arc<KvCache>>,
    /// Per block: how many positions of `prefix` this cache sees.
    prefix_len: Vec<usize>,
    own: Vec<LayerKv>,
}

/// One contiguous run of cached positions: keys and values, [positions, kv_dim] each.
pub struct Segment<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
}

impl KvCache {
    pub fn new(config: &Config) -> Self {
        KvCache {
            kv_dim: config.kv_dim(),
            prefix: None,
            prefix_len: vec![0; config.num_layers],
            own: vec![LayerKv::default(); config.num_layers],
        }
    }

    pub fn num_layers(&self) -> usize {
        self.own.len()
    }

    /// Number of cached positions in block `layer`.
    pub fn len(&self, layer: usize) -> usize {
        self.prefix_len[layer] + self.own[layer].k.len() / self.kv_dim
    }

    pub fn is_empty(&self) -> bool {
        (0..self.num_layers()).all(|l| self.len(l) == 0)
    }

    /// A new cache that sees the first `lens[l]` positions of `self` in block l and appends
    /// its own positions after them. Nothing is copied.
    pub fn fork(self: &Arc<Self>, lens: &[usize]) -> Result<KvCache> {
        crate::plan::check_fork(self.as_ref(), lens)?;
        Ok(KvCache {
            kv_dim: self.kv_dim,
            prefix: Some(Arc::clone(self)),
            prefix_len: lens.to_vec(),
            own: vec![LayerKv::default(); self.num_layers()],
        })
    }

    /// Fork seeing the first `len` positions of every block.
    pub fn fork_at(self: &Arc<Self>, len: usize) -> Result<KvCache> {
        self.fork(&vec![len; self.num_layers()])
    }

    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.own[layer].k.extend_from_slice(k);
        self.own[layer].v.extend_from_slice(v);
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
        let own = (limit - from_prefix) * self.kv_dim;
        let layer_kv = &self.own[layer];
        if own > 0 {
            out.push(Segment {
                k: &layer_kv.k[..own],
                v: &layer_kv.v[..own],
            });
        }
    }
}

impl crate::plan::CacheShape for KvCache {
    fn num_layers(&self) -> usize {
        KvCache::num_layers(self)
    }

    fn len(&self, layer: usize) -> usize {
        KvCache::len(self, layer)
    }
}
