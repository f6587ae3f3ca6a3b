//! The next-token experiment (paper section 4.1): decode what a source state at layer l
//! predicts, three ways — the token-identity patchscope, the logit lens, and the affine
//! "tuned lens" of the official code — and score each against the source model's own
//! next-token prediction (precision@1, surprisal in nats).
//!
//! Two paths compute the same metrics. The fast path runs the target prompt once, keeps
//! its KV cache, and runs each cell as one token through blocks l*+1.. against that shared
//! prefix, all cells of a target site in one batch; lenses read the LM head directly. The
//! reference path does what hook-based code does: a whole target forward per cell.

use super::mapping::Affine;
use super::target::{by_site, final_normed_rows, joining_request, Target};
use super::{source_position, source_site, target_site};
use crate::backend::cpu::logits::{argmax, log_softmax};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::request::{HiddenRow, LogitsAt, Request};
use crate::stream::{Positions, Site, WriteOp};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// A source prompt's states at its chosen position, and the model's own prediction there.
pub struct Source {
    /// Index of the prompt in its file (it seeds the position).
    pub index: usize,
    pub num_tokens: usize,
    pub position: usize,
    /// Raw output of every block at `position`.
    pub block_out: Vec<Vec<f32>>,
    /// Final-normed state at `position` (HF's last hidden state).
    pub final_norm: Vec<f32>,
    /// Natural-log softmax of the source logits at `position`.
    pub log_probs: Vec<f32>,
    pub top1: u32,
}

impl Source {
    /// The layer-`layer` representation as the paper defines it (HF `hidden_states[l + 1]`).
    pub(crate) fn rep(&self, layer: usize) -> &[f32] {
        if layer + 1 == self.block_out.len() {
            &self.final_norm
        } else {
            &self.block_out[layer]
        }
    }

    fn score(&self, pred: u32) -> Cell {
        Cell {
            pred,
            prec1: pred == self.top1,
            surprisal: -self.log_probs[pred as usize],
        }
    }
}

/// A token-identity cell of a batch: (sample, source layer, target slot).
type CellAt = (usize, usize, usize);

/// One decoded prediction and its scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub pred: u32,
    pub prec1: bool,
    pub surprisal: f32,
}

/// All results for one source prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    pub index: usize,
    pub position: usize,
    pub num_tokens: usize,
    pub source_top1: u32,
    /// [source layer][target layer]: one entry (l* = l) per layer, or all l* with a grid.
    pub token_identity: Vec<Vec<Cell>>,
    pub logit_lens: Vec<Cell>,
    pub tuned_lens: Vec<Cell>,
}

/// Runs source prompts (a batch of rows) and keeps their states at the seeded position.
/// Only tokens up to the position are run: later ones cannot change it.
pub fn run_sources<E: Engine>(
    model: &E,
    prompts: &[(usize, Vec<u32>)],
    seed: u64,
) -> Result<Vec<Source>> {
    let num_layers = model.num_layers();
    let positions: Vec<usize> = prompts
        .iter()
        .map(|(index, tokens)| {
            if tokens.is_empty() {
                return Err(Error::input(format!("prompt {index} is empty")));
            }
            Ok(source_position(seed, *index, tokens.len()))
        })
        .collect::<Result<_>>()?;
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&positions)
        .map(|((_, t), &p)| t[..=p].to_vec())
        .collect();
    let mut req = Request::tokens(rows).logits(LogitsAt::Last);
    for r in 0..prompts.len() {
        for l in 0..num_layers {
            req = req.read(Site::BlockOut(l), r, Positions::Last);
        }
        req = req.read(Site::FinalNorm, r, Positions::Last);
    }
    let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
    let out = model.forward(&mut caches, &req)?;
    Ok(prompts
        .iter()
        .zip(&positions)
        .enumerate()
        .map(|(r, ((index, tokens), &pos))| {
            let state = |s: Site| out.state(s, r, pos).expect("state was read").to_vec();
            let log_probs = log_softmax(out.last_logits(r).expect("logits were asked"));
            Source {
                index: *index,
                num_tokens: tokens.len(),
                position: pos,
                block_out: (0..num_layers).map(|l| state(Site::BlockOut(l))).collect(),
                final_norm: state(Site::FinalNorm),
                top1: argmax(&log_probs) as u32,
                log_probs,
            }
        })
        .collect())
}

/// Wall time spent per phase of the fast path, summed over calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    pub sources: Duration,
    pub token_identity: Duration,
    pub logit_lens: Duration,
    pub tuned_lens: Duration,
}

/// Training rows of the tuned lens: the layer-l representations ([layer][row]) and the
/// last layer's final-normed state (the fit's target) at the same positions.
pub struct LensRows {
    pub reps: Vec<Vec<Vec<f32>>>,
    pub targets: Vec<Vec<f32>>,
}

impl LensRows {
    pub fn new(num_layers: usize) -> Self {
        LensRows {
            reps: vec![Vec::new(); num_layers],
            targets: Vec::new(),
        }
    }

    pub fn extend(&mut self, other: LensRows) {
        for (all, new) in self.reps.iter_mut().zip(other.reps) {
            all.extend(new);
        }
        self.targets.extend(other.targets);
    }
}

/// Collects tuned-lens training rows from prompts: at each prompt's seeded position (as
/// the official code does, one row per text), or at every position.
pub fn lens_rows<E: Engine>(
    model: &E,
    prompts: &[(usize, Vec<u32>)],
    seed: u64,
    every_position: bool,
) -> Result<LensRows> {
    let num_layers = model.num_layers();
    let mut rows = Vec::with_capacity(prompts.len());
    let mut positions = Vec::with_capacity(prompts.len());
    for (index, tokens) in prompts {
        if tokens.is_empty() {
            return Err(Error::input(format!("prompt {index} is empty")));
        }
        let pos = source_position(seed, *index, tokens.len());
        if every_position {
            rows.push(tokens.clone());
            positions.push(Positions::All);
        } else {
            rows.push(tokens[..=pos].to_vec());
            positions.push(Positions::Last);
        }
    }
    // the last layer's representation is the final-normed state, which is also the target
    let mut req = Request::tokens(rows.clone()).logits(LogitsAt::None);
    for (r, p) in positions.iter().enumerate() {
        for l in 0..num_layers {
            req = req.read(source_site(l, num_layers), r, p.clone());
        }
    }
    let mut caches: Vec<_> = rows.iter().map(|_| model.new_cache()).collect();
    let out = model.forward(&mut caches, &req)?;
    // states come site by site, each site in the same row and position order
    let mut lens = LensRows::new(num_layers);
    for state in out.states {
        match state.site {
            Site::BlockOut(l) => lens.reps[l].push(state.values),
            _ => {
                lens.targets.push(state.values.clone());
                lens.reps[num_layers - 1].push(state.values);
            }
        }
    }
    Ok(lens)
}

/// Fits the tuned lens: for every layer, the affine map from the layer-l representation to
/// the last layer's (final-normed) representation.
pub fn fit_tuned_lens(rows: &LensRows) -> Result<Vec<Affine>> {
    use rayon::prelude::*;
    rows.reps
        .par_iter()
        .map(|xs| Affine::fit(xs, &rows.targets))
        .collect()
}

/// The next-token experiment over one model and one target prompt.
pub struct NextToken<'m, E: Engine> {
    model: &'m E,
    /// The target prompt run once, patched at its last token.
    target: Target<E::Cache>,
    tuned_lens: Vec<Affine>,
    grid: bool,
}

impl<'m, E: Engine> NextToken<'m, E> {
    /// `target` is patched at its last token; `grid` evaluates every (l, l*) pair.
    pub fn new(model: &'m E, target: &str, tuned_lens: Vec<Affine>, grid: bool) -> Result<Self> {
        let target_tokens = model.tokenizer().encode(target)?;
        if target_tokens.is_empty() {
            return Err(Error::input("the target prompt is empty"));
        }
        if tuned_lens.len() != model.num_layers() {
            return Err(Error::input(format!(
                "{} tuned-lens maps for {} layers",
                tuned_lens.len(),
                model.num_layers()
            )));
        }
        let patch_pos = target_tokens.len() - 1;
        Ok(NextToken {
            model,
            target: Target::new(model, target_tokens, patch_pos)?,
            tuned_lens,
            grid,
        })
    }

    fn num_layers(&self) -> usize {
        self.model.num_layers()
    }

    fn target_layers(&self, source_layer: usize) -> Vec<usize> {
        if self.grid {
            (0..self.num_layers()).collect()
        } else {
            vec![source_layer]
        }
    }

    /// Fast path: shared target prefix, one batched pass per target site.
    pub fn evaluate(&self, sources: &[Source]) -> Result<Vec<SampleResult>> {
        self.evaluate_timed(sources, &mut PhaseTimes::default())
    }

    /// [`NextToken::evaluate`], adding the time of each method to `times`.
    pub fn evaluate_timed(
        &self,
        sources: &[Source],
        times: &mut PhaseTimes,
    ) -> Result<Vec<SampleResult>> {
        let num_layers = self.num_layers();
        let started = Instant::now();
        let mut results: Vec<SampleResult> = sources.iter().map(|s| self.empty_result(s)).collect();

        // token identity: every cell patches the shared target at its own site
        let mut at: Vec<CellAt> = Vec::new();
        let mut cells = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            for l in 0..num_layers {
                for (slot, lt) in self.target_layers(l).into_iter().enumerate() {
                    at.push((i, l, slot));
                    cells.push((target_site(l, lt, num_layers), source.rep(l).to_vec()));
                }
            }
        }
        let preds = self.target.predictions(self.model, cells)?;
        for (&(i, l, slot), &pred) in at.iter().zip(&preds) {
            results[i].token_identity[l][slot] = sources[i].score(pred);
        }
        times.token_identity += started.elapsed();

        // lenses: final norm + LM head (or the LM head alone on final-normed states)
        let last = num_layers - 1;
        for tuned in [false, true] {
            let started = Instant::now();
            let mut cells = Vec::new();
            for l in 0..num_layers {
                for s in sources {
                    // a tuned-lens output is patched where the official code puts it: the
                    // last layer of the source prompt, final-norm rule included
                    cells.push(if tuned {
                        (
                            target_site(l, last, num_layers),
                            self.tuned_lens[l].apply(s.rep(l)),
                        )
                    } else {
                        (Site::BlockOut(last), s.block_out[l].clone())
                    });
                }
            }
            let preds = self.predict_hidden(cells)?;
            for (l, per_layer) in preds.chunks(sources.len()).enumerate() {
                for ((r, s), &pred) in results.iter_mut().zip(sources).zip(per_layer) {
                    let cell = s.score(pred);
                    if tuned {
                        r.tuned_lens[l] = cell;
                    } else {
                        r.logit_lens[l] = cell;
                    }
                }
            }
            let spent = started.elapsed();
            if tuned {
                times.tuned_lens += spent;
            } else {
                times.logit_lens += spent;
            }
        }
        Ok(results)
    }

    /// Reference path, the way hook-based code does it: every cell is a whole forward of
    /// its target prompt with one write, from a whole (untruncated) source pass.
    pub fn evaluate_reference(
        &self,
        index: usize,
        tokens: &[u32],
        seed: u64,
    ) -> Result<SampleResult> {
        let num_layers = self.num_layers();
        let model = self.model;
        let pos = source_position(seed, index, tokens.len());
        let mut req = Request::tokens(vec![tokens.to_vec()]).logits(LogitsAt::At(vec![(0, pos)]));
        for l in 0..num_layers {
            req = req.read(Site::BlockOut(l), 0, Positions::At(vec![pos]));
        }
        req = req.read(Site::FinalNorm, 0, Positions::At(vec![pos]));
        let out = model.forward(&mut [model.new_cache()], &req)?;
        let log_probs = log_softmax(out.logits_at(0, pos).expect("logits were asked"));
        let source = Source {
            index,
            num_tokens: tokens.len(),
            position: pos,
            block_out: (0..num_layers)
                .map(|l| out.state(Site::BlockOut(l), 0, pos).unwrap().to_vec())
                .collect(),
            final_norm: out.state(Site::FinalNorm, 0, pos).unwrap().to_vec(),
            top1: argmax(&log_probs) as u32,
            log_probs,
        };
        // a whole prompt with one replaced state, logits at `at`
        let patched = |prompt: &[u32], site: Site, at: usize, v: Vec<f32>| -> Result<Cell> {
            let req = Request::tokens(vec![prompt.to_vec()])
                .logits(LogitsAt::At(vec![(0, at)]))
                .write(site, 0, at, WriteOp::Replace(v));
            let out = model.forward(&mut [model.new_cache()], &req)?;
            Ok(source.score(argmax(out.logits_at(0, at).expect("logits were asked")) as u32))
        };
        let mut result = self.empty_result(&source);
        let patch_pos = self.target.patch_pos;
        for l in 0..num_layers {
            for (slot, lt) in self.target_layers(l).into_iter().enumerate() {
                let site = target_site(l, lt, num_layers);
                result.token_identity[l][slot] =
                    patched(&self.target.tokens, site, patch_pos, source.rep(l).to_vec())?;
            }
            // the official lens evaluation: patch the source prompt itself at the last layer
            let last = num_layers - 1;
            result.logit_lens[l] = patched(
                tokens,
                Site::BlockOut(last),
                pos,
                source.block_out[l].clone(),
            )?;
            let mapped = self.tuned_lens[l].apply(source.rep(l));
            result.tuned_lens[l] = patched(tokens, target_site(l, last, num_layers), pos, mapped)?;
        }
        Ok(result)
    }

    fn empty_result(&self, s: &Source) -> SampleResult {
        let l = self.num_layers();
        let blank = Cell {
            pred: 0,
            prec1: false,
            surprisal: f32::NAN,
        };
        SampleResult {
            index: s.index,
            position: s.position,
            num_tokens: s.num_tokens,
            source_top1: s.top1,
            token_identity: (0..l)
                .map(|sl| vec![blank; self.target_layers(sl).len()])
                .collect(),
            logit_lens: vec![blank; l],
            tuned_lens: vec![blank; l],
        }
    }

    /// Predictions of single states entering fresh caches at position 0 at their sites
    /// (the lenses: nothing but the final norm and the LM head runs after them).
    fn predict_hidden(&self, cells: Vec<(Site, Vec<f32>)>) -> Result<Vec<u32>> {
        let model = self.model;
        let normed = by_site(cells, model.num_layers(), |chunk| {
            let n = chunk.len();
            let mut caches: Vec<_> = (0..n).map(|_| model.new_cache()).collect();
            let rows = chunk
                .into_iter()
                .map(|(site, states)| {
                    (
                        site,
                        HiddenRow {
                            start_pos: 0,
                            states,
                        },
                    )
                })
                .collect();
            let out = model.forward(&mut caches, &joining_request(rows))?;
            Ok(final_normed_rows(out, n))
        })?;
        model.head_argmax(normed)
    }
}
