//! `Input::Joining`: rows entering one pass at their own sites give what separate passes
//! from each site give, and malformed joins are refused.

mod common;

use qwen_scope::Engine;
use qwen_scope::{CpuModel, HiddenRow, Input, KvCache, LogitsAt, Positions, Request, Site};
use std::sync::Arc;

fn load() -> CpuModel {
    CpuModel::load(common::fixture("tiny-qwen2").to_str().unwrap(), None).unwrap()
}

/// A prompt's cache and the states at every site of its last position.
fn prompt(model: &CpuModel) -> (Arc<KvCache>, Vec<u32>) {
    let ids = model.tokenizer.encode("The quick brown fox jumps").unwrap();
    let mut cache = model.new_cache();
    model
        .forward(
            std::slice::from_mut(&mut cache),
            &Request::tokens(vec![ids[..ids.len() - 1].to_vec()]).logits(LogitsAt::None),
        )
        .unwrap();
    (Arc::new(cache), ids)
}

fn state(seed: usize, d: usize) -> Vec<f32> {
    (0..d)
        .map(|i| ((i * 37 + seed * 11) % 23) as f32 / 23.0 - 0.5)
        .collect()
}

#[test]
fn one_joining_pass_equals_a_pass_per_site() {
    let model = load();
    let (d, l) = (model.config.hidden_size, model.config.num_layers);
    let (prefix, ids) = prompt(&model);
    let pos = ids.len() - 1;
    let sites = [
        Site::Embed,
        Site::BlockOut(0),
        Site::BlockOut(0),
        Site::BlockOut(2),
        Site::BlockOut(l - 1),
        Site::FinalNorm,
    ];
    let rows: Vec<(Site, HiddenRow)> = sites
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let row = HiddenRow {
                start_pos: pos,
                states: state(i, d),
            };
            (s, row)
        })
        .collect();
    let forks = || {
        (0..sites.len())
            .map(|_| KvCache::fork_at(&prefix, pos).unwrap())
            .collect::<Vec<_>>()
    };
    let mut req = Request::new(Input::Joining(rows.clone())).logits(LogitsAt::Last);
    for r in 0..sites.len() {
        req = req.read(Site::FinalNorm, r, Positions::Last);
    }
    let joined = model.forward(&mut forks(), &req).unwrap();
    for (r, (site, row)) in rows.into_iter().enumerate() {
        let alone = model
            .forward(
                &mut forks()[..1],
                &Request::new(Input::Hidden {
                    site,
                    rows: vec![row],
                })
                .read(Site::FinalNorm, 0, Positions::Last),
            )
            .unwrap();
        let (got, want) = (
            joined.last_logits(r).unwrap(),
            alone.last_logits(0).unwrap(),
        );
        common::assert_close(&format!("row {r} at {site}: logits"), got, want, 1e-5);
        let (got, want) = (
            joined.state(Site::FinalNorm, r, pos).unwrap(),
            alone.state(Site::FinalNorm, 0, pos).unwrap(),
        );
        common::assert_close(&format!("row {r} at {site}: final norm"), got, want, 1e-5);
    }
}

#[test]
fn malformed_joins_are_refused() {
    let model = load();
    let d = model.config.hidden_size;
    let (prefix, ids) = prompt(&model);
    let pos = ids.len() - 1;
    let row = |site: Site| {
        (
            site,
            HiddenRow {
                start_pos: pos,
                states: state(0, d),
            },
        )
    };
    let forks = || vec![KvCache::fork_at(&prefix, pos).unwrap(); 2];
    let err = |req: Request| model.forward(&mut forks(), &req).unwrap_err().to_string();
    let e = err(Request::new(Input::Joining(vec![
        row(Site::BlockOut(2)),
        row(Site::BlockOut(1)),
    ])));
    assert!(e.contains("joining rows must be in pass order"), "{e}");
    let e = err(Request::new(Input::Joining(vec![
        row(Site::Embed),
        row(Site::BlockOut(2)),
    ]))
    .read(Site::BlockOut(1), 1, Positions::Last));
    assert!(
        e.contains("comes before resid_post.2, where row 1 starts"),
        "{e}"
    );
    let e = err(Request::new(Input::Joining(vec![
        row(Site::Embed),
        row(Site::BlockOut(9)),
    ])));
    assert!(e.contains("out of range"), "{e}");
}
