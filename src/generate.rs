//! Greedy generation on top of the forward pass. The first pass may carry residual-stream
//! writes (or start from patched states); its keys and values, patch included, stay in
//! the KV cache that every later token attends to.

use crate::backend::cpu::logits::argmax;
use crate::error::Result;
use crate::forward::{LogitsAt, Request};
use crate::kv::KvCache;
use crate::model::Model;

impl Model {
    /// Runs `first`, then feeds each row's argmax back until `max_new` tokens per row exist.
    /// Returns the new tokens per row.
    pub fn greedy(
        &self,
        caches: &mut [KvCache],
        first: Request,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let rows = caches.len();
        let mut generated = vec![Vec::with_capacity(max_new); rows];
        if max_new == 0 {
            return Ok(generated);
        }
        let mut out = self.forward(caches, &first.logits(LogitsAt::Last))?;
        loop {
            let next: Vec<u32> = (0..rows)
                .map(|r| {
                    argmax(
                        out.last_logits(r)
                            .expect("LogitsAt::Last yields one per row"),
                    ) as u32
                })
                .collect();
            for (g, &t) in generated.iter_mut().zip(&next) {
                g.push(t);
            }
            if generated[0].len() == max_new {
                return Ok(generated);
            }
            let step = Request::tokens(next.iter().map(|&t| vec![t]).collect());
            out = self.forward(caches, &step)?;
        }
    }
}
