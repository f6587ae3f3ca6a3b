//! The next-token sweep: fast path (shared target prefix, batched cells) against the
//! reference path (one whole target forward per cell), and against the independent
//! transformers implementation in tools/reference_sweep.py (tests/fixtures/sweep).

mod common;

use qwen_scope::patchscope::next_token::{
    fit_tuned_lens, lens_rows, run_sources, NextToken, SampleResult,
};
use qwen_scope::patchscope::TOKEN_IDENTITY_PROMPT;
use qwen_scope::Model;

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

fn load(name: &str) -> Model {
    Model::load(common::fixture(name).to_str().unwrap(), None).unwrap()
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
