//! Attribute extraction against tools/reference_attributes.py (transformers, hooks, HF
//! generate, the official rules): baselines, which rows are evaluated, and every cell's
//! generated text and correctness (tests/fixtures/attributes), on the tiny fixture and on
//! the converted Qwen2.5-Coder-0.5B. Dropping the patch from the KV cache changes the
//! tokens after the first; breaking the final-layer rule changes the last-layer cells.
//! On data/relations/cities.json, whose template starts with its slot, the reference writes
//! the default prompts (demonstrations) with its own code: every row's target, source and
//! demonstrations must equal ours, and the answer-line rule decides `correct` on both
//! sides.

mod common;

use qwen_scope::patchscope::attributes::Attributes;
use qwen_scope::patchscope::demonstrations::{
    Demonstration, Demonstrations, DEFAULT_K, DEFAULT_SEED,
};
use qwen_scope::patchscope::relations::load_relation;
use qwen_scope::CpuModel;

fn compare_with_transformers(model: &CpuModel, reference: &str, relation: &str) {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("attributes").join(reference)).unwrap(),
    )
    .unwrap();
    let settings = &r["settings"];
    let layers = |k: &str| -> Vec<usize> {
        settings[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    };
    let exp = Attributes::new(
        model,
        layers("source_layers"),
        layers("target_layers"),
        settings["max_new"].as_u64().unwrap() as usize,
        settings["only_correct"].as_bool().unwrap(),
    );
    // older fixtures predate demonstrations: their relation has target_templates
    let demonstrations = Demonstrations {
        k: settings["demonstrations"]
            .as_u64()
            .map_or(DEFAULT_K, |k| k as usize),
        seed: settings["demo_seed"].as_u64().unwrap_or(DEFAULT_SEED),
    };
    let relation = load_relation(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relation),
        None,
        demonstrations,
    )
    .unwrap();
    let limit = settings["limit"].as_u64().unwrap() as usize;
    let rows: Vec<_> = relation.rows.iter().take(limit).enumerate().collect();
    // in two batches, so that rows of one batch share generations and baselines
    let mid = rows.len() / 2;
    let mut ours = exp.evaluate(&rows[..mid]).unwrap();
    ours.extend(exp.evaluate(&rows[mid..]).unwrap());
    let want = r["rows"].as_array().unwrap();
    assert_eq!(ours.len(), want.len());
    // the prompts, built by each side's own code
    for ((_, row), w) in rows.iter().zip(want) {
        let what = format!("{reference} line {} ({})", row.line, row.subject);
        assert_eq!(row.target, w["target"].as_str().unwrap(), "{what}: target");
        assert_eq!(row.source, w["source"].as_str().unwrap(), "{what}: source");
        let demos: Vec<Demonstration> =
            serde_json::from_value(w.get("demonstrations").cloned().unwrap_or_default())
                .unwrap_or_default();
        assert_eq!(row.demonstrations, demos, "{what}: demonstrations");
    }
    let (mut cells, mut near_ties) = (0, 0);
    for (o, w) in ours.iter().zip(want) {
        let what = format!("{reference} row {} ({})", o.row, o.subject);
        assert_eq!(o.row as u64, w["row"].as_u64().unwrap(), "{what}");
        assert_eq!(
            o.baseline,
            w["baseline"].as_str().unwrap(),
            "{what}: baseline"
        );
        assert_eq!(
            o.baseline_correct,
            w["baseline_correct"].as_bool().unwrap(),
            "{what}"
        );
        assert_eq!(o.evaluated, w["evaluated"].as_bool().unwrap(), "{what}");
        if !o.evaluated {
            continue;
        }
        for (si, (gens, corrects)) in o.generations.iter().zip(&o.correct).enumerate() {
            for (ti, (g, c)) in gens.iter().zip(corrects).enumerate() {
                cells += 1;
                let want_g = w["generations"][si][ti].as_str().unwrap();
                if g == want_g {
                    assert_eq!(*c, w["correct"][si][ti].as_bool().unwrap(), "{what}");
                    continue;
                }
                // two f32 implementations may break a float near-tie differently
                let min_margin = w["margins"][si][ti]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_f64().unwrap())
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    min_margin < 1e-3,
                    "{what}, cell ({si}, {ti}): {g:?} vs transformers {want_g:?}"
                );
                near_ties += 1;
            }
        }
    }
    eprintln!("{reference}: {cells} cells equal ({near_ties} differ at a float near-tie)");
    assert!(cells > 0, "no cell was compared");
    assert!(
        near_ties * 100 <= cells,
        "{near_ties} near-ties in {cells} cells"
    );
}

#[test]
fn attributes_equal_the_transformers_reference_on_the_fixture() {
    let model = CpuModel::load(common::fixture("tiny-qwen2").to_str().unwrap(), None).unwrap();
    compare_with_transformers(&model, "tiny-qwen2.json", "data/relations/capitals.json");
}

#[test]
fn demonstration_prompts_equal_the_transformers_reference_on_the_fixture() {
    let model = CpuModel::load(common::fixture("tiny-qwen2").to_str().unwrap(), None).unwrap();
    compare_with_transformers(
        &model,
        "tiny-qwen2-cities.json",
        "data/relations/cities.json",
    );
}

#[test]
fn attributes_equal_the_transformers_reference_on_the_qwen3_fixture() {
    let model = CpuModel::load(common::fixture("tiny-qwen3").to_str().unwrap(), None).unwrap();
    compare_with_transformers(&model, "tiny-qwen3.json", "data/relations/capitals.json");
}

#[test]
fn qwen2_5_coder_0_5b_attributes_equal_the_transformers_reference() {
    let dir = common::real_model_dir("qwen2.5-coder-0.5b");
    let model = CpuModel::load(dir.to_str().unwrap(), None).unwrap();
    compare_with_transformers(
        &model,
        "qwen2.5-coder-0.5b.json",
        "data/relations/capitals.json",
    );
}

#[test]
fn qwen2_5_coder_0_5b_demonstration_prompts_equal_the_transformers_reference() {
    let dir = common::real_model_dir("qwen2.5-coder-0.5b");
    let model = CpuModel::load(dir.to_str().unwrap(), None).unwrap();
    compare_with_transformers(
        &model,
        "qwen2.5-coder-0.5b-cities.json",
        "data/relations/cities.json",
    );
}
