//! What the patchscope layer and the CLI need from a backend: a forward pass over KV
//! caches that can be forked, greedy generation, and the model's config and tokenizer.
//! [`Model`] (CPU, f32) and [`CudaModel`] (one GPU) both implement it, so every experiment
//! runs unchanged on either; the CPU one is the reference the other is tested against.

use crate::backend::cpu::logits::argmax;
use crate::backend::cuda::{CudaKvCache, CudaModel, DType};
use crate::config::Config;
use crate::error::Result;
use crate::kv::KvCache;
use crate::model::Model;
use crate::request::{HiddenRow, Input, LogitsAt, Output, Request};
use crate::stream::Site;
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
    fn head_argmax(&self, final_normed: Vec<Vec<f32>>) -> Result<Vec<u32>> {
        let n = final_normed.len();
        let rows = final_normed
            .into_iter()
            .map(|states| HiddenRow {
                start_pos: 0,
                states,
            })
            .collect();
        let req = Request::new(Input::Hidden {
            site: Site::FinalNorm,
            rows,
        })
        .logits(LogitsAt::Last);
        let mut caches: Vec<_> = (0..n).map(|_| self.new_cache()).collect();
        let out = self.forward(&mut caches, &req)?;
        Ok((0..n)
            .map(|r| argmax(out.last_logits(r).expect("one logit row per row")) as u32)
            .collect())
    }
    /// Where the pass runs, for logs and reports ("cpu f32", "cuda:0 NVIDIA H100 f16").
    fn describe(&self) -> String;
    /// Bytes per element of the weight matrices and the KV cache.
    fn weight_elem_bytes(&self) -> usize;

    fn num_layers(&self) -> usize {
        self.config().num_layers
    }
}

impl Cache for KvCache {
    fn fork(prefix: &Arc<Self>, lens: &[usize]) -> Result<Self> {
        KvCache::fork(prefix, lens)
    }
}

impl Cache for CudaKvCache {
    fn fork(prefix: &Arc<Self>, lens: &[usize]) -> Result<Self> {
        CudaKvCache::fork(prefix, lens)
    }
}

impl Engine for Model {
    type Cache = KvCache;

    fn config(&self) -> &Config {
        &self.config
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn new_cache(&self) -> KvCache {
        Model::new_cache(self)
    }
    fn forward(&self, caches: &mut [KvCache], req: &Request) -> Result<Output> {
        Model::forward(self, caches, req)
    }
    fn greedy(
        &self,
        caches: &mut [KvCache],
        first: Request,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        Model::greedy(self, caches, first, max_new)
    }
    fn head_argmax(&self, final_normed: Vec<Vec<f32>>) -> Result<Vec<u32>> {
        let hidden = self.config.hidden_size;
        if let Some(bad) = final_normed.iter().find(|s| s.len() != hidden) {
            return Err(crate::Error::input(format!(
                "a state of {} values for hidden size {hidden}",
                bad.len()
            )));
        }
        Ok(Model::head_argmax(self, &final_normed.concat()))
    }
    fn describe(&self) -> String {
        "cpu f32".into()
    }
    fn weight_elem_bytes(&self) -> usize {
        4
    }
}

impl Engine for CudaModel {
    type Cache = CudaKvCache;

    fn config(&self) -> &Config {
        CudaModel::config(self)
    }
    fn tokenizer(&self) -> &Tokenizer {
        CudaModel::tokenizer(self)
    }
    fn new_cache(&self) -> CudaKvCache {
        CudaModel::new_cache(self)
    }
    fn forward(&self, caches: &mut [CudaKvCache], req: &Request) -> Result<Output> {
        CudaModel::forward(self, caches, req)
    }
    fn greedy(
        &self,
        caches: &mut [CudaKvCache],
        first: Request,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        CudaModel::greedy(self, caches, first, max_new)
    }
    fn describe(&self) -> String {
        let d = self.device();
        let (major, minor) = d.compute_capability();
        format!(
            "cuda:{} {} (sm_{major}{minor}) {:?}",
            d.context().ordinal(),
            d.name(),
            self.dtype()
        )
    }
    fn weight_elem_bytes(&self) -> usize {
        match self.dtype() {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}
