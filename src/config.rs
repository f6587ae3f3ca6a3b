//! config.json of a Qwen2, Qwen3 or Llama model, in both transformers 4 and 5 spellings.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Qwen2ForCausalLM: q/k/v projections carry biases.
    Qwen2,
    /// LlamaForCausalLM: the same graph without q/k/v biases.
    Llama,
    /// Qwen3ForCausalLM: q/k RMSNorm per head before RoPE (`qk_norm`), q/k/v biases only
    /// where `attention_bias` says so, `head_dim` independent of hidden / heads.
    Qwen3,
}

/// Shapes and constants of the decoder, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    /// o_proj carries a bias (`attention_bias` of Llama and Qwen3; never in Qwen2).
    pub o_bias: bool,
    /// An RMSNorm over each head's `head_dim` slice of q and of k, with its own weights,
    /// after the q/k/v projection and before RoPE (Qwen3's q_norm and k_norm).
    pub qk_norm: bool,
    /// Stored weight dtype as the config names it ("float32", "bfloat16", ...), if given.
    pub dtype: Option<String>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<RopeParameters>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|msg| Error::Config {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// Parses and validates; the error string says which field is wrong.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or(raw.model_type.clone())
            .ok_or("neither `architectures` nor `model_type` is given")?;
        let arch = match arch_name.as_str() {
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            "LlamaForCausalLM" | "llama" => Arch::Llama,
            "Qwen3ForCausalLM" | "qwen3" => Arch::Qwen3,
            other => return Err(Error::UnknownArchitecture(other.to_string()).to_string()),
        };
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(format!("hidden_act {act:?} is not supported (only silu)"));
            }
        }
        if raw.use_sliding_window == Some(true) {
            return Err("use_sliding_window = true is not supported".into());
        }
        if raw.mlp_bias == Some(true) {
            return Err("mlp_bias = true is not supported".into());
        }
        for rope in [&raw.rope_scaling, &raw.rope_parameters]
            .into_iter()
            .flatten()
        {
            match rope.rope_type.as_deref() {
                None | Some("default") => {}
                Some(t) => return Err(format!("rope_type {t:?} is not supported (only default)")),
            }
        }
        let rope_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(match arch {
                Arch::Qwen2 => 1e6,
                Arch::Llama | Arch::Qwen3 => 1e4,
            });
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let positive = [
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("num_key_value_heads", num_kv_heads),
            ("vocab_size", raw.vocab_size),
            ("max_position_embeddings", raw.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        // transformers' Qwen3Config defaults head_dim to 128; the others derive it
        let default_head_dim = match arch {
            Arch::Qwen3 => Some(128),
            Arch::Qwen2 | Arch::Llama => None,
        };
        let head_dim = raw.head_dim.or(default_head_dim);
        if !raw.hidden_size.is_multiple_of(raw.num_attention_heads) && head_dim.is_none() {
            return Err("hidden_size is not a multiple of num_attention_heads".into());
        }
        if !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
                raw.num_attention_heads
            ));
        }
        let head_dim = head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {head_dim} must be even for RoPE"));
        }
        // transformers: Qwen2 always has q/k/v biases and none on o_proj; Llama and Qwen3
        // put `attention_bias` on all four projections
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama | Arch::Qwen3 => {
                let b = raw.attention_bias.unwrap_or(false);
                (b, b)
            }
        };
        Ok(Config {
            arch,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps as f32,
            rope_theta: rope_theta as f32,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            qk_norm: arch == Arch::Qwen3,
            dtype: raw.dtype.or(raw.torch_dtype),
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Checks a block index given by a user, with the range in the message.
    pub fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.num_layers {
            return Err(Error::input(format!(
                "layer {layer} out of range: the model has {} blocks (0..{})",
                self.num_layers,
                self.num_layers - 1
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-6"#;

    #[test]
    fn reads_both_rope_theta_spellings() {
        let v4 = format!(
            r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}, "rope_theta": 1000.0, "torch_dtype": "bfloat16"}}"#
        );
        let v5 = format!(
            r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}, "rope_parameters": {{"rope_theta": 1000.0, "rope_type": "default"}}, "dtype": "bfloat16"}}"#
        );
        for text in [v4, v5] {
            let c = Config::from_json(&text).unwrap();
            assert_eq!(c.rope_theta, 1000.0);
            assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
            assert_eq!(c.head_dim, 16);
            assert!(c.qkv_bias);
        }
    }

    #[test]
    fn qwen3_head_dim_biases_and_qk_norm() {
        // transformers' Qwen3Config defaults: head_dim 128, attention_bias false, theta 1e4
        let c = Config::from_json(&format!(r#"{{"model_type": "qwen3", {BASE}}}"#)).unwrap();
        assert_eq!(c.arch, Arch::Qwen3);
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (128, 512, 256));
        assert!(c.qk_norm && !c.qkv_bias && !c.o_bias);
        assert_eq!(c.rope_theta, 1e4);
        let c = Config::from_json(&format!(
            r#"{{"architectures": ["Qwen3ForCausalLM"], {BASE}, "head_dim": 32, "attention_bias": true}}"#
        ))
        .unwrap();
        assert_eq!((c.head_dim, c.q_dim()), (32, 128));
        assert!(c.qk_norm && c.qkv_bias && c.o_bias);
        // Qwen2: q/k/v biases whatever attention_bias says, none on o_proj, no q/k norm
        let c = Config::from_json(&format!(
            r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}, "attention_bias": false}}"#
        ))
        .unwrap();
        assert!(c.qkv_bias && !c.o_bias && !c.qk_norm);
        let odd = format!(r#"{{"model_type": "qwen3", {BASE}, "head_dim": 33}}"#);
        assert!(Config::from_json(&odd).unwrap_err().contains("head_dim 33"));
    }

    #[test]
    fn rejects_unknown_architecture_and_bad_heads() {
        let gpt = format!(r#"{{"architectures": ["GPT2LMHeadModel"], {BASE}}}"#);
        assert!(Config::from_json(&gpt)
            .unwrap_err()
            .contains("GPT2LMHeadModel"));
        let bad = format!(r#"{{"architectures": ["LlamaForCausalLM"], {BASE}}}"#)
            .replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
        assert!(Config::from_json(&bad)
            .unwrap_err()
            .contains("num_key_value_heads"));
        let scaled = format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "rope_scaling": {{"rope_type": "llama3"}}}}"#
        );
        assert!(Config::from_json(&scaled).unwrap_err().contains("llama3"));
    }
}
