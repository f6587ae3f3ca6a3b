//! A target prompt run once and reused for every patch: its KV cache is shared by all
//! cells, and a patch at (block output l*, position i*) only recomputes what the patch
//! can change — blocks l*+1.. for position i* and the positions after it.
//!
//! Why this is exact: blocks 0..=l* of every position read nothing downstream of the
//! patch, so their keys/values and the states after block l* at positions > i* are the
//! target's own; they are taken from the single target run.

use crate::engine::{Cache, Engine};
use crate::error::{Error, Result};
use crate::forward::{HiddenRow, Input, LogitsAt, Request};
use crate::stream::{Positions, Site};
use std::sync::Arc;

/// `C` is the backend's KV cache type.
pub struct Target<C> {
    pub tokens: Vec<u32>,
    /// The patched position i*.
    pub patch_pos: usize,
    cache: Arc<C>,
    /// Per site order (Embed, BlockOut(0..L), FinalNorm): the target's states at the
    /// positions after i*, concatenated.
    after: Vec<Vec<f32>>,
}

impl<C: Cache> Target<C> {
    /// Runs `tokens` once; patches will replace position `patch_pos`.
    pub fn new<E: Engine<Cache = C>>(
        model: &E,
        tokens: Vec<u32>,
        patch_pos: usize,
    ) -> Result<Self> {
        if patch_pos >= tokens.len() {
            return Err(Error::input(format!(
                "target position {patch_pos} out of range: the target prompt has {} tokens",
                tokens.len()
            )));
        }
        let num_layers = model.num_layers();
        let sites = all_sites(num_layers);
        let later: Vec<usize> = (patch_pos + 1..tokens.len()).collect();
        let mut req = Request::tokens(vec![tokens.clone()]).logits(LogitsAt::None);
        if !later.is_empty() {
            for &s in &sites {
                req = req.read(s, 0, Positions::At(later.clone()));
            }
        }
        let mut cache = model.new_cache();
        let out = model.forward(std::slice::from_mut(&mut cache), &req)?;
        let after = sites
            .iter()
            .map(|&s| {
                later
                    .iter()
                    .flat_map(|&p| out.state(s, 0, p).expect("state was read").to_vec())
                    .collect()
            })
            .collect();
        Ok(Target {
            tokens,
            patch_pos,
            cache: Arc::new(cache),
            after,
        })
    }

    /// One row per patched state, all written at `site` (position i*), ready to run:
    /// caches forked from the target run and the request that resumes the pass there.
    pub fn patched<E: Engine<Cache = C>>(
        &self,
        model: &E,
        site: Site,
        states: Vec<Vec<f32>>,
        logits: LogitsAt,
    ) -> Result<(Vec<C>, Request)> {
        let num_layers = model.num_layers();
        site.check(num_layers)?;
        let first_block = site.next_block(num_layers);
        let lens: Vec<usize> = (0..num_layers)
            .map(|b| {
                if b < first_block {
                    self.tokens.len()
                } else {
                    self.patch_pos
                }
            })
            .collect();
        let after = &self.after[site.order(num_layers)];
        let caches = states
            .iter()
            .map(|_| C::fork(&self.cache, &lens))
            .collect::<Result<Vec<_>>>()?;
        let rows = states
            .into_iter()
            .map(|mut s| {
                s.extend_from_slice(after);
                HiddenRow {
                    start_pos: self.patch_pos,
                    states: s,
                }
            })
            .collect();
        Ok((
            caches,
            Request::new(Input::Hidden { site, rows }).logits(logits),
        ))
    }

    /// Logits at the target's last position for each patched state.
    pub fn last_logits<E: Engine<Cache = C>>(
        &self,
        model: &E,
        site: Site,
        states: Vec<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>> {
        let n = states.len();
        let (mut caches, req) = self.patched(model, site, states, LogitsAt::Last)?;
        let out = model.forward(&mut caches, &req)?;
        Ok((0..n)
            .map(|r| {
                out.last_logits(r)
                    .expect("one logit row per input row")
                    .to_vec()
            })
            .collect())
    }

    /// Greedy continuations of `max_new` tokens for each patched state.
    pub fn generate<E: Engine<Cache = C>>(
        &self,
        model: &E,
        site: Site,
        states: Vec<Vec<f32>>,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let (mut caches, req) = self.patched(model, site, states, LogitsAt::Last)?;
        model.greedy(&mut caches, req, max_new)
    }
}

/// Every site in pass order (the index of a site is `Site::order`).
pub fn all_sites(num_layers: usize) -> Vec<Site> {
    std::iter::once(Site::Embed)
        .chain((0..num_layers).map(Site::BlockOut))
        .chain(std::iter::once(Site::FinalNorm))
        .collect()
}
