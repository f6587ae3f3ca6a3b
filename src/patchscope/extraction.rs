//! Attribute extraction over relation files, as the CLI and the Python package both run
//! it: the settings checked, the relations loaded, the rows to evaluate (after `limit`, and
//! leaving out those already done) and their evaluation in batches, as records. Where the
//! records go (a resumable journal, a DataFrame) is the caller's business; their
//! per-relation accuracy is [`crate::report::accuracy`].

use super::attributes::{parse_layers, Attributes, RowResult};
use super::demonstrations::{Demonstration, Demonstrations, SEPARATOR};
use super::relations::{load_relation, AttributeRow, Relation};
use crate::engine::Engine;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The settings of a run (the CLI's flags of the same names).
#[derive(Debug, Clone)]
pub struct ExtractionSettings {
    pub relations: Vec<PathBuf>,
    /// Target prompt with the placeholder "x" (default: from each relation).
    pub target: Option<String>,
    /// Demonstrations before LRE queries without a target of their own (0: none), and the
    /// seed of their order (`super::demonstrations`).
    pub demonstrations: Demonstrations,
    /// Layer lists: all, 3, 0-5, 0,4,8-10, 0-23:4.
    pub source_layers: String,
    pub target_layers: String,
    /// Greedy tokens generated per cell.
    pub max_new: usize,
    /// Evaluate rows the model gets wrong without patching too.
    pub all_rows: bool,
    /// Only the first N kept rows of each relation file.
    pub limit: Option<usize>,
    /// Rows evaluated together.
    pub batch: usize,
}

/// One evaluated row of a relation: the journal's line and the Python package's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub relation: String,
    #[serde(flatten)]
    pub result: RowResult,
}

/// A row to evaluate: (relation name, row index in the relation, row).
pub type Todo<'a> = (&'a str, usize, &'a AttributeRow);

/// A relation's query line, and its distinct demonstration sets with their row counts.
pub type DemonstrationSets<'a> = (&'a str, Vec<(&'a [Demonstration], usize)>);

/// The experiment and its relation files, loaded and checked.
pub struct Extraction<'m, E: Engine> {
    pub exp: Attributes<'m, E>,
    pub relations: Vec<Relation>,
    pub settings: ExtractionSettings,
}

impl<'m, E: Engine> Extraction<'m, E> {
    pub fn new(model: &'m E, settings: ExtractionSettings) -> Result<Self> {
        let num_layers = model.num_layers();
        let check = |ok: bool, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::Input(msg.into()))
            }
        };
        check(
            settings.max_new > 0,
            "--max-new 0: a cell generates at least 1 token",
        )?;
        check(
            settings.limit != Some(0),
            "--limit 0: --limit must be at least 1 (leave it out to evaluate every row)",
        )?;
        check(
            settings.batch > 0,
            "--batch 0: a batch holds at least 1 row",
        )?;
        let exp = Attributes::new(
            model,
            parse_layers("--source-layers", &settings.source_layers, num_layers)?,
            parse_layers("--target-layers", &settings.target_layers, num_layers)?,
            settings.max_new,
            !settings.all_rows,
        );
        let relations = settings
            .relations
            .iter()
            .map(|p| load_relation(p, settings.target.as_deref(), settings.demonstrations))
            .collect::<Result<Vec<_>>>()?;
        Ok(Extraction {
            exp,
            relations,
            settings,
        })
    }

    /// The rows of `relation` a run evaluates (the first `limit`), with their indices.
    pub fn rows<'a>(
        &self,
        relation: &'a Relation,
    ) -> impl Iterator<Item = (usize, &'a AttributeRow)> + 'a {
        let limit = self.settings.limit.unwrap_or(usize::MAX);
        relation.rows.iter().enumerate().take(limit)
    }

    /// Checks (and runs once) the target prompt of every row of `relation`, so a bad one
    /// fails before any row is evaluated.
    pub fn check_targets(&self, relation: &Relation) -> Result<()> {
        for (_, row) in self.rows(relation) {
            self.exp
                .target(&row.target)
                .map_err(|e| Error::Input(format!("{}: {e}", relation.locate(row))))?;
        }
        Ok(())
    }

    /// Every row to evaluate, in file order.
    pub fn todo(&self) -> Vec<Todo<'_>> {
        self.relations
            .iter()
            .flat_map(|r| self.rows(r).map(move |(i, row)| (r.name.as_str(), i, row)))
            .collect()
    }

    /// Evaluates a batch of rows (their cells share generations).
    pub fn evaluate(&self, chunk: &[Todo<'_>]) -> Result<Vec<Record>> {
        let rows: Vec<(usize, &AttributeRow)> = chunk.iter().map(|&(_, i, row)| (i, row)).collect();
        let results = self.exp.evaluate(&rows)?;
        Ok(chunk
            .iter()
            .zip(results)
            .map(|(&(name, _, _), result)| Record {
                relation: name.to_string(),
                result,
            })
            .collect())
    }

    /// Names a batch's rows for an error message.
    pub fn describe(chunk: &[Todo<'_>]) -> String {
        let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
        format!(
            "relation {} line {} .. relation {} line {}",
            first.0, first.2.line, last.0, last.2.line
        )
    }

    /// The query line and the distinct demonstration sets of the rows of `relation` a run
    /// evaluates, each with its row count (most rows share one); None without them.
    pub fn demonstration_sets<'a>(&self, relation: &'a Relation) -> Option<DemonstrationSets<'a>> {
        let mut sets: Vec<(&[Demonstration], usize)> = Vec::new();
        let mut query = None;
        for (_, row) in self.rows(relation) {
            if row.demonstrations.is_empty() {
                continue;
            }
            query = row.target.rsplit(SEPARATOR).next();
            match sets
                .iter_mut()
                .find(|(s, _)| *s == row.demonstrations.as_slice())
            {
                Some((_, n)) => *n += 1,
                None => sets.push((&row.demonstrations, 1)),
            }
        }
        Some((query?, sets))
    }

    /// The demonstrations of a run, for run.json: k, the seed, the separator, and for each
    /// relation that has them its query line and [`Self::demonstration_sets`].
    pub fn demonstrations_record(&self) -> serde_json::Value {
        let d = self.settings.demonstrations;
        let relations: Vec<serde_json::Value> = self
            .relations
            .iter()
            .filter_map(|r| {
                let (query, sets) = self.demonstration_sets(r)?;
                Some(serde_json::json!({
                    "relation": r.name,
                    "query": query,
                    "sets": sets
                        .iter()
                        .map(|(s, n)| serde_json::json!({"rows": n, "demonstrations": s}))
                        .collect::<Vec<_>>(),
                }))
            })
            .collect();
        serde_json::json!({
            "k": d.k,
            "seed": d.seed,
            "separator": SEPARATOR.to_string(),
            "answer": "the object as whole words in the generation's first line",
            "relations": relations,
        })
    }

    /// The (source layer, target layer) cells of the evaluated ones among `records`.
    pub fn cells(&self, records: &[Record]) -> usize {
        records.iter().filter(|r| r.result.evaluated).count()
            * self.exp.source_layers.len()
            * self.exp.target_layers.len()
    }
}
