//! config.json -> candle-transformers' qwen2 `Config`.
//!
//! candle's `Config` deserializes a transformers-4 Qwen2 config verbatim and requires
//! fields that transformers 5 renames (`rope_parameters.rope_theta`) or that converted
//! models omit (`sliding_window`, `max_window_layers`, `use_sliding_window`). So the file
//! is read as a `serde_json::Value` and the struct is built here, with the same defaults
//! qwen-scope's src/config.rs applies, and an error naming the field otherwise.

use anyhow::{bail, Context, Result};
use candle_nn::Activation;
use candle_transformers::models::qwen2::Config;
use serde_json::Value;
use std::path::Path;

pub fn read(path: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    from_json(&json).with_context(|| format!("unusable config {}", path.display()))
}

pub fn from_json(c: &Value) -> Result<Config> {
    check_architecture(c)?;
    check_unsupported(c)?;
    let hidden_size = usize_field(c, "hidden_size")?;
    let num_attention_heads = usize_field(c, "num_attention_heads")?;
    let num_hidden_layers = usize_field(c, "num_hidden_layers")?;
    let max_position_embeddings = usize_field(c, "max_position_embeddings")?;
    let num_key_value_heads = match c.get("num_key_value_heads") {
        Some(Value::Null) | None => num_attention_heads,
        Some(_) => usize_field(c, "num_key_value_heads")?,
    };
    if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
        bail!("hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}");
    }
    if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        bail!("num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}");
    }
    // candle derives head_dim as hidden_size / num_attention_heads and has no field for it.
    if let Some(hd) = c.get("head_dim").and_then(Value::as_u64) {
        if hd as usize != hidden_size / num_attention_heads {
            bail!("head_dim {hd} != hidden_size / num_attention_heads; candle's qwen2 cannot express that");
        }
    }
    Ok(Config {
        vocab_size: usize_field(c, "vocab_size")?,
        hidden_size,
        intermediate_size: usize_field(c, "intermediate_size")?,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        max_position_embeddings,
        // candle masks j + sliding_window < i even when use_sliding_window is false (which
        // transformers ignores); a window as long as the model's context never masks.
        sliding_window: max_position_embeddings,
        max_window_layers: num_hidden_layers,
        tie_word_embeddings: c
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        rope_theta: rope_theta(c)?,
        rms_norm_eps: c
            .get("rms_norm_eps")
            .and_then(Value::as_f64)
            .context("missing or non-numeric field `rms_norm_eps`")?,
        use_sliding_window: false,
        hidden_act: Activation::Silu,
    })
}

/// candle's qwen2 module is Qwen2 only: it always loads q/k/v biases.
fn check_architecture(c: &Value) -> Result<()> {
    let arch = c
        .get("architectures")
        .and_then(|a| a.get(0))
        .or_else(|| c.get("model_type"))
        .and_then(Value::as_str)
        .context("neither `architectures` nor `model_type` is given")?;
    match arch {
        "Qwen2ForCausalLM" | "qwen2" => Ok(()),
        other => bail!(
            "architecture {other:?}: only Qwen2 is supported (candle-transformers' qwen2 model)"
        ),
    }
}

/// What neither qwen-scope nor this mapping implements: refuse rather than compare
/// two different computations.
fn check_unsupported(c: &Value) -> Result<()> {
    if let Some(act) = c.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            bail!("hidden_act {act:?} is not supported (only silu)");
        }
    }
    if c.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
        bail!("use_sliding_window = true is not supported");
    }
    for key in ["rope_scaling", "rope_parameters"] {
        match c
            .get(key)
            .and_then(|r| r.get("rope_type"))
            .and_then(Value::as_str)
        {
            None | Some("default") => {}
            Some(t) => bail!("{key}.rope_type {t:?} is not supported (only default)"),
        }
    }
    Ok(())
}

/// transformers 5 nests it in `rope_parameters`; 4 has it at the top; Qwen2's default.
fn rope_theta(c: &Value) -> Result<f64> {
    let nested = c.get("rope_parameters").and_then(|p| p.get("rope_theta"));
    match nested.or_else(|| c.get("rope_theta")) {
        None | Some(Value::Null) => Ok(1e6),
        Some(v) => v.as_f64().context("`rope_theta` is not a number"),
    }
}

fn usize_field(c: &Value, name: &str) -> Result<usize> {
    let v = c
        .get(name)
        .with_context(|| format!("missing field `{name}`"))?;
    match v.as_u64() {
        Some(n) if n > 0 => Ok(n as usize),
        _ => bail!("field `{name}` must be a positive integer, got {v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 100,
               "max_position_embeddings": 128, "rms_norm_eps": 1e-6})
    }

    #[test]
    fn reads_both_rope_spellings_and_fills_missing_fields() {
        let mut v4 = base();
        v4["rope_theta"] = json!(1000.0);
        let mut v5 = base();
        v5["rope_parameters"] = json!({"rope_theta": 1000.0, "rope_type": "default"});
        for c in [v4, v5] {
            let cfg = from_json(&c).unwrap();
            assert_eq!(cfg.rope_theta, 1000.0);
            assert_eq!(cfg.sliding_window, 128);
            assert!(!cfg.use_sliding_window);
        }
        assert_eq!(from_json(&base()).unwrap().rope_theta, 1e6);
    }

    #[test]
    fn names_what_is_wrong() {
        let mut c = base();
        c.as_object_mut().unwrap().remove("vocab_size");
        assert!(format!("{:#}", from_json(&c).unwrap_err()).contains("vocab_size"));
        let mut c = base();
        c["architectures"] = json!(["LlamaForCausalLM"]);
        assert!(format!("{:#}", from_json(&c).unwrap_err()).contains("Llama"));
        let mut c = base();
        c["rope_scaling"] = json!({"rope_type": "yarn"});
        assert!(format!("{:#}", from_json(&c).unwrap_err()).contains("yarn"));
    }
}
