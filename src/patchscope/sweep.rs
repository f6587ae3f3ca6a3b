//! The next-token sweep over a prompt set, as the CLI and the Python package both run it:
//! the train/val split, the tuned-lens fit on the training prompts, and the batched
//! evaluation of the others. Where results go (a resumable folder, a DataFrame) and how
//! progress is shown is the caller's business: this module hands back records.

use super::mapping::Affine;
use super::next_token::{
    fit_tuned_lens, lens_rows, run_sources, LensRows, NextToken, PhaseTimes, SampleResult,
};
use crate::data::Prompts;
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Tuned-lens training rows: `One` seeded position per training prompt (the official
/// code, which has 10k texts), or `All` positions (enough rows for a determined fit from
/// a few hundred prompts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LensPositions {
    One,
    All,
}

/// The settings of a sweep (the CLI's flags of the same names).
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// Training prompts (the first ones); default: half.
    pub train: Option<usize>,
    /// Evaluated prompts (the ones after the training prompts); default: the rest.
    pub val: Option<usize>,
    pub seed: u64,
    pub grid: bool,
    pub target_prompt: String,
    pub batch: usize,
    pub lens_positions: LensPositions,
    pub reference: bool,
}

impl Default for SweepSettings {
    fn default() -> Self {
        SweepSettings {
            train: None,
            val: None,
            seed: 42,
            grid: false,
            target_prompt: super::TOKEN_IDENTITY_PROMPT.to_string(),
            batch: 16,
            lens_positions: LensPositions::All,
            reference: false,
        }
    }
}

impl SweepSettings {
    /// The (train, val) counts for the prompt set, checked; a refusal quotes the settings
    /// (saying which were defaults) and what they were compared with.
    pub fn split(&self, prompts: &Prompts) -> Result<(usize, usize)> {
        let n = prompts.len();
        let train = self.train.unwrap_or(n / 2);
        let val = self.val.unwrap_or(n.saturating_sub(train));
        let fail = |msg: String| Err(Error::Input(msg));
        let shown_train = match self.train {
            Some(t) => format!("--train {t}"),
            None => format!("--train {train} (the default: half the prompts)"),
        };
        if self.train == Some(0) {
            return fail("--train 0: the tuned lens needs at least 1 training prompt".into());
        }
        if train == 0 {
            return fail(format!(
                "{} holds {n} prompt{}: a sweep needs at least 2 (1 to fit the tuned lens, 1 to \
                 evaluate)",
                prompts.origin,
                if n == 1 { "" } else { "s" }
            ));
        }
        if self.val == Some(0) {
            return fail("--val 0: a sweep evaluates at least 1 prompt".into());
        }
        if val == 0 {
            return fail(format!(
                "{shown_train} leaves no prompt to evaluate: {} holds {n} prompts",
                prompts.origin
            ));
        }
        if self.batch == 0 {
            return fail("--batch 0: a batch holds at least 1 prompt".into());
        }
        if train + val > n {
            let shown_val = match self.val {
                Some(v) => format!("--val {v}"),
                None => format!("--val {val} (the default: the rest)"),
            };
            return fail(format!(
                "{shown_train} + {shown_val} needs {} prompts, but {} holds {n}",
                train + val,
                prompts.origin
            ));
        }
        Ok((train, val))
    }
}

/// A fitted tuned lens and how well determined its fit was.
pub struct LensFit {
    pub maps: Vec<Affine>,
    /// Training rows, and unknowns per output (hidden + 1): fewer rows than unknowns
    /// means the fit interpolates the training rows.
    pub rows: usize,
    pub unknowns: usize,
    /// The least-squares fit alone, after the training passes.
    pub fit_time: std::time::Duration,
}

/// A sweep's prompts, tokenized and split.
pub struct Sweep<'m, E: Engine> {
    pub model: &'m E,
    pub settings: SweepSettings,
    /// (index in the prompt set, tokens)
    pub train_set: Vec<(usize, Vec<u32>)>,
    pub val_set: Vec<(usize, Vec<u32>)>,
}

impl<'m, E: Engine> Sweep<'m, E> {
    /// Tokenizes the training and evaluated prompts (the first train + val of `prompts`).
    pub fn new(model: &'m E, prompts: &Prompts, settings: SweepSettings) -> Result<Self> {
        let (train, val) = settings.split(prompts)?;
        let encode = |range: std::ops::Range<usize>| -> Result<Vec<(usize, Vec<u32>)>> {
            range
                .map(|i| {
                    let t = model.tokenizer().encode(&prompts.texts[i])?;
                    if t.is_empty() {
                        return Err(Error::Input(format!(
                            "{}: the prompt has no tokens",
                            prompts.describe(i)
                        )));
                    }
                    Ok((i, t))
                })
                .collect()
        };
        Ok(Sweep {
            model,
            train_set: encode(0..train)?,
            val_set: encode(train..train + val)?,
            settings,
        })
    }

    /// Fits the tuned lens on the training prompts; `progress(n)` after each batch of n.
    pub fn fit_lens(&self, progress: &mut dyn FnMut(usize)) -> Result<LensFit> {
        let model = self.model;
        let every_position = self.settings.lens_positions == LensPositions::All;
        let mut rows = LensRows::new(model.num_layers());
        for chunk in self.train_set.chunks(self.settings.batch) {
            rows.extend(lens_rows(model, chunk, self.settings.seed, every_position)?);
            progress(chunk.len());
        }
        let t = std::time::Instant::now();
        Ok(LensFit {
            maps: fit_tuned_lens(&rows)?,
            fit_time: t.elapsed(),
            rows: rows.targets.len(),
            unknowns: model.config().hidden_size + 1,
        })
    }

    /// The experiment with its target prompt run once.
    pub fn experiment(&self, tuned_lens: Vec<Affine>) -> Result<NextToken<'m, E>> {
        let s = &self.settings;
        NextToken::new(self.model, &s.target_prompt, tuned_lens, s.grid)
    }

    /// Evaluates `todo` (a part of `val_set`, in order) batch by batch, handing each batch's
    /// results to `on_batch` in order; the fast path adds its phase times to `times`. The
    /// batches are those of the whole val set (cut every `batch` prompts), whatever part
    /// `todo` is (a shard, the rest of a resumed run): a prompt's results depend, in their
    /// last bits, on the prompts that share its batch.
    pub fn evaluate(
        &self,
        experiment: &NextToken<'m, E>,
        todo: &[(usize, Vec<u32>)],
        times: &mut PhaseTimes,
        on_batch: &mut dyn FnMut(Vec<SampleResult>) -> Result<()>,
    ) -> Result<()> {
        let seed = self.settings.seed;
        let batch_of =
            |(i, _): &(usize, Vec<u32>)| (i - self.train_set.len()) / self.settings.batch;
        for chunk in todo.chunk_by(|a, b| batch_of(a) == batch_of(b)) {
            let batch = if self.settings.reference {
                chunk
                    .iter()
                    .map(|(i, t)| experiment.evaluate_reference(*i, t, seed))
                    .collect::<Result<Vec<_>>>()?
            } else {
                let t = std::time::Instant::now();
                let sources = run_sources(self.model, chunk, seed)?;
                times.sources += t.elapsed();
                experiment.evaluate_timed(&sources, times)?
            };
            on_batch(batch)?;
        }
        Ok(())
    }
}
