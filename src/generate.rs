//! Greedy generation on top of the forward pass. The first pass may carry residual-stream
//! writes (or start from patched states); its keys and values, patch included, stay in
//! the KV cache that every later token attends to.

use crate::error::Result;
use crate::kv::KvCache;
use crate::model::Model;
use crate::request::{LogitsAt, Request};
use crate::stream::{Positions, Site, State};

impl Model {
    /// Runs `first`, then feeds each row's argmax back until `max_new` tokens per row exist.
    /// Returns the new tokens per row. Each step's argmax comes from the final-normed
    /// states through [`Model::head_argmax`], the exact argmax without the full LM head.
    pub fn greedy(
        &self,
        caches: &mut [KvCache],
        first: Request,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let rows = caches.len();
        greedy_loop(rows, first, max_new, |req| {
            let req = (0..rows).fold(req.clone().logits(LogitsAt::None), |req, r| {
                req.read(Site::FinalNorm, r, Positions::Last)
            });
            let out = self.forward(caches, &req)?;
            // each row's last position is its latest final-normed state in this pass
            let mut last: Vec<Option<&State>> = vec![None; rows];
            for s in out.states.iter().filter(|s| s.site == Site::FinalNorm) {
                if last[s.row].is_none_or(|l| l.pos < s.pos) {
                    last[s.row] = Some(s);
                }
            }
            let xs: Vec<f32> = last
                .iter()
                .flat_map(|s| s.expect("every row reads its last state").values.iter())
                .copied()
                .collect();
            Ok(self.head_argmax(&xs))
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
