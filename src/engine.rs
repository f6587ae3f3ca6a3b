//! What the patchscope layer and the CLI need from a backend: a forward pass over KV
//! caches that can be forked, greedy generation, and the model's config and tokenizer.
//! [`CpuModel`](crate::CpuModel) (f32) and
//! [`CudaModel`](crate::backend::cuda::CudaModel) (one GPU) both implement it through the
//! one pass of `crate::model`, so every experiment runs unchanged on either; the CPU one
//! is the reference the other is tested against.

use crate::config::Config;
use crate::error::Result;
use crate::kv::{KvCache, KvStore};
use crate::request::{Output, Request};
use crate::tokenizer::Tokenizer;
use std::sync::Arc;

/// A KV cache for one sequence that can serve as a shared, read-only prefix.
pub trait Cache: Sized {
    /// A new cache that sees the first `lens[l]` positions of `prefix` in block l.
    fn fork(prefix: &Arc<Self>, lens: &[usize]) -> Result<Self>;
}

/// A model on a backend.
pub trait Engine {
    type Cache: Cache;

    fn config(&self) -> &Config;
    fn tokenizer(&self) -> &Tokenizer;
    /// An empty KV cache for one sequence.
    fn new_cache(&self) -> Self::Cache;
    /// One pass over `caches.len()` rows; row r continues `caches[r]`.
    fn forward(&self, caches: &mut [Self::Cache], req: &Request) -> Result<Output>;
    /// Runs `first`, then feeds each row's argmax back until `max_new` tokens per row
    /// exist. Returns the new tokens per row.
    fn greedy(
        &self,
        caches: &mut [Self::Cache],
        first: Request,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>>;
    /// The LM head's argmax for each final-normed state: what `argmax` of its logits gives,
    /// without handing the logits back.
    fn head_argmax(&self, final_normed: Vec<Vec<f32>>) -> Result<Vec<u32>>;
    /// Where the pass runs, for logs ("cpu f32", "cuda:1 NVIDIA H100 (sm_90) F16").
    fn describe(&self) -> String;
    /// What computes, not which GPU slot ("cpu f32", "NVIDIA H100 (sm_90) F16"): results
    /// record this, since the same kind of card gives the same bits in any slot.
    fn hardware(&self) -> String;
    /// Bytes per element of the weight matrices and the KV cache.
    fn weight_elem_bytes(&self) -> usize;

    fn num_layers(&self) -> usize {
        self.config().num_layers
    }
}

impl<S: KvStore> Cache for KvCache<S> {
    fn fork(prefix: &Arc<Self>, lens: &[usize]) -> Result<Self> {
        KvCache::fork(prefix, lens)
    }
}
