//! Relation files for attribute extraction, in the two formats of the paper's data:
//!
//! - LRE JSON (Hernandez et al.: `{name, prompt_templates, samples: [{subject, object}]}`).
//!   A subject alone would sit at position 0, Qwen's attention sink, whose state is ~100x
//!   larger than any other and patches as noise; so the source text is the relation's
//!   first prompt template with context before its slot, the subject filled in ("The
//!   capital city of France is"), read at the subject's last token (tokens after it cannot
//!   change that state). Without such a template the source is the target prompt with the
//!   subject in place of its placeholder. By default the target has demonstrations before
//!   it, and so has the source where the template starts with its slot
//!   ([`super::demonstrations`]).
//! - The official preprocessed TSVs: pandas `to_csv(sep="\t")` output, whose quoted fields
//!   may hold tabs and newlines. `prompt_source` holds a text that contains the subject; the
//!   source position is the token that ends the subject's first occurrence (the TSV's own
//!   positions count GPT-J tokens). Rows are filtered as the official notebook does, and
//!   every dropped row is counted by reason; one bad row never fails the file.

use super::demonstrations::{Demonstration, Demonstrations, Shots};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The placeholder token of target prompts.
pub(crate) const PLACEHOLDER: &str = "x";

/// `target` with its placeholder (the last whole-word "x") replaced by `subject`: the
/// baseline prompt, and the LRE source text where a relation has no template.
pub(crate) fn fill_placeholder(target: &str, subject: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let at = target
        .rmatch_indices(PLACEHOLDER)
        .map(|(i, _)| i)
        .find(|&i| {
            !is_word(target[..i].chars().next_back())
                && !is_word(target[i + PLACEHOLDER.len()..].chars().next())
        });
    match at {
        Some(i) => format!(
            "{}{subject}{}",
            &target[..i],
            &target[i + PLACEHOLDER.len()..]
        ),
        None => target.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct Relation {
    pub name: String,
    pub rows: Vec<AttributeRow>,
    /// Rows of the file left out, by reason.
    pub dropped: Dropped,
    /// The line of the first row dropped for each reason (LRE: the sample's number).
    pub first_dropped: BTreeMap<String, usize>,
    /// The file it was read from, as given.
    pub path: std::path::PathBuf,
}

impl Relation {
    /// Where a row is, as a message names it: "r.tsv line 12", "capitals.json sample 3".
    pub fn locate(&self, row: &AttributeRow) -> String {
        let unit = if self.is_tsv() { "line" } else { "sample" };
        format!("{} {unit} {}", self.path.display(), row.line)
    }

    /// [`describe_dropped`], with the first line (or sample) dropped for each reason.
    pub fn describe_dropped(&self) -> String {
        if self.dropped.is_empty() {
            return "none".into();
        }
        let unit = if self.is_tsv() { "line" } else { "sample" };
        self.dropped
            .iter()
            .map(|(reason, n)| match self.first_dropped.get(reason) {
                Some(at) if *n == 1 => format!("1 {reason} ({unit} {at})"),
                Some(at) => format!("{n} {reason} (the first at {unit} {at})"),
                None => format!("{n} {reason}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn is_tsv(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "tsv")
    }
}

impl Relation {
    fn empty(name: String) -> Relation {
        Relation {
            name,
            rows: Vec::new(),
            dropped: Dropped::new(),
            first_dropped: BTreeMap::new(),
            path: Default::default(),
        }
    }
}

/// Counts a dropped row under `reason`, remembering the first one's line.
fn drop_row(r: &mut Relation, reason: &str, line: usize) {
    *r.dropped.entry(reason.into()).or_default() += 1;
    r.first_dropped.entry(reason.into()).or_insert(line);
}

/// Counts of rows left out, by reason.
pub type Dropped = BTreeMap<String, usize>;

#[derive(Debug, Clone)]
pub struct AttributeRow {
    /// 1-based line of the row's start in its file (LRE: the sample's index + 1).
    pub line: usize,
    pub subject: String,
    pub object: String,
    /// Target prompt with the placeholder, e.g. "The capital city of x".
    pub target: String,
    /// Source text containing the subject.
    pub source: String,
    /// Byte offset where the subject's first occurrence in `source` ends.
    pub subject_end: usize,
    /// The samples written before the query in `target` (LRE files, by default).
    pub demonstrations: Vec<Demonstration>,
}

/// Reasons a TSV row is dropped, in the order they are checked.
pub const MALFORMED: &str = "malformed row";
pub const EMPTY_SOURCE: &str = "empty prompt_source";
pub const NEWLINE_SOURCE: &str = "prompt_source contains a newline";
pub const HAND_PICKED: &str = "dropped by hand in the official notebook";
pub const EMPTY_FIELD: &str = "empty subject or object";
pub const SUBJECT_MISSING: &str = "subject not in prompt_source";
/// An LRE row left without a demonstration where its template starts with the slot.
pub const NO_DEMONSTRATION: &str = "no sample left to demonstrate the relation";

/// Reads a relation file (.json in the LRE format, or .tsv as the official data).
/// `target` overrides the target prompt; LRE files without one (and without
/// `target_templates`) get `demonstrations`. Fails only when the file cannot be read as a
/// whole, or when no row is left.
pub fn load_relation(
    path: &Path,
    target: Option<&str>,
    demonstrations: Demonstrations,
) -> Result<Relation> {
    let bad = |msg: String| Error::input(format!("{}: {msg}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut relation = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            let text = crate::data::utf8(&bytes).map_err(bad)?;
            parse_lre(text, target, demonstrations).map_err(bad)?
        }
        Some("tsv") => parse_tsv(&bytes, &name, target).map_err(bad)?,
        _ => {
            return Err(bad(
                "relation files must end in .json (LRE format) or .tsv (official format)".into(),
            ))
        }
    };
    relation.path = path.to_path_buf();
    if relation.rows.is_empty() {
        return Err(bad(format!(
            "no row left to evaluate (dropped: {})",
            relation.describe_dropped()
        )));
    }
    Ok(relation)
}

/// "12 empty prompt_source, 3 malformed row", or "none".
pub fn describe_dropped(dropped: &Dropped) -> String {
    if dropped.is_empty() {
        return "none".into();
    }
    dropped
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect::<Vec<_>>()
        .join(", ")
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

fn parse_lre(
    text: &str,
    target: Option<&str>,
    demonstrations: Demonstrations,
) -> std::result::Result<Relation, String> {
    let lre: Lre = serde_json::from_str(text).map_err(|e| {
        format!(
            "line {}: malformed LRE JSON: {}",
            e.line(),
            crate::data::json_message(&e)
        )
    })?;
    // a template whose subject has context before it: "{} is led by" would put a one-token
    // subject at position 0, the attention sink
    let template = lre
        .prompt_templates
        .iter()
        .find(|t| t.contains("{}") && !t.trim_start().starts_with("{}"));
    // "The capital city of {} is" -> "The capital city of x": the template up to its slot
    let derived = template.map(|t| format!("{}{PLACEHOLDER}", &t[..t.find("{}").unwrap()]));
    let given = target.is_some() || !lre.target_templates.is_empty();
    // the default target: demonstrations, then the template (super::demonstrations)
    let shots = (demonstrations.k > 0 && !given)
        .then(|| {
            let samples: Vec<(&str, &str)> = lre
                .samples
                .iter()
                .map(|s| (s.subject.as_str(), s.object.as_str()))
                .collect();
            Shots::new(&lre.prompt_templates, &samples, demonstrations)
        })
        .flatten();
    let target = target
        .map(str::to_string)
        .or(lre.target_templates.first().cloned())
        .or(derived)
        .or(shots.as_ref().map(|_| String::new()))
        .ok_or(
            "no target prompt: give target_templates, a prompt template with context before \
             its {} slot, --target, or demonstrations (--demonstrations K, K > 0)",
        )?;
    let mut relation = Relation::empty(lre.name);
    for (i, s) in lre.samples.into_iter().enumerate() {
        if s.subject.trim().is_empty() || s.object.trim().is_empty() {
            drop_row(&mut relation, EMPTY_FIELD, i + 1);
            continue;
        }
        if let Some(shots) = &shots {
            let demos = shots.choose(i + 1, &s.subject, &s.object);
            if demos.is_empty() && shots.slot_first() {
                drop_row(&mut relation, NO_DEMONSTRATION, i + 1);
                continue;
            }
            let p = shots.prompts(demos, &s.subject);
            relation.rows.push(AttributeRow {
                line: i + 1,
                subject: s.subject,
                object: s.object,
                target: p.target,
                source: p.source,
                subject_end: p.subject_end,
                demonstrations: p.demonstrations,
            });
            continue;
        }
        // the source: the template with the subject, or else the target with it
        let source = match template {
            Some(t) => t.replacen("{}", &s.subject, 1),
            None => fill_placeholder(&target, &s.subject),
        };
        let Some(start) = source.find(&s.subject) else {
            drop_row(&mut relation, SUBJECT_MISSING, i + 1);
            continue;
        };
        relation.rows.push(AttributeRow {
            line: i + 1,
            subject_end: start + s.subject.len(),
            source,
            subject: s.subject,
            object: s.object,
            target: target.clone(),
            demonstrations: Vec::new(),
        });
    }
    Ok(relation)
}

/// The columns a TSV must have.
struct Columns {
    target: usize,
    subject: usize,
    object: usize,
    source: usize,
    count: usize,
}

fn parse_tsv(
    bytes: &[u8],
    name: &str,
    target: Option<&str>,
) -> std::result::Result<Relation, String> {
    // pandas quoting: fields with tabs, quotes or newlines are quoted, quotes doubled
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .flexible(true)
        .from_reader(bytes);
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
    let cols = Columns {
        target: col("prompt_target")?,
        subject: col("subject")?,
        object: col("object")?,
        source: col("prompt_source")?,
        count: header.len(),
    };
    let mut relation = Relation::empty(name.to_string());
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line() as usize;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => match tsv_row(&record, &cols, name, target, line) {
                Ok(row) => relation.rows.push(row),
                Err(reason) => drop_row(&mut relation, reason, line),
            },
            // a field that is not UTF-8: the reader moves on to the next record
            Err(e) if !e.is_io_error() => drop_row(&mut relation, MALFORMED, line),
            Err(e) => return Err(format!("line {line}: cannot read the TSV: {e}")),
        }
    }
    Ok(relation)
}

/// One TSV record as a row, or the reason it is dropped (the official notebook's filters
/// first, then what this reader needs).
fn tsv_row(
    record: &csv::StringRecord,
    cols: &Columns,
    relation: &str,
    target: Option<&str>,
    line: usize,
) -> std::result::Result<AttributeRow, &'static str> {
    if record.len() != cols.count {
        return Err(MALFORMED);
    }
    let source = &record[cols.source];
    if source.is_empty() {
        return Err(EMPTY_SOURCE);
    }
    if source.contains('\n') {
        return Err(NEWLINE_SOURCE);
    }
    let hand_picked = match relation {
        "star_constellation" => source.contains("service"),
        "object_superclass" => source.contains("Swainson ’ s hawk and the prairie"),
        _ => false,
    };
    if hand_picked {
        return Err(HAND_PICKED);
    }
    let (subject, object) = (&record[cols.subject], &record[cols.object]);
    if subject.trim().is_empty() || object.trim().is_empty() {
        return Err(EMPTY_FIELD);
    }
    let start = source.find(subject).ok_or(SUBJECT_MISSING)?;
    Ok(AttributeRow {
        line,
        subject_end: start + subject.len(),
        object: object.to_string(),
        target: target.unwrap_or(&record[cols.target]).to_string(),
        source: source.to_string(),
        subject: subject.to_string(),
        demonstrations: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lre_target_is_the_template_up_to_its_slot_and_the_source_fills_it() {
        let r = parse_lre(
            r#"{"name": "cap", "prompt_templates": ["The capital city of {} is"], "samples": [{"subject": "France", "object": "Paris"}, {"subject": " ", "object": "x"}]}"#,
            None,
            Demonstrations::NONE,
        )
        .unwrap();
        assert_eq!(r.rows[0].target, "The capital city of x");
        assert_eq!(r.rows[0].source, "The capital city of France is");
        assert_eq!(r.rows[0].subject_end, "The capital city of France".len());
        assert_eq!(r.dropped[EMPTY_FIELD], 1);
    }

    #[test]
    fn a_template_starting_with_its_slot_gives_no_target_or_source_without_demonstrations() {
        let lre = r#"{"name": "ceo", "prompt_templates": ["{} is led by"], "samples": [{"subject": "Apple", "object": "Tim Cook"}]}"#;
        let e = parse_lre(lre, None, Demonstrations::NONE).unwrap_err();
        assert!(e.contains("context before its {} slot"), "{e}");
        assert!(e.contains("--demonstrations K"), "{e}");
        // the source then is the target with the subject, which has context
        for d in [Demonstrations::NONE, Demonstrations::default()] {
            let r = parse_lre(lre, Some("The CEO of x"), d).unwrap();
            assert_eq!(r.rows[0].source, "The CEO of Apple");
            assert!(r.rows[0].demonstrations.is_empty());
        }
    }

    #[test]
    fn lre_default_target_has_demonstrations_and_overrides_win() {
        let lre = r#"{"name": "ceo", "prompt_templates": ["{} is led by"], "samples": [
            {"subject": "Apple", "object": "Tim Cook"}, {"subject": "Microsoft", "object": "Satya Nadella"},
            {"subject": "Tesla", "object": "Elon Musk"}, {"subject": "Xerox", "object": "Steve Bandrowczak"},
            {"subject": "Nvidia", "object": "Jensen Huang"}, {"subject": " ", "object": "nobody"}]}"#;
        let d = Demonstrations { k: 2, seed: 7 };
        let r = parse_lre(lre, None, d).unwrap();
        assert_eq!((r.rows.len(), r.dropped[EMPTY_FIELD]), (5, 1));
        for row in &r.rows {
            assert_eq!(row.demonstrations.len(), 2);
            let lines: String = row
                .demonstrations
                .iter()
                .map(|d| format!("{} is led by {}\n", d.subject, d.object))
                .collect();
            assert_eq!(row.target, format!("{lines}x is led by"));
            assert_eq!(row.source, format!("{lines}{} is led by", row.subject));
            assert!(row.source[..row.subject_end].ends_with(&format!("\n{}", row.subject)));
            assert!(row.demonstrations.iter().all(|d| d.subject != row.subject));
            // "Xerox" holds an "x": a row, never a demonstration
            assert!(row.demonstrations.iter().all(|d| d.line != 4));
        }
        // the file's target_templates, or --target, replace the default
        let with_target = lre.replace(
            r#""samples""#,
            r#""target_templates": ["The CEO of x"], "samples""#,
        );
        let r = parse_lre(&with_target, None, d).unwrap();
        assert_eq!(r.rows[0].target, "The CEO of x");
        assert!(r.rows[0].demonstrations.is_empty());
        let r = parse_lre(lre, Some("Boss of x"), d).unwrap();
        assert_eq!(r.rows[0].target, "Boss of x");
    }

    #[test]
    fn the_placeholder_is_the_last_whole_word_x() {
        assert_eq!(fill_placeholder("Next to x", "Paris"), "Next to Paris");
        assert_eq!(fill_placeholder("x, and x.", "A"), "x, and A.");
        assert_eq!(fill_placeholder("no slot", "A"), "no slot");
    }

    #[test]
    fn tsv_reads_quoted_fields_and_counts_dropped_rows() {
        let tsv = "\tprompt_target\tobject\tsubject\tprompt_source\n\
            0\tThe capital city of x\tParis\tFrance\t He moved to France in France.\n\
            1\tThe capital city of x\tParis\tFrance\t\"two\nlines France\"\n\
            2\tThe capital city of x\tParis\tFrance\t\n\
            3\tThe capital city of x\tParis\tFrance\tnothing here\n\
            4\t\"The capital\tcity of x\"\t\"Pa\"\"ris\"\tFrance\tin France\n\
            5\tshort row\n";
        let r = parse_tsv(tsv.as_bytes(), "cap", None).unwrap();
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].subject_end, " He moved to France".len());
        assert_eq!(r.rows[0].line, 2);
        assert_eq!(
            (
                r.rows[1].target.as_str(),
                r.rows[1].object.as_str(),
                r.rows[1].line
            ),
            ("The capital\tcity of x", "Pa\"ris", 7)
        );
        let want: Dropped = [
            (NEWLINE_SOURCE, 1),
            (EMPTY_SOURCE, 1),
            (SUBJECT_MISSING, 1),
            (MALFORMED, 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(r.dropped, want);
        assert_eq!(
            describe_dropped(&r.dropped),
            "1 empty prompt_source, 1 malformed row, 1 prompt_source contains a newline, \
             1 subject not in prompt_source"
        );
    }

    #[test]
    fn hand_picked_rows_are_dropped_in_their_relation_only() {
        let tsv =
            "prompt_target\tobject\tsubject\tprompt_source\nT x\tOrion\tRigel\tservice to Rigel\n";
        let r = parse_tsv(tsv.as_bytes(), "star_constellation", None).unwrap();
        assert_eq!((r.rows.len(), r.dropped[HAND_PICKED]), (0, 1));
        assert_eq!(
            parse_tsv(tsv.as_bytes(), "other", None).unwrap().rows.len(),
            1
        );
    }

    #[test]
    fn a_file_without_rows_left_is_an_error_naming_the_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tsv");
        std::fs::write(
            &path,
            "prompt_target\tobject\tsubject\tprompt_source\nT x\tO\tS\t\nT x\tO\t\tS\nT x\tO\tS\t\n",
        )
        .unwrap();
        let e = load_relation(&path, None, Demonstrations::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: no row left to evaluate (dropped: 2 empty prompt_source (the first at line \
                 2), 1 empty subject or object (line 3))",
                path.display()
            )
        );
        // LRE files count samples
        let json = dir.path().join("r.json");
        std::fs::write(
            &json,
            r#"{"name": "r", "prompt_templates": ["The {} is"], "samples": [{"subject": "a", "object": ""}]}"#,
        )
        .unwrap();
        let e = load_relation(&json, None, Demonstrations::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("(dropped: 1 empty subject or object (sample 1))"),
            "{e}"
        );
        // a file that is not UTF-8 names the place
        std::fs::write(&json, b"{\"name\":\n \"r\xff\"}").unwrap();
        let e = load_relation(&json, None, Demonstrations::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("r.json: line 2, column 4: not UTF-8 text"),
            "{e}"
        );
        std::fs::write(&path, "subject\tobject\n").unwrap();
        let e = load_relation(&path, None, Demonstrations::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("TSV has no column \"prompt_target\""), "{e}");
    }
}
