//! The next-token sweep: fast path (shared target prefix, batched cells) against the
//! reference path (one whole target forward per cell), and against the independent
//! transformers implementation in tools/reference_sweep.py (tests/fixtures/sweep).

mod common;

use qwen_scope::patchscope::next_token::{
    fit_tuned_lens, lens_rows, run_sources, NextToken, SampleResult,
};
use qwen_scope::patchscope::TOKEN_IDENTITY_PROMPT;
use qwen_scope::CpuModel;
use qwen_scope::Engine;

const PROMPTS: [&str; 8] = [
    "The old lighthouse keeper counted the ships every night.",
    "Fresh bread smells best early in the morning.",
    "In 1969, two astronauts walked on the Moon.",
    "She tuned the violin before the concert began.",
    "Rivers carry sand and stones down to the sea.",
    "The committee will announce its decision on Friday.",
    "Our cat sleeps on the warm windowsill all afternoon.",
    "A prime number has exactly two divisors.",
];

fn load(name: &str) -> CpuModel {
    CpuModel::load(common::fixture(name).to_str().unwrap(), None).unwrap()
}

fn assert_same(fast: &[SampleResult], reference: &[SampleResult]) {
    for (f, r) in fast.iter().zip(reference) {
        assert_eq!(
            (f.index, f.position, f.source_top1),
            (r.index, r.position, r.source_top1)
        );
        let pairs = f
            .token_identity
            .iter()
            .flatten()
            .zip(r.token_identity.iter().flatten())
            .chain(f.logit_lens.iter().zip(&r.logit_lens))
            .chain(f.tuned_lens.iter().zip(&r.tuned_lens));
        for (a, b) in pairs {
            assert_eq!((a.pred, a.prec1), (b.pred, b.prec1), "sample {}", f.index);
            assert!(
                (a.surprisal - b.surprisal).abs() < 1e-4,
                "sample {}: {} vs {}",
                f.index,
                a.surprisal,
                b.surprisal
            );
        }
    }
}

#[test]
fn fast_path_equals_reference_path() {
    for (name, grid) in [
        ("tiny-qwen2", true),
        ("tiny-llama", false),
        ("tiny-qwen2-untied", false),
        ("tiny-qwen3", true),
        ("tiny-qwen3-untied-bias", false),
    ] {
        let model = load(name);
        let seed = 3;
        let encoded: Vec<(usize, Vec<u32>)> = PROMPTS
            .iter()
            .enumerate()
            .map(|(i, p)| (i, model.tokenizer.encode(p).unwrap()))
            .collect();
        let (train, val) = encoded.split_at(4);
        // every position of the training prompts: a determined fit
        let tuned = fit_tuned_lens(&lens_rows(&model, train, seed, true).unwrap()).unwrap();
        let nt = NextToken::new(&model, TOKEN_IDENTITY_PROMPT, tuned, grid).unwrap();
        let fast = nt
            .evaluate(&run_sources(&model, val, seed).unwrap())
            .unwrap();
        let reference: Vec<SampleResult> = val
            .iter()
            .map(|(i, t)| nt.evaluate_reference(*i, t, seed).unwrap())
            .collect();
        assert_same(&fast, &reference);
        let cells = fast[0].token_identity.iter().flatten().count();
        assert_eq!(cells, if grid { 16 } else { 4 }, "{name}");
        // the final-layer rule: patching the last layer's state into the last layer
        // reproduces the source prediction exactly
        for s in &fast {
            let last = s.token_identity.last().unwrap().last().unwrap();
            assert!(
                last.prec1,
                "{name} sample {}: last-layer token identity must be exact",
                s.index
            );
            assert!(s.logit_lens.last().unwrap().prec1);
        }
    }
}

/// Our sweep on the protocol of tools/reference_sweep.py (one seeded position per
/// training prompt for the tuned lens), compared with its committed output.
fn compare_with_transformers(model: &CpuModel, reference: &str) {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("sweep").join(reference)).unwrap(),
    )
    .unwrap();
    let (train, val, seed) = (
        r["train"].as_u64().unwrap() as usize,
        r["val"].as_u64().unwrap() as usize,
        r["seed"].as_u64().unwrap(),
    );
    let grid = !r["grid"].is_null();
    let prompts = qwen_scope::data::parse_lines(qwen_scope::data::DEFAULT_PROMPTS);
    let encoded: Vec<(usize, Vec<u32>)> = prompts[..train + val]
        .iter()
        .enumerate()
        .map(|(i, p)| (i, model.tokenizer.encode(p).unwrap()))
        .collect();
    let (train_set, val_set) = encoded.split_at(train);
    let tuned = fit_tuned_lens(&lens_rows(model, train_set, seed, false).unwrap()).unwrap();
    let target = r["target_prompt"].as_str().unwrap();
    let ours = NextToken::new(model, target, tuned, grid)
        .unwrap()
        .evaluate(&run_sources(model, val_set, seed).unwrap())
        .unwrap();
    let summary = qwen_scope::report::summary::summarize(&ours);
    for (j, s) in r["samples"].as_array().unwrap().iter().enumerate() {
        assert_eq!(ours[j].index as u64, s["index"].as_u64().unwrap());
        assert_eq!(
            ours[j].position as u64,
            s["position"].as_u64().unwrap(),
            "sample {j}"
        );
        assert_eq!(
            ours[j].source_top1 as u64,
            s["source_top1"].as_u64().unwrap(),
            "sample {j}"
        );
    }
    let num_layers = model.num_layers();
    for method in qwen_scope::report::summary::METHODS {
        let m = &r["methods"][method];
        for l in 0..num_layers {
            let s = summary
                .iter()
                .find(|s| {
                    s.method == method
                        && s.source_layer == l
                        && (method != "token_identity" || s.target_layer == l)
                })
                .unwrap();
            let want_p = m["prec1"][l].as_f64().unwrap();
            let want_s = m["surprisal"][l].as_f64().unwrap();
            assert_eq!(
                s.precision_at_1, want_p,
                "{reference} {method} layer {l} precision@1"
            );
            assert!(
                (s.surprisal - want_s).abs() <= 1e-3,
                "{reference} {method} layer {l} surprisal {} vs {want_s}",
                s.surprisal
            );
        }
    }
    if grid {
        for s in summary.iter().filter(|s| s.method == "token_identity") {
            let want = r["grid"]["prec1"][s.source_layer][s.target_layer]
                .as_f64()
                .unwrap();
            assert_eq!(
                s.precision_at_1, want,
                "grid ({}, {})",
                s.source_layer, s.target_layer
            );
        }
    }
}

#[test]
fn metrics_equal_the_transformers_reference_on_fixtures() {
    compare_with_transformers(&load("tiny-qwen2"), "tiny-qwen2.json");
    compare_with_transformers(&load("tiny-llama"), "tiny-llama.json");
}

#[test]
fn metrics_equal_the_transformers_reference_on_qwen3_fixtures() {
    compare_with_transformers(&load("tiny-qwen3"), "tiny-qwen3.json");
    compare_with_transformers(
        &load("tiny-qwen3-untied-bias"),
        "tiny-qwen3-untied-bias.json",
    );
}

#[test]
fn smollm2_135m_metrics_equal_the_transformers_reference() {
    let dir = common::real_model_dir("smollm2-135m");
    let model = CpuModel::load(dir.to_str().unwrap(), None).unwrap();
    compare_with_transformers(&model, "smollm2.json");
}

#[test]
fn qwen2_5_coder_0_5b_metrics_equal_the_transformers_reference() {
    let dir = common::real_model_dir("qwen2.5-coder-0.5b");
    let model = CpuModel::load(dir.to_str().unwrap(), None).unwrap();
    compare_with_transformers(&model, "qwen2.5-coder-0.5b.json");
}

/// Patched generation from the shared target (fork + resume after block l*) equals a whole
/// target pass with the write, for every (l, l*), the final-layer rule, and a placeholder
/// that is not the last token.
#[test]
fn shared_target_generation_equals_whole_prompt_generation() {
    use qwen_scope::patchscope::attributes::placeholder_position;
    use qwen_scope::patchscope::target::Target;
    use qwen_scope::patchscope::{source_site, target_site};
    use qwen_scope::{Positions, Request, WriteOp};

    let model = load("tiny-qwen2");
    let num_layers = model.num_layers();
    let source = model
        .tokenizer
        .encode("The bridge was built in 1887.")
        .unwrap();
    let mut req = Request::tokens(vec![source.clone()]).logits(qwen_scope::LogitsAt::None);
    for l in 0..num_layers {
        req = req.read(source_site(l, num_layers), 0, Positions::Last);
    }
    let out = model.forward(&mut [model.new_cache()], &req).unwrap();
    let last = source.len() - 1;
    for prompt in [
        "The capital city of x",
        "Here x is the word, said the old man",
    ] {
        let tokens = model.tokenizer.encode(prompt).unwrap();
        let pos = placeholder_position(&model.tokenizer, &tokens).unwrap();
        let target = Target::new(&model, tokens.clone(), pos).unwrap();
        for l in 0..num_layers {
            for lt in 0..num_layers {
                let v = out
                    .state(source_site(l, num_layers), 0, last)
                    .unwrap()
                    .to_vec();
                let site = target_site(l, lt, num_layers);
                let fast = target.generate(&model, site, vec![v.clone()], 6).unwrap();
                let whole =
                    Request::tokens(vec![tokens.clone()]).write(site, 0, pos, WriteOp::Replace(v));
                let slow = model.greedy(&mut [model.new_cache()], whole, 6).unwrap();
                assert_eq!(fast, slow, "{prompt:?} l={l} l*={lt}");
            }
        }
    }
}
