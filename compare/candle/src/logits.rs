//! `logits`: one prompt's last-position logits from candle; `check`: those against a
//! `qwen-scope forward` JSON dump of the same prompt.

use crate::load::Loaded;
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

pub fn logits(m: &mut Loaded, dir: &Path, prompt: &str, out: &Path) -> Result<()> {
    let tokens = encode(dir, prompt)?;
    m.model.clear_kv_cache();
    let last = m.step(std::slice::from_ref(&tokens), 0)?.remove(0);
    let (top, top_logit) = argmax(&last);
    eprintln!(
        "prompt {prompt:?}: {} tokens, top-1 id {top} (logit {top_logit:.4})",
        tokens.len()
    );
    let doc = json!({"tokens": tokens, "last_logits": last});
    std::fs::write(out, serde_json::to_vec(&doc)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// tokenizer.json with no special tokens added, as qwen-scope's src/tokenizer.rs encodes
/// (Qwen2 and SmolLM2 add no BOS), so both engines see the same ids.
fn encode(dir: &Path, prompt: &str) -> Result<Vec<u32>> {
    let path = dir.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
    let ids = tok
        .encode(prompt, false)
        .map_err(|e| anyhow::anyhow!("cannot tokenize {prompt:?}: {e}"))?
        .get_ids()
        .to_vec();
    ensure!(!ids.is_empty(), "empty prompt: {prompt:?} has no tokens");
    Ok(ids)
}

/// Prints the comparison; Ok(false) when the engines disagree (other ids, other top-1,
/// or a logit further apart than `tol`).
pub fn check(qwen_scope: &Path, candle: &Path, tol: f32) -> Result<bool> {
    let (q_ids, q_last) = read_qwen_scope(qwen_scope)?;
    let c = read_json(candle)?;
    let c_ids: Vec<u32> = serde_json::from_value(c["tokens"].clone())
        .with_context(|| format!("{}: no `tokens` array", candle.display()))?;
    let c_last: Vec<f32> = serde_json::from_value(c["last_logits"].clone())
        .with_context(|| format!("{}: no `last_logits` array", candle.display()))?;
    if q_ids != c_ids {
        println!("logits check: FAIL, token ids differ: qwen-scope {q_ids:?}, candle {c_ids:?}");
        return Ok(false);
    }
    ensure!(
        q_last.len() == c_last.len(),
        "vocab sizes differ: qwen-scope {}, candle {}",
        q_last.len(),
        c_last.len()
    );
    let max_diff = q_last
        .iter()
        .zip(&c_last)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let (q_top, q_logit) = argmax(&q_last);
    let (c_top, c_logit) = argmax(&c_last);
    let ok = q_top == c_top && max_diff <= tol;
    println!(
        "logits check ({} tokens, same ids): max |diff| = {max_diff:.3e} (tol {tol:.0e}); \
         top-1 qwen-scope {q_top} ({q_logit:.4}), candle {c_top} ({c_logit:.4}): {}; {}",
        q_ids.len(),
        if q_top == c_top { "agree" } else { "DIFFER" },
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(ok)
}

/// Row 0 of `qwen-scope forward --out X.json` (src/cli/forward.rs): its input ids and
/// the last position of `tensors["row0.logits"]` ([tokens, vocab], row-major).
fn read_qwen_scope(path: &Path) -> Result<(Vec<u32>, Vec<f32>)> {
    let doc = read_json(path)?;
    let ids: Vec<u32> = serde_json::from_value(doc["input_ids"][0].clone())
        .with_context(|| format!("{}: no `input_ids[0]`", path.display()))?;
    let t = &doc["tensors"]["row0.logits"];
    let shape: Vec<usize> = serde_json::from_value(t["shape"].clone())
        .with_context(|| format!("{}: no `tensors.row0.logits.shape`", path.display()))?;
    let values: Vec<f32> = serde_json::from_value(t["values"].clone())
        .with_context(|| format!("{}: no `tensors.row0.logits.values`", path.display()))?;
    ensure!(
        shape.len() == 2 && shape[0] == ids.len() && values.len() == shape[0] * shape[1],
        "{}: row0.logits has shape {shape:?} for {} tokens and {} values",
        path.display(),
        ids.len(),
        values.len()
    );
    let vocab = shape[1];
    Ok((ids, values[values.len() - vocab..].to_vec()))
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Index and value of the largest logit (the first one on a tie).
fn argmax(v: &[f32]) -> (usize, f32) {
    v.iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
}
