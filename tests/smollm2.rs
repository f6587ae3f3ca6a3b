//! Parity on a real trained model: SmolLM2-135M-Instruct converted to a Qwen2 folder by
//! tools/convert_smollm2.py, against transformers' logits (tests/fixtures/smollm2).
//! Runs where the folder exists (see `common::smollm2_dir`).

mod common;

use common::{max_abs_diff, Reference};
use qwen_scope::backend::cpu::logits::{argmax, log_softmax};
use qwen_scope::{LogitsAt, Model, Request};

fn smollm2() -> Option<Model> {
    let dir = common::smollm2_dir()?;
    Some(Model::load(dir.to_str().unwrap(), None).expect("converted SmolLM2 loads"))
}

#[test]
fn smollm2_matches_transformers() {
    let Some(model) = smollm2() else { return };
    let r = Reference::load("smollm2");
    let prompts = r.json["prompts"].as_array().unwrap();
    let passage = r.json["passage_index"].as_u64().unwrap() as usize;
    for p in prompts {
        let i = p["index"].as_u64().unwrap() as usize;
        let text = p["text"].as_str().unwrap();
        let ids = model.tokenizer.encode(text).unwrap();
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
        let out = model
            .forward(
                &mut [model.new_cache()],
                &Request::tokens(vec![ids.clone()]).logits(logits_at),
            )
            .unwrap();
        let last = out.last_logits(0).unwrap();
        let want = &r.get(&format!("prompt.{i}.last_logits")).f32;
        let diff = max_abs_diff(last, want);
        eprintln!(
            "prompt {i} ({} tokens): max |logit diff| {diff:.2e}",
            ids.len()
        );
        assert!(diff <= 1e-3, "prompt {i}: max |logit diff| {diff:e} > 1e-3");
        assert_eq!(
            argmax(last),
            p["top1_id"].as_u64().unwrap() as usize,
            "top-1 of prompt {i}"
        );
        if i == passage {
            // per-token NLL over a long passage catches RoPE/permutation errors that
            // short prompts hide
            let want_nll = &r.get("passage.token_nll").f32;
            let nll: Vec<f32> = (0..ids.len() - 1)
                .map(|t| -log_softmax(out.logits_at(0, t).unwrap())[ids[t + 1] as usize])
                .collect();
            let d = max_abs_diff(&nll, want_nll);
            assert!(d <= 1e-3, "passage token NLL max diff {d:e}");
        }
    }
}

#[test]
fn smollm2_tokenizer_cases_match_transformers() {
    let Some(model) = smollm2() else { return };
    let r = Reference::load("smollm2");
    for case in r.json["tokenizer_cases"].as_array().unwrap() {
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
