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

/// Reads prompts from a .txt or .jsonl file; blank lines are skipped.
pub fn load_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let prompts = if jsonl {
        parse_jsonl(&text).map_err(|msg| Error::input(format!("{}: {msg}", path.display())))?
    } else {
        parse_lines(&text)
    };
    if prompts.is_empty() {
        return Err(Error::input(format!(
            "{}: no prompts (the file is empty)",
            path.display()
        )));
    }
    Ok(prompts)
}

pub fn parse_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_jsonl(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("line {}: malformed JSON: {e}", i + 1))?;
        let prompt = value
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| format!("line {}: no string field \"text\"", i + 1))?;
        if !prompt.trim().is_empty() {
            out.push(prompt.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ["a", "b"]
        );
        assert!(parse_jsonl("{\"text\": \"a\"}\n{oops")
            .unwrap_err()
            .contains("line 2: malformed JSON"));
        assert!(parse_jsonl("{\"body\": \"a\"}")
            .unwrap_err()
            .contains("line 1: no string field"));
    }
}
