//! Parity on real trained models converted by tools/get_model.sh, against transformers
//! (tests/fixtures/<name>): SmolLM2-135M (a Llama written as Qwen2; references from
//! tools/smollm2_reference.py) and Qwen2.5-Coder-0.5B (references from
//! tools/qwen_reference.py, transformers reading the GGUF itself, not our conversion).
//! A test whose model is not installed fails, naming `tools/get_model.sh NAME` (see
//! `common::real_model_dir`); every test name holds its model's name, so that
//! `cargo test -- --skip smollm2_135m` leaves out the tests of a model not installed.

mod common;

use common::{max_abs_diff, Reference};
use qwen_scope::backend::cpu::logits::{argmax, log_softmax};
use qwen_scope::Engine;
use qwen_scope::{CpuModel, LogitsAt, Positions, Request, Site};

const QWEN: &str = "qwen2.5-coder-0.5b";
const SMOLLM2: &str = "smollm2-135m";

fn load(name: &str) -> CpuModel {
    let dir = common::real_model_dir(name);
    CpuModel::load(dir.to_str().unwrap(), None).expect("converted model loads")
}

/// Fixture folder of each model.
fn fixture(name: &str) -> &'static str {
    match name {
        SMOLLM2 => "smollm2",
        _ => QWEN,
    }
}

/// Tokens, last-position logits, and the next-token NLL (and top-1, where the reference
/// has it) at every position of a long passage: the passage catches RoPE and Q/K layout
/// errors that short prompts hide.
fn logits_match_transformers(name: &str) {
    let model = load(name);
    let r = Reference::load(fixture(name));
    let passage = r.json["passage_index"].as_u64().unwrap() as usize;
    for p in r.json["prompts"].as_array().unwrap() {
        let i = p["index"].as_u64().unwrap() as usize;
        let ids = model.tokenizer.encode(p["text"].as_str().unwrap()).unwrap();
        assert_eq!(
            ids,
            r.get(&format!("prompt.{i}.input_ids")).ids(),
            "tokens of prompt {i}"
        );
        let logits_at = if i == passage {
            LogitsAt::All
        } else {
            LogitsAt::Last
        };
        let req = Request::tokens(vec![ids.clone()]).logits(logits_at);
        let out = model.forward(&mut [model.new_cache()], &req).unwrap();
        let last = out.last_logits(0).unwrap();
        assert_eq!(
            argmax(last),
            p["top1_id"].as_u64().unwrap() as usize,
            "top-1 of prompt {i}"
        );
        if let Some(want) = r.tensors.get(&format!("prompt.{i}.last_logits")) {
            let diff = max_abs_diff(last, &want.f32);
            eprintln!(
                "{name} prompt {i} ({} tokens): max |logit diff| {diff:.2e}",
                ids.len()
            );
            assert!(diff <= 1e-3, "prompt {i}: max |logit diff| {diff:e} > 1e-3");
        }
        if i != passage {
            continue;
        }
        let nll: Vec<f32> = (0..ids.len() - 1)
            .map(|t| -log_softmax(out.logits_at(0, t).unwrap())[ids[t + 1] as usize])
            .collect();
        let d = max_abs_diff(&nll, &r.get("passage.token_nll").f32);
        eprintln!(
            "{name} passage ({} tokens): max |token NLL diff| {d:.2e}",
            ids.len()
        );
        assert!(d <= 1e-3, "passage token NLL max diff {d:e}");
        if let (Some(top1), Some(margin)) = (
            r.tensors.get("passage.top1_ids"),
            r.tensors.get("passage.top1_margin"),
        ) {
            for (t, (&want, &m)) in top1.i64.iter().zip(&margin.f32).enumerate() {
                // a near-tie may fall either way between two f32 implementations
                if m > 1e-3 {
                    let got = argmax(out.logits_at(0, t).unwrap());
                    assert_eq!(got as i64, want, "passage top-1 at position {t}");
                }
            }
        }
    }
}

fn tokenizer_matches_transformers(name: &str) {
    let model = load(name);
    let r = Reference::load(fixture(name));
    let cases = r.json["tokenizer_cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(model.tokenizer.encode(text).unwrap(), want, "{text:?}");
    }
}

#[test]
fn smollm2_135m_logits_match_transformers() {
    logits_match_transformers(SMOLLM2);
}

#[test]
fn smollm2_135m_tokenizer_cases_match_transformers() {
    tokenizer_matches_transformers(SMOLLM2);
}

#[test]
fn qwen2_5_coder_0_5b_logits_match_transformers_reading_the_gguf() {
    logits_match_transformers(QWEN);
}

#[test]
fn qwen2_5_coder_0_5b_tokenizer_matches_transformers() {
    tokenizer_matches_transformers(QWEN);
}

/// Every residual state of one prompt against HF's `output_hidden_states`: entry 0 is the
/// embedding output, entry l the output of block l-1, the last entry the final-normed
/// state; the last block's raw output (not in HF's tuple) is stored beside it.
#[test]
fn qwen2_5_coder_0_5b_residual_states_match_transformers() {
    let model = load(QWEN);
    let r = Reference::load(QWEN);
    let ids = r.get("hidden_states.input_ids").ids();
    let l = model.num_layers();
    let sites: Vec<Site> = std::iter::once(Site::Embed)
        .chain((0..l).map(Site::BlockOut))
        .chain(std::iter::once(Site::FinalNorm))
        .collect();
    let req = sites
        .iter()
        .fold(Request::tokens(vec![ids.clone()]), |req, &s| {
            req.read(s, 0, Positions::All)
        });
    let out = model.forward(&mut [model.new_cache()], &req).unwrap();
    let hs = r.get("hidden_states");
    assert_eq!(hs.shape, [l + 1, ids.len(), model.config.hidden_size]);
    let ours = |s: Site| -> Vec<f32> {
        (0..ids.len())
            .flat_map(|p| out.state(s, 0, p).unwrap().to_vec())
            .collect()
    };
    let final_residual = &r.get("hidden_states.final_residual").f32;
    for (hf, site) in (0..=l)
        .map(|i| {
            let site = match i {
                0 => Site::Embed,
                i if i == l => Site::FinalNorm,
                i => Site::BlockOut(i - 1),
            };
            (hs.row(i), site)
        })
        .chain(std::iter::once((
            final_residual.as_slice(),
            Site::BlockOut(l - 1),
        )))
    {
        let got = ours(site);
        // ~5e-4 at most, at position 0: Qwen's attention sink, whose states reach ~1000
        let d = common::assert_close(&format!("{site}"), &got, hf, 1e-3);
        eprintln!("{site}: max |diff| {d:.2e}");
    }
}
