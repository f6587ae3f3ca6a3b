//! The default prompts of LRE relations: a few demonstrations, then the query.
//!
//! An LRE relation file (Hernandez et al.) has prompt templates ("{} is part of") and
//! samples, but no target prompt, and 27 of its 47 files have only templates that start
//! with the subject's slot, which would put the placeholder (and a source subject) at
//! position 0, Qwen's attention sink. The LRE work prompts with demonstrations: other
//! (subject, object) pairs of the relation written with the template, before the query.
//! With them the slot is never at position 0 and the model is told the task. The rule,
//! exactly (`tools/reference_attributes.py` implements it again on its own):
//!
//! - **template** T: the relation's first prompt template with context before its `{}`
//!   slot, else its first template with a slot;
//! - **pool**: the relation's samples with a non-blank subject and object, neither holding
//!   a newline nor the letter "x" (so that the query's placeholder is the prompt's only
//!   "x" under any tokenizer), numbered by their index i in the file's `samples` (0-based);
//! - **order**: the pool sorted by `splitmix64(splitmix64(seed) + i)` (u64, wrapping), ties
//!   by i: one seeded order per relation;
//! - **a row's demonstrations**: the first k samples of that order other than the row's own
//!   sample that share neither string with it (a demonstration's subject and object both
//!   differ from the row's subject and from its object). Most rows of a relation get the
//!   same k; a row that meets one of them gets the next one in the order. Fewer than k
//!   when the pool runs out;
//! - **a demonstration's line**: T with the subject in its slot, a space, the object
//!   ("Paris is part of France");
//! - **target**: the lines, each followed by "\n", then T with the placeholder "x" in its
//!   slot ("...\nx is part of"); the patch goes on the "x". The baseline is the target
//!   with the subject in place of the "x";
//! - **source**: where T has context before its slot, T with the subject ("The capital
//!   city of France is", as without demonstrations); where its slot comes first, the same
//!   lines, then T with the subject. The source position is the token ending the subject
//!   in that last line;
//! - **answer**: with demonstrations the model answers on one line and then tends to write
//!   further demonstrations of its own, which may name the object by chance; a generation
//!   (baseline or patched) is judged on its text before its first newline, and is correct
//!   iff the object occurs there as whole words: case-sensitive, not preceded or followed
//!   by a letter or digit. The official rule (the object without spaces anywhere in the
//!   generation without spaces) would take " woman" for "man" and " women" for "men".
//!
//! `--target` or a file's `target_templates` replace the default target (and then no
//! demonstrations are used); `--demonstrations 0` gives the prompts without them: the
//! template cut at its slot ("The capital city of x"), which files whose templates all
//! start with the slot do not have.

use super::attributes::is_correct;
use super::relations::PLACEHOLDER;
use super::splitmix64;
use serde::{Deserialize, Serialize};

/// Demonstrations before each LRE query, by default.
pub const DEFAULT_K: usize = 3;
/// The seed of the demonstrations' order, by default.
pub const DEFAULT_SEED: u64 = 0;
/// Ends each demonstration's line; a generation is judged on its text before the first.
pub const SEPARATOR: char = '\n';

/// How many demonstrations precede an LRE query, and the seed that orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Demonstrations {
    pub k: usize,
    pub seed: u64,
}

impl Default for Demonstrations {
    fn default() -> Self {
        Demonstrations {
            k: DEFAULT_K,
            seed: DEFAULT_SEED,
        }
    }
}

impl Demonstrations {
    /// No demonstrations: the template cut at its slot, as before they existed.
    pub const NONE: Demonstrations = Demonstrations { k: 0, seed: 0 };
}

/// A sample of the relation written before a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demonstration {
    /// The sample's 1-based number in the file's `samples` (as a row's `line`).
    pub line: usize,
    pub subject: String,
    pub object: String,
}

/// The prompts of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowPrompts {
    pub target: String,
    pub source: String,
    /// Byte offset where the subject ends in `source`.
    pub subject_end: usize,
    pub demonstrations: Vec<Demonstration>,
}

/// A relation's template and its samples in their seeded order.
#[derive(Debug, Clone)]
pub struct Shots {
    template: String,
    k: usize,
    order: Vec<Demonstration>,
}

impl Shots {
    /// `templates` are the file's prompt templates; `samples` its (subject, object) pairs
    /// in file order. None when no template has a `{}` slot.
    pub fn new(templates: &[String], samples: &[(&str, &str)], d: Demonstrations) -> Option<Shots> {
        let template = templates
            .iter()
            .find(|t| t.contains("{}") && !slot_first(t))
            .or_else(|| templates.iter().find(|t| t.contains("{}")))?
            .clone();
        let usable =
            |s: &str| !s.trim().is_empty() && !s.contains(SEPARATOR) && !s.contains(PLACEHOLDER);
        let base = splitmix64(d.seed);
        let mut keyed: Vec<(u64, usize)> = samples
            .iter()
            .enumerate()
            .filter(|(_, (s, o))| usable(s) && usable(o))
            .map(|(i, _)| (splitmix64(base.wrapping_add(i as u64)), i))
            .collect();
        keyed.sort_unstable();
        let order = keyed
            .into_iter()
            .map(|(_, i)| Demonstration {
                line: i + 1,
                subject: samples[i].0.to_string(),
                object: samples[i].1.to_string(),
            })
            .collect();
        Some(Shots {
            template,
            k: d.k,
            order,
        })
    }

    /// The template the prompts are written with.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Whether the template starts with its slot (the source then gets demonstrations).
    pub fn slot_first(&self) -> bool {
        slot_first(&self.template)
    }

    /// The demonstrations of the row that is sample `line` (1-based) of the file.
    pub fn choose(&self, line: usize, subject: &str, object: &str) -> Vec<Demonstration> {
        let own = |s: &str| s == subject || s == object;
        self.order
            .iter()
            .filter(|d| d.line != line && !own(&d.subject) && !own(&d.object))
            .take(self.k)
            .cloned()
            .collect()
    }

    /// The row's target and source prompts with its demonstrations.
    pub fn prompts(&self, demonstrations: Vec<Demonstration>, subject: &str) -> RowPrompts {
        let lines: String = demonstrations
            .iter()
            .map(|d| format!("{}{SEPARATOR}", self.fill(&d.subject) + " " + &d.object))
            .collect();
        let slot = self.template.find("{}").expect("a template with a slot");
        let (source, context) = if self.slot_first() {
            (format!("{lines}{}", self.fill(subject)), lines.len())
        } else {
            (self.fill(subject), 0)
        };
        RowPrompts {
            target: format!("{lines}{}", self.fill(PLACEHOLDER)),
            subject_end: context + slot + subject.len(),
            source,
            demonstrations,
        }
    }

    fn fill(&self, subject: &str) -> String {
        self.template.replacen("{}", subject, 1)
    }
}

fn slot_first(template: &str) -> bool {
    template.trim_start().starts_with("{}")
}

/// Whether a generation names `object`: without demonstrations by the official rule
/// ([`is_correct`]), with them as whole words in its first line.
pub fn answers(object: &str, generated: &str, with_demonstrations: bool) -> bool {
    if !with_demonstrations {
        return is_correct(object, generated);
    }
    let line = generated.split(SEPARATOR).next().unwrap_or("");
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    // every occurrence, overlapping ones too
    !object.is_empty()
        && (0..line.len()).any(|i| {
            line.is_char_boundary(i)
                && line[i..].starts_with(object)
                && !word(line[..i].chars().next_back())
                && !word(line[i + object.len()..].chars().next())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shots(templates: &[&str], samples: &[(&str, &str)], k: usize) -> Shots {
        let t: Vec<String> = templates.iter().map(|s| s.to_string()).collect();
        Shots::new(&t, samples, Demonstrations { k, seed: 0 }).unwrap()
    }

    const CITIES: [(&str, &str); 6] = [
        ("Paris", "France"),
        ("Lyon", "France"),
        ("Berlin", "Germany"),
        ("Texas City", "USA"),
        ("Rome", "Italy"),
        ("Madrid", "Spain"),
    ];

    #[test]
    fn a_slot_first_relation_gets_demonstrations_in_target_and_source() {
        let s = shots(&["{} is part of"], &CITIES, 2);
        assert!(s.slot_first());
        let demos = s.choose(1, "Paris", "France");
        assert_eq!(demos.len(), 2);
        for d in &demos {
            // never the row's own sample, subject or object, nor one holding an "x"
            assert!(d.line != 1 && d.object != "France" && d.line != 4, "{d:?}");
        }
        let p = s.prompts(demos.clone(), "Paris");
        let lines = format!(
            "{} is part of {}\n{} is part of {}\n",
            demos[0].subject, demos[0].object, demos[1].subject, demos[1].object
        );
        assert_eq!(p.target, format!("{lines}x is part of"));
        assert_eq!(p.source, format!("{lines}Paris is part of"));
        assert_eq!(&p.source[..p.subject_end], format!("{lines}Paris"));
    }

    #[test]
    fn rows_share_demonstrations_unless_they_meet_them() {
        let s = shots(&["{} is part of"], &CITIES, 2);
        let first = s.choose(0, "Nowhere", "Atlantis");
        let meets = first[0].clone();
        let other = s.choose(meets.line, &meets.subject, &meets.object);
        assert!(!other.contains(&meets));
        assert!(other.contains(&first[1]));
        // the same seed gives the same order; another seed another one (here)
        assert_eq!(
            first,
            shots(&["{} is part of"], &CITIES, 2).choose(0, "a", "b")
        );
        let t = vec!["{} is part of".to_string()];
        let orders: Vec<Vec<usize>> = (0..4)
            .map(|seed| {
                let s = Shots::new(&t, &CITIES, Demonstrations { k: 5, seed }).unwrap();
                s.choose(0, "a", "b").iter().map(|d| d.line).collect()
            })
            .collect();
        assert!(orders.iter().any(|o| o != &orders[0]), "{orders:?}");
    }

    #[test]
    fn a_template_with_context_keeps_its_source_and_the_pool_can_run_out() {
        let s = shots(
            &["{}'s capital is", "The capital city of {} is"],
            &[("France", "Paris"), ("Germany", "Berlin")],
            3,
        );
        assert!(!s.slot_first());
        let demos = s.choose(1, "France", "Paris");
        assert_eq!(demos.len(), 1);
        let p = s.prompts(demos, "France");
        assert_eq!(
            p.target,
            "The capital city of Germany is Berlin\nThe capital city of x is"
        );
        assert_eq!(p.source, "The capital city of France is");
        assert_eq!(&p.source[..p.subject_end], "The capital city of France");
    }

    #[test]
    fn with_demonstrations_the_answer_is_whole_words_of_the_first_line() {
        assert!(answers("France", " France\nLyon is part of Italy", true));
        assert!(!answers("Italy", " France\nLyon is part of Italy", true));
        assert!(answers("Italy", " France\nLyon is part of Italy", false));
        assert!(answers("United States", " the United States.", true));
        assert!(!answers("man", " woman\n", true));
        assert!(answers("man", " woman\n", false), "the official rule");
        assert!(!answers("men", " women", true));
        assert!(answers("b", " b, as in bee", true));
        assert!(!answers("Paris", "\nParis", true));
        assert!(!answers("paris", " Paris", true), "case-sensitive");
    }
}
