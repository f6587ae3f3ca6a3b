//! Parity with Hugging Face transformers on the tiny fixture models (references made by
//! tools/make_fixtures.py): logits and every residual state, single, batched with unequal
//! lengths, and prefill followed by incremental decode; plus writes, generation and
//! prefix reuse against independent references.

mod common;

use common::{assert_close, Reference, TINY_MODELS};
use qwen_scope::Engine;
use qwen_scope::{
    CpuModel, HiddenRow, Input, KvCache, LogitsAt, Positions, Request, Site, WriteOp,
};
use std::sync::Arc;

const TOL: f32 = 1e-4;

fn load(name: &str) -> (CpuModel, Reference) {
    let model =
        CpuModel::load(common::fixture(name).to_str().unwrap(), None).expect("fixture loads");
    (model, Reference::load(name))
}

fn all_sites(model: &CpuModel) -> Vec<Site> {
    std::iter::once(Site::Embed)
        .chain((0..model.num_layers()).map(Site::BlockOut))
        .chain(std::iter::once(Site::FinalNorm))
        .collect()
}

/// The reference tensor name of a site for a prefix ("single", "batch", "patch").
fn ref_name(prefix: &str, site: Site) -> String {
    format!("{prefix}.{site}")
}

fn read_everything(mut req: Request, rows: usize, model: &CpuModel) -> Request {
    for r in 0..rows {
        for s in all_sites(model) {
            req = req.read(s, r, Positions::All);
        }
    }
    req.logits(LogitsAt::All)
}

#[test]
fn tokenizer_matches_transformers() {
    for name in TINY_MODELS {
        let (model, r) = load(name);
        let text = r.json["single"].as_str().unwrap();
        assert_eq!(
            model.tokenizer.encode(text).unwrap(),
            r.get("single.input_ids").ids(),
            "{name}"
        );
    }
}

#[test]
fn single_prompt_logits_and_every_state_match() {
    for name in TINY_MODELS {
        let (model, r) = load(name);
        let ids = r.get("single.input_ids").ids();
        let mut caches = vec![model.new_cache()];
        let out = model
            .forward(
                &mut caches,
                &read_everything(Request::tokens(vec![ids.clone()]), 1, &model),
            )
            .unwrap();
        let (mut logits_diff, mut states_diff) = (0f32, 0f32);
        for p in 0..ids.len() {
            logits_diff = logits_diff.max(assert_close(
                &format!("{name} logits[{p}]"),
                out.logits_at(0, p).unwrap(),
                r.get("single.logits").row(p),
                TOL,
            ));
            for s in all_sites(&model) {
                states_diff = states_diff.max(assert_close(
                    &format!("{name} {s}[{p}]"),
                    out.state(s, 0, p).unwrap(),
                    r.get(&ref_name("single", s)).row(p),
                    TOL,
                ));
            }
        }
        eprintln!("{name}: max |diff| vs transformers: logits {logits_diff:.1e}, residual states {states_diff:.1e}");
    }
}

/// `Engine::head_argmax` (the sweeps' predictions and every greedy step) picks the token
/// transformers' logits rank first, wherever the top two are not within 1e-3.
#[test]
fn head_argmax_of_final_normed_states_is_the_reference_logits_argmax() {
    for name in TINY_MODELS {
        let (model, r) = load(name);
        let ids = r.get("single.input_ids").ids();
        let req = Request::tokens(vec![ids.clone()]).read(Site::FinalNorm, 0, Positions::All);
        let out = model.forward(&mut [model.new_cache()], &req).unwrap();
        let states: Vec<Vec<f32>> = (0..ids.len())
            .map(|p| out.state(Site::FinalNorm, 0, p).unwrap().to_vec())
            .collect();
        let got = model.head_argmax(states).unwrap();
        let mut checked = 0;
        for (p, &token) in got.iter().enumerate() {
            let logits = r.get("single.logits").row(p);
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            if logits[order[0]] - logits[order[1]] > 1e-3 {
                assert_eq!(token as usize, order[0], "{name} position {p}");
                checked += 1;
            }
        }
        assert!(
            checked * 2 > ids.len(),
            "{name}: only {checked} clear positions"
        );
        assert_eq!(model.head_argmax(Vec::new()).unwrap(), Vec::<u32>::new());
        let e = model
            .head_argmax(vec![vec![0.0; 3]])
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden size"), "{e}");
    }
}

#[test]
fn batched_rows_of_unequal_length_match_padded_reference() {
    for name in TINY_MODELS {
        let (model, r) = load(name);
        let padded = r.get("batch.input_ids");
        let mask = r.get("batch.attention_mask");
        let (b, t_max) = (padded.shape[0], padded.shape[1]);
        let mut rows = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..b {
            let m = &mask.i64[i * t_max..(i + 1) * t_max];
            let off = m.iter().position(|&v| v == 1).unwrap();
            offsets.push(off);
            rows.push(padded.ids()[i * t_max + off..(i + 1) * t_max].to_vec());
        }
        assert!(
            rows.windows(2).all(|w| w[0].len() != w[1].len()),
            "rows must differ in length"
        );
        let mut caches: Vec<_> = (0..b).map(|_| model.new_cache()).collect();
        let out = model
            .forward(
                &mut caches,
                &read_everything(Request::tokens(rows.clone()), b, &model),
            )
            .unwrap();
        let v = model.config.vocab_size;
        let h = model.config.hidden_size;
        for i in 0..b {
            for p in 0..rows[i].len() {
                let at = i * t_max + offsets[i] + p;
                assert_close(
                    &format!("{name} row {i} logits[{p}]"),
                    out.logits_at(i, p).unwrap(),
                    &r.get("batch.logits").f32[at * v..(at + 1) * v],
                    TOL,
                );
                for s in all_sites(&model) {
                    assert_close(
                        &format!("{name} row {i} {s}[{p}]"),
                        out.state(s, i, p).unwrap(),
                        &r.get(&ref_name("batch", s)).f32[at * h..(at + 1) * h],
                        TOL,
                    );
                }
            }
        }
    }
}

#[test]
fn prefill_then_incremental_decode_matches() {
    for name in TINY_MODELS {
        let (model, r) = load(name);
        let ids = r.get("single.input_ids").ids();
        let prefill = 5;
        let mut caches = vec![model.new_cache()];
        let out = model
            .forward(
                &mut caches,
                &Request::tokens(vec![ids[..prefill].to_vec()]).logits(LogitsAt::All),
            )
            .unwrap();
        for p in 0..prefill {
            assert_close(
                &format!("{name} prefill logits[{p}]"),
                out.logits_at(0, p).unwrap(),
                r.get("single.logits").row(p),
                TOL,
            );
        }
        for (p, &id) in ids.iter().enumerate().skip(prefill) {
            let req = read_everything(Request::tokens(vec![vec![id]]), 1, &model);
            let out = model.forward(&mut caches, &req).unwrap();
            assert_close(
                &format!("{name} decode logits[{p}]"),
                out.logits_at(0, p).unwrap(),
                r.get("single.logits").row(p),
                TOL,
            );
            for s in all_sites(&model) {
                assert_close(
                    &format!("{name} decode {s}[{p}]"),
                    out.state(s, 0, p).unwrap(),
                    r.get(&ref_name("single", s)).row(p),
                    TOL,
                );
            }
        }
        assert_eq!(caches[0].len(0), ids.len());
    }
}

#[test]
fn writing_back_what_was_read_leaves_logits_bit_identical() {
    let (model, r) = load("tiny-qwen2");
    let ids = r.get("single.input_ids").ids();
    let plain = read_everything(Request::tokens(vec![ids.clone()]), 1, &model);
    let base = model.forward(&mut [model.new_cache()], &plain).unwrap();
    let mut req = Request::tokens(vec![ids.clone()]).logits(LogitsAt::All);
    for s in all_sites(&model) {
        for p in 0..ids.len() {
            req = req.write(
                s,
                0,
                p,
                WriteOp::Replace(base.state(s, 0, p).unwrap().to_vec()),
            );
        }
    }
    let again = model.forward(&mut [model.new_cache()], &req).unwrap();
    for p in 0..ids.len() {
        assert_eq!(
            base.logits_at(0, p).unwrap(),
            again.logits_at(0, p).unwrap(),
            "position {p}"
        );
    }
}

#[test]
fn replace_and_add_writes_match_hooked_transformers() {
    for name in TINY_MODELS {
        let (model, r) = load(name);
        let ids = r.get("single.input_ids").ids();
        let layer = r.json["patch_layer"].as_u64().unwrap() as usize;
        let pos = r.json["patch_pos"].as_u64().unwrap() as usize;
        let v = r.get("patch.vector").f32.clone();
        for (op, key) in [
            (WriteOp::Replace(v.clone()), "patch.logits"),
            (WriteOp::Add(v.clone()), "patch_add.logits"),
        ] {
            let mut req = Request::tokens(vec![ids.clone()])
                .logits(LogitsAt::All)
                .write(Site::BlockOut(layer), 0, pos, op.clone());
            for l in 0..model.num_layers() {
                req = req.read(Site::BlockOut(l), 0, Positions::All);
            }
            let out = model.forward(&mut [model.new_cache()], &req).unwrap();
            for p in 0..ids.len() {
                assert_close(
                    &format!("{name} {key}[{p}]"),
                    out.logits_at(0, p).unwrap(),
                    r.get(key).row(p),
                    TOL,
                );
                if matches!(op, WriteOp::Replace(_)) {
                    for l in 0..model.num_layers() {
                        assert_close(
                            &format!("{name} patched resid_post.{l}[{p}]"),
                            out.state(Site::BlockOut(l), 0, p).unwrap(),
                            r.get(&format!("patch.resid_post.{l}")).row(p),
                            TOL,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn greedy_generation_matches_with_and_without_a_prompt_patch() {
    for name in TINY_MODELS {
        let (model, r) = load(name);
        let ids = r.get("single.input_ids").ids();
        let n = r.json["num_generate"].as_u64().unwrap() as usize;
        let plain = model
            .greedy(
                &mut [model.new_cache()],
                Request::tokens(vec![ids.clone()]),
                n,
            )
            .unwrap();
        assert_eq!(plain[0], r.get("generate.new_tokens").ids(), "{name} plain");
        let layer = r.json["patch_layer"].as_u64().unwrap() as usize;
        let pos = r.json["patch_pos"].as_u64().unwrap() as usize;
        let patch = WriteOp::Replace(r.get("patch.vector").f32.clone());
        let first = Request::tokens(vec![ids.clone()]).write(Site::BlockOut(layer), 0, pos, patch);
        let patched = model.greedy(&mut [model.new_cache()], first, n).unwrap();
        assert_eq!(
            patched[0],
            r.get("generate_patched.new_tokens").ids(),
            "{name} patched"
        );
    }
}

#[test]
fn shared_prefix_cache_serves_many_continuations() {
    let (model, r) = load("tiny-qwen2");
    let ids = r.get("single.input_ids").ids();
    let split = 6;
    let mut prefix = model.new_cache();
    model
        .forward(
            std::slice::from_mut(&mut prefix),
            &Request::tokens(vec![ids[..split].to_vec()]).logits(LogitsAt::None),
        )
        .unwrap();
    let prefix = Arc::new(prefix);
    // three rows continue the same prefix with different lengths, in one batch
    let mut caches: Vec<KvCache> = (0..3).map(|_| prefix.fork_at(split).unwrap()).collect();
    let rows: Vec<Vec<u32>> = (0..3)
        .map(|i| ids[split..split + 2 + 3 * i].to_vec())
        .collect();
    let out = model
        .forward(
            &mut caches,
            &Request::tokens(rows.clone()).logits(LogitsAt::All),
        )
        .unwrap();
    for (i, row) in rows.iter().enumerate() {
        for p in split..split + row.len() {
            assert_close(
                &format!("fork {i} logits[{p}]"),
                out.logits_at(i, p).unwrap(),
                r.get("single.logits").row(p),
                TOL,
            );
        }
    }
    assert_eq!(prefix.len(0), split, "the shared prefix is not modified");
}

#[test]
fn a_pass_can_start_after_any_block_from_given_states() {
    for name in TINY_MODELS {
        let (model, r) = load(name);
        let ids = r.get("single.input_ids").ids();
        let mut full = model.new_cache();
        model
            .forward(
                std::slice::from_mut(&mut full),
                &Request::tokens(vec![ids.clone()]).logits(LogitsAt::None),
            )
            .unwrap();
        let full = Arc::new(full);
        let last = ids.len() - 1;
        let num_layers = model.num_layers();
        let mut starts: Vec<Site> = (0..num_layers).map(Site::BlockOut).collect();
        starts.push(Site::FinalNorm);
        for site in starts {
            // blocks up to the start site keep the last position; later ones recompute it
            let first = site.next_block(num_layers);
            let lens: Vec<usize> = (0..num_layers)
                .map(|l| if l < first { last + 1 } else { last })
                .collect();
            let mut caches = vec![full.fork(&lens).unwrap()];
            let state = r.get(&ref_name("single", site)).row(last).to_vec();
            let req = Request::new(Input::Hidden {
                site,
                rows: vec![HiddenRow {
                    start_pos: last,
                    states: state,
                }],
            });
            let out = model.forward(&mut caches, &req).unwrap();
            assert_close(
                &format!("{name} from {site}"),
                out.logits_at(0, last).unwrap(),
                r.get("single.logits").row(last),
                TOL,
            );
        }
    }
}

/// The Qwen3 fixtures can tell a missing q/k norm or o_proj bias from the real thing: with
/// either left out the logits move far past the parity tolerance (the order of q/k norm and
/// RoPE is covered by the tests above: run after RoPE, they fail, as the mutation in
/// docs/QWEN3.md shows).
#[test]
fn qwen3_fixtures_see_the_qk_norm_and_the_o_proj_bias() {
    let worst = |model: &CpuModel, r: &Reference| {
        let ids = r.get("single.input_ids").ids();
        let req = Request::tokens(vec![ids.clone()]).logits(LogitsAt::All);
        let out = model.forward(&mut [model.new_cache()], &req).unwrap();
        (0..ids.len())
            .map(|p| {
                common::max_abs_diff(out.logits_at(0, p).unwrap(), r.get("single.logits").row(p))
            })
            .fold(0f32, f32::max)
    };
    for name in ["tiny-qwen3", "tiny-qwen3-untied-bias"] {
        let (mut model, r) = load(name);
        assert!(model.config.qk_norm);
        assert!(worst(&model, &r) <= TOL);
        model.config.qk_norm = false;
        let without = worst(&model, &r);
        assert!(without > 100.0 * TOL, "{name} without q/k norm: {without}");
    }
    let (mut model, r) = load("tiny-qwen3-untied-bias");
    for b in &mut model.blocks {
        b.o_proj.b = None;
    }
    let without = worst(&model, &r);
    assert!(without > 100.0 * TOL, "without the o_proj bias: {without}");
}
