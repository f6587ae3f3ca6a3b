//! Prompt files: plain text (one prompt per line) or JSONL ({"text": ...} per line), and
//! the default prompt set shipped with the crate.

use crate::error::{Error, Result};
use std::path::Path;

/// 300 varied sentences written for qwen-scope (data/prompts.txt).
pub const DEFAULT_PROMPTS: &str = include_str!("../data/prompts.txt");

/// `rows` rows of `len` fixed token ids spread over the vocabulary, different per row:
/// the deterministic input of `qwen-scope bench`, the criterion suites and the peers'
/// harnesses (tools/bench_torch.py, compare/candle), which use the same formula.
pub fn fixed_token_rows(rows: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    let vocab = vocab as u64;
    (0..rows as u64)
        .map(|r| {
            (0..len as u64)
                .map(|i| ((r * 7919 + i * 104_729 + 13) % vocab) as u32)
                .collect()
        })
        .collect()
}

/// A prompt set and where each prompt came from, so that a message about a prompt can
/// name its file and line (or its index in a list).
#[derive(Debug, Clone)]
pub struct Prompts {
    pub texts: Vec<String>,
    /// 1-based line of each prompt in its file (for a list: its index).
    pub lines: Vec<usize>,
    /// Where the set came from: a file's path, "the default prompt set", "the prompt list".
    pub origin: String,
    /// Whether the prompts came from a file (and `lines` are lines).
    pub from_file: bool,
}

impl Prompts {
    /// The 300 sentences shipped with qwen-scope.
    pub fn default_set() -> Prompts {
        let mut p =
            Prompts::from_text(DEFAULT_PROMPTS, "the default prompt set (data/prompts.txt)");
        p.from_file = true;
        p
    }

    /// Prompts given as a list (the Python package's `sweep([...])`).
    pub fn from_list(texts: Vec<String>) -> Prompts {
        Prompts {
            lines: (0..texts.len()).collect(),
            texts,
            origin: "the prompt list".into(),
            from_file: false,
        }
    }

    /// Reads a .txt (one prompt per line) or .jsonl ({"text": ...} per line) file; blank
    /// lines are skipped. Errors name the file and the line.
    pub fn load(path: &Path) -> Result<Prompts> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::input(format!("{}: {msg}", path.display()));
        let text = utf8(&bytes).map_err(bad)?;
        let origin = path.display().to_string();
        let jsonl = path.extension().is_some_and(|e| e == "jsonl");
        let prompts = if jsonl {
            let (texts, lines) = parse_jsonl(text).map_err(bad)?;
            Prompts {
                texts,
                lines,
                origin,
                from_file: true,
            }
        } else {
            let mut p = Prompts::from_text(text, &origin);
            p.from_file = true;
            p
        };
        if prompts.texts.is_empty() {
            return Err(bad("no prompts (the file has no non-blank line)".into()));
        }
        Ok(prompts)
    }

    fn from_text(text: &str, origin: &str) -> Prompts {
        let (lines, texts) = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l.to_string()))
            .unzip();
        Prompts {
            texts,
            lines,
            origin: origin.into(),
            from_file: false,
        }
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Prompt `i`, as a message names it: "p.txt line 7", or "prompt 3 of the prompt list".
    pub fn describe(&self, i: usize) -> String {
        if self.from_file {
            format!("{} line {}", self.origin, self.lines[i])
        } else {
            format!("prompt {i} of {}", self.origin)
        }
    }
}

/// Reads prompts from a .txt or .jsonl file; blank lines are skipped.
pub fn load_prompts(path: &Path) -> Result<Vec<String>> {
    Ok(Prompts::load(path)?.texts)
}

pub fn parse_lines(text: &str) -> Vec<String> {
    Prompts::from_text(text, "").texts
}

/// `bytes` as UTF-8, or the line and column of the first byte that is not.
pub(crate) fn utf8(bytes: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
        format!("line {line}, column {column}: not UTF-8 text")
    })
}

/// serde_json's message without its " at line 1 column N" (the caller names the line).
pub(crate) fn json_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rsplit_once(" at line ") {
        Some((m, _)) => format!("{m} (column {})", e.column()),
        None => msg,
    }
}

fn parse_jsonl(text: &str) -> std::result::Result<(Vec<String>, Vec<usize>), String> {
    let (mut out, mut lines) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("line {}: malformed JSON: {}", i + 1, json_message(&e)))?;
        let prompt = value
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| format!("line {}: no string field \"text\"", i + 1))?;
        if !prompt.trim().is_empty() {
            out.push(prompt.to_string());
            lines.push(i + 1);
        }
    }
    Ok((out, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_errors_name_the_line() {
        assert_eq!(
            utf8(b"ok\nfine\nab\xffc").unwrap_err(),
            "line 3, column 3: not UTF-8 text"
        );
        let p = Prompts::from_text("a\n\n  \nb\n", "f.txt");
        assert_eq!(p.texts, ["a", "b"]);
        assert_eq!(p.lines, [1, 4]);
        let mut p = p;
        p.from_file = true;
        assert_eq!(p.describe(1), "f.txt line 4");
        assert_eq!(
            Prompts::from_list(vec!["x".into()]).describe(0),
            "prompt 0 of the prompt list"
        );
    }

    #[test]
    fn default_prompts_are_a_few_hundred_distinct_lines() {
        let p = parse_lines(DEFAULT_PROMPTS);
        assert!(p.len() >= 200, "{}", p.len());
        let mut uniq = p.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), p.len());
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        assert_eq!(
            parse_jsonl("{\"text\": \"a\"}\n\n{\"text\": \"b\"}").unwrap(),
            (vec!["a".to_string(), "b".to_string()], vec![1, 3])
        );
        assert_eq!(
            parse_jsonl("{\"text\": \"a\"}\n{oops").unwrap_err(),
            "line 2: malformed JSON: key must be a string (column 2)"
        );
        assert!(parse_jsonl("{\"body\": \"a\"}")
            .unwrap_err()
            .contains("line 1: no string field"));
    }
}
