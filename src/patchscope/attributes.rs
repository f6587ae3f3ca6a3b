//! Attribute extraction (paper section 4.2): patch the subject's last-token state from a
//! source text into a relation's target prompt at its placeholder, generate greedily, and
//! check whether the object appears, for every (source layer, target layer).
//!
//! Relations come as LRE JSON (`samples: [{subject, object}]`; the source text is the
//! subject itself) or as the official preprocessed TSVs (`prompt_source` holds a text that
//! contains the subject; the subject's first occurrence ends the source position).

use super::target::Target;
use super::{source_site, target_site};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::forward::{LogitsAt, Request};
use crate::stream::Positions;
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The placeholder token of target prompts.
pub const PLACEHOLDER: &str = "x";

#[derive(Debug, Clone)]
pub struct Relation {
    pub name: String,
    pub rows: Vec<AttributeRow>,
}

#[derive(Debug, Clone)]
pub struct AttributeRow {
    pub subject: String,
    pub object: String,
    /// Target prompt with the placeholder, e.g. "The capital city of x".
    pub target: String,
    /// Source text containing the subject.
    pub source: String,
    /// Byte offset where the subject's first occurrence in `source` ends.
    pub subject_end: usize,
}

/// Reads a relation file (.json in the LRE format, or .tsv as the official data).
/// `target` overrides the target prompt.
pub fn load_relation(path: &Path, target: Option<&str>) -> Result<Relation> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::input(format!("{}: {msg}", path.display()));
    let relation = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => parse_lre(&text, target).map_err(bad)?,
        Some("tsv") => parse_tsv(&text, path, target).map_err(bad)?,
        _ => {
            return Err(bad(
                "relation files must end in .json (LRE format) or .tsv (official format)".into(),
            ))
        }
    };
    if relation.rows.is_empty() {
        return Err(bad("no samples".into()));
    }
    Ok(relation)
}

#[derive(Deserialize)]
struct Lre {
    name: String,
    #[serde(default)]
    prompt_templates: Vec<String>,
    #[serde(default)]
    target_templates: Vec<String>,
    samples: Vec<LreSample>,
}

#[derive(Deserialize)]
struct LreSample {
    subject: String,
    object: String,
}

fn parse_lre(text: &str, target: Option<&str>) -> std::result::Result<Relation, String> {
    let lre: Lre = serde_json::from_str(text).map_err(|e| format!("malformed LRE JSON: {e}"))?;
    // "The capital city of {} is" -> "The capital city of x": the template up to its slot
    let derived = lre
        .prompt_templates
        .first()
        .and_then(|t| t.find("{}").map(|i| format!("{}{PLACEHOLDER}", &t[..i])));
    let target = target
        .map(str::to_string)
        .or(lre.target_templates.first().cloned())
        .or(derived)
        .ok_or("no target prompt: give target_templates, a prompt template with {}, or --target")?;
    let rows = lre
        .samples
        .into_iter()
        .map(|s| AttributeRow {
            subject_end: s.subject.len(),
            source: s.subject.clone(),
            subject: s.subject,
            object: s.object,
            target: target.clone(),
        })
        .collect();
    Ok(Relation {
        name: lre.name,
        rows,
    })
}

fn parse_tsv(
    text: &str,
    path: &Path,
    target: Option<&str>,
) -> std::result::Result<Relation, String> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .quoting(false)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| format!("malformed TSV header: {e}"))?
        .clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or(format!("TSV has no column {name:?}"))
    };
    let (c_target, c_subject, c_object, c_source) = (
        col("prompt_target")?,
        col("subject")?,
        col("object")?,
        col("prompt_source")?,
    );
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| format!("line {line}: malformed TSV row: {e}"))?;
        let field = |c: usize| {
            record
                .get(c)
                .map(str::to_string)
                .ok_or(format!("line {line}: missing column {}", &header[c]))
        };
        let (subject, source) = (field(c_subject)?, field(c_source)?);
        let start = source.find(&subject).ok_or(format!(
            "line {line}: subject {subject:?} does not occur in prompt_source"
        ))?;
        rows.push(AttributeRow {
            subject_end: start + subject.len(),
            object: field(c_object)?,
            target: target
                .map(str::to_string)
                .map_or_else(|| field(c_target), Ok)?,
            source,
            subject,
        });
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    Ok(Relation { name, rows })
}

/// The official correctness rule: the object, spaces removed, occurs in the generation,
/// spaces removed (case-sensitive).
pub fn is_correct(object: &str, generated: &str) -> bool {
    let strip = |s: &str| s.chars().filter(|c| *c != ' ').collect::<String>();
    strip(generated).contains(&strip(object))
}

/// The token that ends the byte span `..end` of the text.
pub fn token_ending_at(offsets: &[(usize, usize)], end: usize) -> Option<usize> {
    offsets.iter().position(|&(s, e)| s < end && end <= e)
}

/// The position of the placeholder token in a tokenized target prompt (the last one).
pub fn placeholder_position(tokenizer: &Tokenizer, tokens: &[u32]) -> Result<usize> {
    let texts = tokens
        .iter()
        .map(|&t| tokenizer.decode(&[t]))
        .collect::<Result<Vec<_>>>()?;
    texts
        .iter()
        .rposition(|t| t.trim() == PLACEHOLDER)
        .ok_or_else(|| {
            Error::input(format!(
                "target prompt has no placeholder {PLACEHOLDER:?} token"
            ))
        })
}

/// Results of one relation row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowResult {
    pub row: usize,
    pub subject: String,
    pub object: String,
    pub baseline: String,
    pub baseline_correct: bool,
    /// Whether the row was evaluated (rows the model gets wrong unpatched are skipped
    /// unless all rows are asked for).
    pub evaluated: bool,
    /// [source layer index][target layer index] -> correct; generations alongside.
    pub correct: Vec<Vec<bool>>,
    pub generations: Vec<Vec<String>>,
}

/// The experiment's settings.
pub struct Attributes<'m, E: Engine> {
    pub model: &'m E,
    pub source_layers: Vec<usize>,
    pub target_layers: Vec<usize>,
    pub max_new: usize,
    pub only_correct: bool,
}

impl<E: Engine> Attributes<'_, E> {
    /// Evaluates one row: baseline, then every (source layer, target layer) cell, all
    /// source layers of a target site in one batched generation from the shared target.
    pub fn evaluate(&self, index: usize, row: &AttributeRow) -> Result<RowResult> {
        let model = self.model;
        let num_layers = model.num_layers();
        let baseline_prompt = row.target.replacen(PLACEHOLDER, &row.subject, 1);
        let baseline = self.greedy_text(&baseline_prompt)?;
        let baseline_correct = is_correct(&row.object, &baseline);
        let mut result = RowResult {
            row: index,
            subject: row.subject.clone(),
            object: row.object.clone(),
            baseline,
            baseline_correct,
            evaluated: baseline_correct || !self.only_correct,
            correct: Vec::new(),
            generations: Vec::new(),
        };
        if !result.evaluated {
            return Ok(result);
        }
        let (tokens, offsets) = model.tokenizer().encode_with_offsets(&row.source)?;
        let pos = token_ending_at(&offsets, row.subject_end).ok_or_else(|| {
            Error::input(format!(
                "row {index}: no token ends the subject {:?} in the source text",
                row.subject
            ))
        })?;
        let mut req = Request::tokens(vec![tokens[..=pos].to_vec()]).logits(LogitsAt::None);
        for &l in &self.source_layers {
            req = req.read(source_site(l, num_layers), 0, Positions::Last);
        }
        let out = model.forward(&mut [model.new_cache()], &req)?;
        let reps: Vec<Vec<f32>> = self
            .source_layers
            .iter()
            .map(|&l| {
                out.state(source_site(l, num_layers), 0, pos)
                    .expect("state was read")
                    .to_vec()
            })
            .collect();

        let target_tokens = model.tokenizer().encode(&row.target)?;
        let patch_pos = placeholder_position(model.tokenizer(), &target_tokens)?;
        let target = Target::new(model, target_tokens, patch_pos)?;
        let (ns, nt) = (self.source_layers.len(), self.target_layers.len());
        result.correct = vec![vec![false; nt]; ns];
        result.generations = vec![vec![String::new(); nt]; ns];
        for (ti, &lt) in self.target_layers.iter().enumerate() {
            // one batch per target site: the final-layer rule splits l = l* = L-1 off
            let mut groups: Vec<(crate::stream::Site, Vec<usize>)> = Vec::new();
            for (si, &ls) in self.source_layers.iter().enumerate() {
                let site = target_site(ls, lt, num_layers);
                match groups.iter_mut().find(|(s, _)| *s == site) {
                    Some((_, v)) => v.push(si),
                    None => groups.push((site, vec![si])),
                }
            }
            for (site, members) in groups {
                let states = members.iter().map(|&si| reps[si].clone()).collect();
                let generated = target.generate(model, site, states, self.max_new)?;
                for (&si, toks) in members.iter().zip(generated) {
                    let text = model.tokenizer().decode(&toks)?;
                    result.correct[si][ti] = is_correct(&row.object, &text);
                    result.generations[si][ti] = text;
                }
            }
        }
        Ok(result)
    }

    fn greedy_text(&self, prompt: &str) -> Result<String> {
        let model = self.model;
        let tokens = model.tokenizer().encode(prompt)?;
        let new = model.greedy(
            &mut [model.new_cache()],
            Request::tokens(vec![tokens]),
            self.max_new,
        )?;
        model.tokenizer().decode(&new[0])
    }
}

/// Parses a layer list: "all", "3", "0-5", "0,4,8-10", "0-23:4" (a range with a step).
pub fn parse_layers(spec: &str, num_layers: usize) -> Result<Vec<usize>> {
    if spec == "all" {
        return Ok((0..num_layers).collect());
    }
    let mut layers = Vec::new();
    for part in spec.split(',') {
        let bad = || {
            Error::input(format!(
                "bad layer list {spec:?}: use e.g. all, 3, 0-5, 0,4,8-10 or 0-23:4"
            ))
        };
        let (part, step) = match part.split_once(':') {
            Some((range, step)) => (
                range,
                step.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(bad)?,
            ),
            None => (part, 1),
        };
        let (a, b): (usize, usize) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let v = part.trim().parse().map_err(|_| bad())?;
                (v, v)
            }
        };
        for l in (a..=b).step_by(step) {
            if l >= num_layers {
                return Err(Error::input(format!(
                    "layer {l} out of range: the model has {num_layers} blocks (0..{})",
                    num_layers - 1
                )));
            }
            layers.push(l);
        }
    }
    if layers.is_empty() {
        return Err(Error::input(format!("layer list {spec:?} is empty")));
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
    fn lre_target_is_the_template_up_to_its_slot() {
        let r = parse_lre(
            r#"{"name": "cap", "prompt_templates": ["The capital city of {} is"], "samples": [{"subject": "France", "object": "Paris"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(r.rows[0].target, "The capital city of x");
        assert_eq!(
            (r.rows[0].source.as_str(), r.rows[0].subject_end),
            ("France", 6)
        );
    }

    #[test]
    fn tsv_subject_position_is_its_first_occurrence() {
        let tsv = "prompt_target\tobject\tsubject\tprompt_source\nThe capital city of x\tParis\tFrance\t He moved to France in France.\n";
        let r = parse_tsv(tsv, Path::new("cap.tsv"), None).unwrap();
        assert_eq!(r.rows[0].subject_end, " He moved to France".len());
        let missing =
            "prompt_target\tobject\tsubject\tprompt_source\nT x\tParis\tFrance\tnothing here\n";
        assert!(parse_tsv(missing, Path::new("c.tsv"), None)
            .unwrap_err()
            .contains("line 2"));
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
        assert_eq!(parse_layers("0,2-4", 5).unwrap(), [0, 2, 3, 4]);
        assert_eq!(parse_layers("all", 3).unwrap(), [0, 1, 2]);
        assert_eq!(parse_layers("0-9:4", 10).unwrap(), [0, 4, 8]);
        assert!(parse_layers("7", 4)
            .unwrap_err()
            .to_string()
            .contains("layer 7 out of range"));
        assert!(parse_layers("a-b", 4).is_err());
    }
}
