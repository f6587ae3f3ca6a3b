//! Attribute extraction (paper section 4.2): patch the subject's last-token state from a
//! source text into a relation's target prompt at its placeholder, generate greedily, and
//! check whether the object appears, for every (source layer, target layer). Relation files
//! are read by [`super::relations`].

use super::demonstrations::{answers, Demonstration};
use super::relations::{fill_placeholder, AttributeRow, PLACEHOLDER};
use super::target::Target;
use super::{source_site, target_site};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::request::{LogitsAt, Request};
use crate::stream::Positions;
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The official correctness rule: the object, spaces removed, occurs in the generation,
/// spaces removed (case-sensitive).
pub(crate) fn is_correct(object: &str, generated: &str) -> bool {
    let strip = |s: &str| s.chars().filter(|c| *c != ' ').collect::<String>();
    strip(generated).contains(&strip(object))
}

/// The token that ends the byte span `..end` of the text.
pub(crate) fn token_ending_at(offsets: &[(usize, usize)], end: usize) -> Option<usize> {
    offsets.iter().position(|&(s, e)| s < end && end <= e)
}

/// The position of the placeholder token in a tokenized target prompt, which must have
/// exactly one.
pub fn placeholder_position(tokenizer: &Tokenizer, tokens: &[u32]) -> Result<usize> {
    let texts = tokens
        .iter()
        .map(|&t| tokenizer.decode(&[t]))
        .collect::<Result<Vec<_>>>()?;
    let at: Vec<usize> = (0..texts.len())
        .filter(|&i| texts[i].trim() == PLACEHOLDER)
        .collect();
    match at[..] {
        [pos] => Ok(pos),
        [] => Err(Error::input(format!(
            "target prompt {:?} has no placeholder {PLACEHOLDER:?} token",
            texts.concat()
        ))),
        _ => Err(Error::input(format!(
            "target prompt {:?} has {} placeholder {PLACEHOLDER:?} tokens: use exactly one",
            texts.concat(),
            at.len()
        ))),
    }
}

/// Results of one relation row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowResult {
    pub row: usize,
    /// Line of the row in its file.
    pub line: usize,
    pub subject: String,
    pub object: String,
    pub baseline: String,
    pub baseline_correct: bool,
    /// Whether the row was evaluated (rows the model gets wrong unpatched are skipped
    /// unless all rows are asked for, and rows whose source cannot be read are skipped).
    pub evaluated: bool,
    /// Why a row the model knows was not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// [source layer index][target layer index] -> correct; generations alongside.
    pub correct: Vec<Vec<bool>>,
    pub generations: Vec<Vec<String>>,
    /// The samples written before the query (then a generation is judged by
    /// [`super::demonstrations::answers`]: the object as whole words of its first line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demonstrations: Vec<Demonstration>,
}

/// A cell of a batch: (source, source layer index, target layer index).
type CellAt = (usize, usize, usize);

/// Patched rows per shared generation.
const CELLS_PER_GENERATION: usize = 256;

/// The experiment's settings, and what its rows share: each target prompt is run once, and
/// each baseline prompt generated once.
pub struct Attributes<'m, E: Engine> {
    pub model: &'m E,
    pub source_layers: Vec<usize>,
    pub target_layers: Vec<usize>,
    pub max_new: usize,
    pub only_correct: bool,
    targets: RefCell<HashMap<String, Rc<Target<E::Cache>>>>,
    baselines: RefCell<HashMap<String, String>>,
}

impl<'m, E: Engine> Attributes<'m, E> {
    pub fn new(
        model: &'m E,
        source_layers: Vec<usize>,
        target_layers: Vec<usize>,
        max_new: usize,
        only_correct: bool,
    ) -> Self {
        Attributes {
            model,
            source_layers,
            target_layers,
            max_new,
            only_correct,
            targets: RefCell::default(),
            baselines: RefCell::default(),
        }
    }

    /// The target prompt run once (it is checked for exactly one placeholder).
    pub fn target(&self, prompt: &str) -> Result<Rc<Target<E::Cache>>> {
        if let Some(t) = self.targets.borrow().get(prompt) {
            return Ok(t.clone());
        }
        let model = self.model;
        let tokens = model.tokenizer().encode(prompt)?;
        let patch_pos = placeholder_position(model.tokenizer(), &tokens)?;
        let target = Rc::new(Target::new(model, tokens, patch_pos)?);
        self.targets
            .borrow_mut()
            .insert(prompt.to_string(), target.clone());
        Ok(target)
    }

    /// Evaluates rows (`(index, row)`): baselines, then every (source layer, target
    /// layer) cell of the rows the model knows. The baselines of all rows share one
    /// generation, the source states one pass, and the cells of a target prompt share
    /// generations of up to `CELLS_PER_GENERATION` rows, each joining the target at its own
    /// site, so each step reads the weights once for all of them.
    pub fn evaluate(&self, rows: &[(usize, &AttributeRow)]) -> Result<Vec<RowResult>> {
        let model = self.model;
        let num_layers = model.num_layers();
        let prompts: Vec<String> = rows
            .iter()
            .map(|(_, r)| fill_placeholder(&r.target, &r.subject))
            .collect();
        let baselines = self.baselines(&prompts)?;
        let mut results: Vec<RowResult> = rows
            .iter()
            .zip(baselines)
            .map(|(&(index, row), baseline)| {
                let shots = !row.demonstrations.is_empty();
                let baseline_correct = answers(&row.object, &baseline, shots);
                RowResult {
                    row: index,
                    line: row.line,
                    subject: row.subject.clone(),
                    object: row.object.clone(),
                    baseline,
                    baseline_correct,
                    evaluated: baseline_correct || !self.only_correct,
                    skipped: None,
                    correct: Vec::new(),
                    generations: Vec::new(),
                    demonstrations: row.demonstrations.clone(),
                }
            })
            .collect();

        // the source token of each row to evaluate: the one ending the subject
        let mut sources = Vec::new();
        for (i, (_, row)) in rows.iter().enumerate() {
            if !results[i].evaluated {
                continue;
            }
            let (tokens, offsets) = model.tokenizer().encode_with_offsets(&row.source)?;
            match token_ending_at(&offsets, row.subject_end) {
                Some(pos) => sources.push((i, tokens[..=pos].to_vec())),
                None => {
                    results[i].evaluated = false;
                    results[i].skipped =
                        Some("no token ends the subject in the source text".into());
                }
            }
        }
        if sources.is_empty() {
            return Ok(results);
        }
        let reps = self.source_states(&sources)?;

        // every cell of every evaluated row, grouped by target prompt
        let (ns, nt) = (self.source_layers.len(), self.target_layers.len());
        let mut by_target: Vec<(&str, Vec<CellAt>)> = Vec::new();
        for (k, &(i, _)) in sources.iter().enumerate() {
            results[i].correct = vec![vec![false; nt]; ns];
            results[i].generations = vec![vec![String::new(); nt]; ns];
            let target = rows[i].1.target.as_str();
            let cells = match by_target.iter_mut().find(|(t, _)| *t == target) {
                Some((_, cells)) => cells,
                None => {
                    by_target.push((target, Vec::new()));
                    &mut by_target.last_mut().expect("just pushed").1
                }
            };
            for si in 0..ns {
                for ti in 0..nt {
                    cells.push((k, si, ti));
                }
            }
        }
        for (prompt, cells) in by_target {
            let target = self.target(prompt)?;
            for chunk in cells.chunks(CELLS_PER_GENERATION) {
                let patches = chunk
                    .iter()
                    .map(|&(k, si, ti)| {
                        let site =
                            target_site(self.source_layers[si], self.target_layers[ti], num_layers);
                        (site, reps[k][si].clone())
                    })
                    .collect();
                let generated = target.generate_cells(model, patches, self.max_new)?;
                for (&(k, si, ti), tokens) in chunk.iter().zip(generated) {
                    let r = &mut results[sources[k].0];
                    let text = model.tokenizer().decode(&tokens)?;
                    let shots = !r.demonstrations.is_empty();
                    r.correct[si][ti] = answers(&r.object, &text, shots);
                    r.generations[si][ti] = text;
                }
            }
        }
        Ok(results)
    }

    /// The source representation of each (row, tokens up to the subject's end) at every
    /// source layer, [source][source layer], from one pass.
    fn source_states(&self, sources: &[(usize, Vec<u32>)]) -> Result<Vec<Vec<Vec<f32>>>> {
        let model = self.model;
        let num_layers = model.num_layers();
        let mut req = Request::tokens(sources.iter().map(|(_, t)| t.clone()).collect())
            .logits(LogitsAt::None);
        for r in 0..sources.len() {
            for &l in &self.source_layers {
                req = req.read(source_site(l, num_layers), r, Positions::Last);
            }
        }
        let mut caches: Vec<_> = sources.iter().map(|_| model.new_cache()).collect();
        let out = model.forward(&mut caches, &req)?;
        Ok(sources
            .iter()
            .enumerate()
            .map(|(r, (_, tokens))| {
                self.source_layers
                    .iter()
                    .map(|&l| {
                        out.state(source_site(l, num_layers), r, tokens.len() - 1)
                            .expect("state was read")
                            .to_vec()
                    })
                    .collect()
            })
            .collect())
    }

    /// The unpatched generations of prompts, each made once: the new ones share one
    /// generation.
    fn baselines(&self, prompts: &[String]) -> Result<Vec<String>> {
        let mut new: Vec<&String> = prompts
            .iter()
            .filter(|p| !self.baselines.borrow().contains_key(*p))
            .collect();
        new.sort();
        new.dedup();
        if !new.is_empty() {
            let model = self.model;
            let tokens = new
                .iter()
                .map(|p| model.tokenizer().encode(p))
                .collect::<Result<Vec<_>>>()?;
            let mut caches: Vec<_> = new.iter().map(|_| model.new_cache()).collect();
            let generated = model.greedy(&mut caches, Request::tokens(tokens), self.max_new)?;
            for (p, g) in new.iter().zip(generated) {
                let text = model.tokenizer().decode(&g)?;
                self.baselines.borrow_mut().insert(p.to_string(), text);
            }
        }
        Ok(prompts
            .iter()
            .map(|p| self.baselines.borrow()[p].clone())
            .collect())
    }
}

/// Parses a layer list: "all", "3", "0-5", "0,4,8-10", "0-23:4" (a range with a step).
/// `flag` names the setting the list came from (`--source-layers`); a refusal quotes the
/// list as given and the part of it at fault.
pub fn parse_layers(flag: &str, spec: &str, num_layers: usize) -> Result<Vec<usize>> {
    if spec.trim() == "all" {
        return Ok((0..num_layers).collect());
    }
    let blocks = match num_layers {
        0 => "no blocks".to_string(),
        n => format!("{n} blocks (0..{})", n - 1),
    };
    let mut layers = Vec::new();
    for part in spec.split(',') {
        let fail = |why: String| {
            Error::input(format!(
                "{flag} {spec:?}: {why}; the syntax is all, 3, 0-5, 0,4,8-10 or 0-23:4"
            ))
        };
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| fail(format!("{:?} is not a layer number", s.trim())))
        };
        if part.trim().is_empty() {
            return Err(fail("an empty item".into()));
        }
        let (range, step) = match part.split_once(':') {
            Some((range, step)) => match number(step)? {
                0 => {
                    return Err(fail(format!(
                        "{:?}: the step must be at least 1",
                        part.trim()
                    )))
                }
                s => (range, s),
            },
            None => (part, 1),
        };
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let v = number(range)?;
                (v, v)
            }
        };
        if a > b {
            return Err(fail(format!(
                "{:?} is empty ({a} is after {b})",
                part.trim()
            )));
        }
        for l in (a..=b).step_by(step) {
            if l >= num_layers {
                let at = if a == b {
                    format!("{:?} is out of range", part.trim())
                } else {
                    format!("{:?} reaches layer {l}, out of range", part.trim())
                };
                return Err(Error::input(format!(
                    "{flag} {spec:?}: {at}: the model has {blocks}"
                )));
            }
            layers.push(l);
        }
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correctness_rule_ignores_spaces_not_case() {
        assert!(is_correct(
            "Washington D.C.",
            ", Washington D.C., is a city"
        ));
        assert!(is_correct("Buenos Aires", "BuenosAires."));
        assert!(!is_correct("Paris", " paris is"));
    }

    #[test]
    fn token_ending_a_span() {
        let offsets = [(0, 3), (3, 9), (9, 13)];
        assert_eq!(token_ending_at(&offsets, 9), Some(1));
        assert_eq!(token_ending_at(&offsets, 8), Some(1));
        assert_eq!(token_ending_at(&offsets, 13), Some(2));
    }

    #[test]
    fn layer_lists() {
        let p = |spec: &str, n| parse_layers("--layers", spec, n);
        assert_eq!(p("0,2-4", 5).unwrap(), [0, 2, 3, 4]);
        assert_eq!(p("all", 3).unwrap(), [0, 1, 2]);
        assert_eq!(p("0-9:4", 10).unwrap(), [0, 4, 8]);
        let e = |spec: &str| p(spec, 4).unwrap_err().to_string();
        assert_eq!(
            e("0,7"),
            "--layers \"0,7\": \"7\" is out of range: the model has 4 blocks (0..3)"
        );
        assert_eq!(
            e("0-30:2"),
            "--layers \"0-30:2\": \"0-30:2\" reaches layer 4, out of range: the model has 4 blocks (0..3)"
        );
        let syntax = "; the syntax is all, 3, 0-5, 0,4,8-10 or 0-23:4";
        assert_eq!(
            e("1,a-b"),
            format!("--layers \"1,a-b\": \"a\" is not a layer number{syntax}")
        );
        assert_eq!(
            e("3-1"),
            format!("--layers \"3-1\": \"3-1\" is empty (3 is after 1){syntax}")
        );
        assert_eq!(
            e("0-3:0"),
            format!("--layers \"0-3:0\": \"0-3:0\": the step must be at least 1{syntax}")
        );
        assert_eq!(
            e("1,,2"),
            format!("--layers \"1,,2\": an empty item{syntax}")
        );
    }
}
