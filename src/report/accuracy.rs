//! The tallies of an attribute-extraction run: per relation, and over all of them, how
//! many rows were known unpatched, evaluated and skipped, and the accuracy of every
//! (source layer, target layer) cell.

use crate::patchscope::extraction::Record;
use crate::patchscope::relations::{Dropped, Relation};

/// The tallies of one relation, or of all (`relation` = "all").
#[derive(Debug, Clone)]
pub struct RelationSummary {
    pub relation: String,
    /// Rows run (evaluated or not).
    pub rows: usize,
    pub known_unpatched: usize,
    pub evaluated: usize,
    /// Rows the model knows whose source token could not be found.
    pub skipped: usize,
    /// Rows left out of the files, by reason.
    pub dropped: Dropped,
    /// (source layer, target layer, accuracy); NaN where no row was evaluated.
    pub accuracy: Vec<(usize, usize, f64)>,
}

impl RelationSummary {
    /// The best finite cell (the first one on ties).
    pub fn best(&self) -> Option<(usize, usize, f64)> {
        self.accuracy
            .iter()
            .copied()
            .filter(|c| c.2.is_finite())
            .fold(None, |b: Option<(usize, usize, f64)>, c| match b {
                Some(b) if b.2 >= c.2 => Some(b),
                _ => Some(c),
            })
    }
}

/// Each relation's name and the rows left out of its file, as [`summarize`] takes them.
pub fn relation_names(relations: &[Relation]) -> Vec<(&str, &Dropped)> {
    relations
        .iter()
        .map(|r| (r.name.as_str(), &r.dropped))
        .collect()
}

/// One summary per relation (name, rows left out of its file), in `relations` order, then
/// "all".
pub fn summarize(
    relations: &[(&str, &Dropped)],
    done: &[Record],
    source_layers: &[usize],
    target_layers: &[usize],
) -> Vec<RelationSummary> {
    let names = relations
        .iter()
        .map(|&(name, _)| Some(name))
        .chain(std::iter::once(None));
    names
        .map(|name| {
            let mine: Vec<&Record> = done
                .iter()
                .filter(|d| name.is_none_or(|n| d.relation == n))
                .collect();
            let rows: Vec<&Record> = mine
                .iter()
                .copied()
                .filter(|r| r.result.evaluated)
                .collect();
            let mut dropped = Dropped::new();
            for (_, left_out) in relations
                .iter()
                .filter(|&&(r, _)| name.is_none_or(|n| r == n))
            {
                for (reason, n) in left_out.iter() {
                    *dropped.entry(reason.clone()).or_default() += n;
                }
            }
            let mut accuracy = Vec::new();
            for (si, &ls) in source_layers.iter().enumerate() {
                for (ti, &lt) in target_layers.iter().enumerate() {
                    let hits = rows.iter().filter(|r| r.result.correct[si][ti]).count();
                    let acc = if rows.is_empty() {
                        f64::NAN
                    } else {
                        hits as f64 / rows.len() as f64
                    };
                    accuracy.push((ls, lt, acc));
                }
            }
            RelationSummary {
                relation: name.unwrap_or("all").to_string(),
                rows: mine.len(),
                known_unpatched: mine.iter().filter(|r| r.result.baseline_correct).count(),
                evaluated: rows.len(),
                skipped: mine.iter().filter(|r| r.result.skipped.is_some()).count(),
                dropped,
                accuracy,
            }
        })
        .collect()
}
