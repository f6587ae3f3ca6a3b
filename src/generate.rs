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
        greedy_loop(rows, first, max_new, |req| {
            let out = self.forward(caches, req)?;
            Ok((0..rows)
                .map(|r| {
                    argmax(
                        out.last_logits(r)
                            .expect("LogitsAt::Last yields one per row"),
                    ) as u32
                })
                .collect())
        })
    }
}

/// The greedy loop of every backend: `argmax_of` runs a request (whose logits are asked at
/// each row's last position) and returns each row's top token.
pub(crate) fn greedy_loop(
    rows: usize,
    first: Request,
    max_new: usize,
    mut argmax_of: impl FnMut(&Request) -> Result<Vec<u32>>,
) -> Result<Vec<Vec<u32>>> {
    let mut generated = vec![Vec::with_capacity(max_new); rows];
    let mut req = first.logits(LogitsAt::Last);
    while generated.first().is_some_and(|g| g.len() < max_new) {
        let next = argmax_of(&req)?;
        for (g, &t) in generated.iter_mut().zip(&next) {
            g.push(t);
        }
        req = Request::tokens(next.iter().map(|&t| vec![t]).collect());
    }
    Ok(generated)
}
