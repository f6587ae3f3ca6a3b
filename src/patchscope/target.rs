//! A target prompt run once and reused for every patch: its KV cache is shared by all
//! cells, and a patch at (block output l*, position i*) only recomputes what the patch
//! can change — blocks l*+1.. for position i* and the positions after it.
//!
//! Why this is exact: blocks 0..=l* of every position read nothing downstream of the
//! patch, so their keys/values and the states after block l* at positions > i* are the
//! target's own; they are taken from the single target run.

use crate::engine::{Cache, Engine};
use crate::error::{Error, Result};
use crate::request::{HiddenRow, Input, LogitsAt, Request};
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

    /// The LM head's argmax at the target's last position for each (site, patched state),
    /// in the order given. Rows of many sites share passes, each row joining at its own
    /// site; the argmax comes from the final-normed states (`Engine::head_argmax`).
    pub fn predictions<E: Engine<Cache = C>>(
        &self,
        model: &E,
        cells: Vec<(Site, Vec<f32>)>,
    ) -> Result<Vec<u32>> {
        let num_layers = model.num_layers();
        let normed = by_site(cells, num_layers, |chunk| {
            let n = chunk.len();
            let (mut caches, rows) = self.rows(model, chunk.into_iter())?;
            let out = model.forward(&mut caches, &joining_request(rows))?;
            Ok(final_normed_rows(out, n))
        })?;
        model.head_argmax(normed)
    }

    /// Caches forked for, and the rows resuming at, each (site, state).
    fn rows<E: Engine<Cache = C>>(
        &self,
        model: &E,
        cells: impl Iterator<Item = (Site, Vec<f32>)>,
    ) -> Result<(Vec<C>, Vec<JoiningRow>)> {
        let num_layers = model.num_layers();
        let after_patch = self.tokens.len() - self.patch_pos - 1;
        let (mut caches, mut rows) = (Vec::new(), Vec::new());
        for (site, mut states) in cells {
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
            caches.push(C::fork(&self.cache, &lens)?);
            let after = &self.after[site.order(num_layers)];
            debug_assert_eq!(after.len(), after_patch * model.config().hidden_size);
            states.extend_from_slice(after);
            rows.push((
                site,
                HiddenRow {
                    start_pos: self.patch_pos,
                    states,
                },
            ));
        }
        Ok((caches, rows))
    }

    /// Greedy continuations of `max_new` tokens for each patched state, all at `site`.
    pub fn generate<E: Engine<Cache = C>>(
        &self,
        model: &E,
        site: Site,
        states: Vec<Vec<f32>>,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let cells = states.into_iter().map(|s| (site, s)).collect();
        self.generate_cells(model, cells, max_new)
    }

    /// Greedy continuations of `max_new` tokens for each (site, patched state), in the
    /// order given. All rows share one generation, each joining the prompt pass at its own
    /// site, so every step reads the weights once for all of them.
    pub fn generate_cells<E: Engine<Cache = C>>(
        &self,
        model: &E,
        cells: Vec<(Site, Vec<f32>)>,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let num_layers = model.num_layers();
        let mut order: Vec<usize> = (0..cells.len()).collect();
        order.sort_by_key(|&i| cells[i].0.order(num_layers));
        let mut slots: Vec<Option<(Site, Vec<f32>)>> = cells.into_iter().map(Some).collect();
        let sorted = order
            .iter()
            .map(|&i| slots[i].take().expect("each cell runs once"));
        let (mut caches, rows) = self.rows(model, sorted)?;
        let generated = model.greedy(&mut caches, Request::new(joining_input(rows)), max_new)?;
        let mut out = vec![Vec::new(); slots.len()];
        for (&i, tokens) in order.iter().zip(generated) {
            out[i] = tokens;
        }
        Ok(out)
    }
}

/// A row entering a pass at its own site.
type JoiningRow = (Site, HiddenRow);

/// Rows per pass when cells of many sites share passes: enough to read each block's
/// weights once for hundreds of cells.
const ROWS_PER_PASS: usize = 256;

/// Runs `cells` in passes of up to `ROWS_PER_PASS` rows sorted by site, `run` taking a
/// pass's cells and returning one row of values per cell; the rows come back in the
/// order of `cells`.
pub(crate) fn by_site<T>(
    cells: Vec<(Site, T)>,
    num_layers: usize,
    mut run: impl FnMut(Vec<(Site, T)>) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..cells.len()).collect();
    order.sort_by_key(|&i| cells[i].0.order(num_layers));
    let mut slots: Vec<Option<(Site, T)>> = cells.into_iter().map(Some).collect();
    let mut out = vec![Vec::new(); slots.len()];
    for chunk in order.chunks(ROWS_PER_PASS) {
        let batch = chunk
            .iter()
            .map(|&i| slots[i].take().expect("each cell runs once"))
            .collect();
        for (&i, values) in chunk.iter().zip(run(batch)?) {
            out[i] = values;
        }
    }
    Ok(out)
}

/// Rows entering a pass at their sites: `Input::Hidden` when they share one.
fn joining_input(rows: Vec<JoiningRow>) -> Input {
    let site = rows.first().map(|r| r.0);
    if rows.iter().all(|r| Some(r.0) == site) {
        Input::Hidden {
            site: site.expect("a pass has rows"),
            rows: rows.into_iter().map(|(_, r)| r).collect(),
        }
    } else {
        Input::Joining(rows)
    }
}

/// A pass over rows entering at their sites that reads each row's final-normed state at
/// its last position.
pub(crate) fn joining_request(rows: Vec<JoiningRow>) -> Request {
    let n = rows.len();
    (0..n).fold(
        Request::new(joining_input(rows)).logits(LogitsAt::None),
        |req, r| req.read(Site::FinalNorm, r, Positions::Last),
    )
}

/// The final-normed states that `joining_request` read, rows 0..n in order.
pub(crate) fn final_normed_rows(out: crate::request::Output, n: usize) -> Vec<Vec<f32>> {
    // states come site by site, each in row order: here one site, one state per row
    let rows: Vec<Vec<f32>> = out.states.into_iter().map(|s| s.values).collect();
    debug_assert_eq!(rows.len(), n);
    rows
}

/// Every site in pass order (the index of a site is `Site::order`).
pub fn all_sites(num_layers: usize) -> Vec<Site> {
    std::iter::once(Site::Embed)
        .chain((0..num_layers).map(Site::BlockOut))
        .chain(std::iter::once(Site::FinalNorm))
        .collect()
}
