//! The whole-model CUDA forward pass (`backend::cuda::CudaModel`) against the CPU pass
//! (`CpuModel::forward`, the reference) on the fixture models tiny-qwen2, tiny-qwen2-untied,
//! tiny-llama, tiny-qwen3 (q/k norm, head_dim 32 != hidden / heads) and
//! tiny-qwen3-untied-bias (q/k/v and o_proj biases).
//!
//! Tolerances:
//! * f32 mode: every logit and every read state within 1e-4 · max(1, max |reference|) of
//!   the CPU value (per tensor: one position's logits, one state vector); KV caches
//!   likewise; greedy generation yields identical token ids.
//! * f16 / bf16 mode (weights, GEMM inputs and KV caches rounded, stream f32): relative
//!   error max |got - want| / max |want| per position <= 1e-2 (f16) / 5e-2 (bf16), for
//!   logits and for the final-norm states; top-1 agreement with the f32 CPU logits >= 99%
//!   counting near-ties (the CPU logit of our pick within the tolerance of the CPU maximum)
//!   as agreement.
//!
//! `qwen2_05b_parity` (ignored; run by tools/gpu-check.sh through tools/gpu_parity.py)
//! compares against transformers on a random model with Qwen2-0.5B's shapes.
//!
//! The GPU tests are ignored tests, so `cargo test` reports them as ignored; run them with
//! `--include-ignored` where a GPU is (tools/gpu-check.sh does), where a missing GPU or a
//! build without kernels fails them. Fixtures are found under
//! $QWEN_SCOPE_FIXTURES when set (a GPU machine running prebuilt binaries), else under
//! the crate's tests/fixtures.

mod common;
use common::{assert_within, fixture, max_abs_diff, TINY_MODELS};

use qwen_scope::backend::cpu::logits::argmax;
use qwen_scope::backend::cuda::{CudaKvCache, CudaModel, DType, Device};
use qwen_scope::Engine;
use qwen_scope::{
    CpuModel, HiddenRow, Input, KvCache, LogitsAt, Output, Positions, Request, Site, WriteOp,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

const F32_TOL: f32 = 1e-4;

// ---- harness ---------------------------------------------------------------------------

fn say(line: &str) {
    // Straight to the process's stderr: libtest captures eprintln! of passing tests.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn load(name: &str) -> CpuModel {
    CpuModel::load(fixture(name).to_str().unwrap(), None).expect("fixture model loads")
}

/// bf16 weights need sm_80+; below that the bf16 mode is refused (tested in
/// `bf16_needs_sm80`) and the bf16 checks are left out, visibly.
fn bf16_ok(dev: &Device, dtype: DType) -> bool {
    let ok = dtype != DType::BF16 || dev.compute_capability().0 >= 8;
    if !ok {
        say(&format!(
            "bf16 checks left out: {} is below sm_80",
            dev.name()
        ));
    }
    ok
}

fn gpu(host: &CpuModel, dev: &Arc<Device>, dtype: DType) -> CudaModel {
    CudaModel::new(host, dev.clone(), dtype).expect("weights upload")
}

/// Deterministic token ids.
fn ids(seed: usize, n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((seed * 7919 + i * 104_729 + 13) % vocab) as u32)
        .collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// |got - want| <= tol · max(1, max |want|) everywhere.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_within(what, got, want, tol * max_abs(want).max(1.0), 0.0);
}

/// GPU and CPU outputs agree in f32: same logits and states, in the same order.
fn assert_outputs(what: &str, got: &Output, want: &Output) {
    assert_eq!(got.logits.len(), want.logits.len(), "{what}: logit count");
    for (g, w) in got.logits.iter().zip(&want.logits) {
        assert_eq!((g.row, g.pos), (w.row, w.pos), "{what}: logits order");
        assert_close(
            &format!("{what}: logits row {} pos {}", w.row, w.pos),
            &g.values,
            &w.values,
            F32_TOL,
        );
    }
    assert_eq!(got.states.len(), want.states.len(), "{what}: state count");
    for (g, w) in got.states.iter().zip(&want.states) {
        assert_eq!(
            (g.site, g.row, g.pos),
            (w.site, w.row, w.pos),
            "{what}: states order"
        );
        assert_close(
            &format!("{what}: state {} row {} pos {}", w.site, w.row, w.pos),
            &g.values,
            &w.values,
            F32_TOL,
        );
    }
}

/// The device caches hold what the CPU caches hold (all positions, every block).
fn assert_caches(what: &str, got: &[CudaKvCache], want: &[KvCache], tol: f32) {
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        for l in 0..w.num_layers() {
            assert_eq!(g.len(l), w.len(l), "{what}: row {r} block {l} length");
            let (gk, gv) = g.keys_values(l).unwrap();
            let segs = w.segments(l, w.len(l));
            let wk: Vec<f32> = segs.iter().flat_map(|s| s.k.iter().copied()).collect();
            let wv: Vec<f32> = segs.iter().flat_map(|s| s.v.iter().copied()).collect();
            assert_close(&format!("{what}: row {r} block {l} keys"), &gk, &wk, tol);
            assert_close(&format!("{what}: row {r} block {l} values"), &gv, &wv, tol);
        }
    }
}

/// Runs `req` on the CPU and the GPU (row r continuing `cc[r]` / `gc[r]`) and checks
/// that the outputs and the caches agree in f32.
fn assert_same_pass(
    what: &str,
    host: &CpuModel,
    m: &CudaModel,
    cc: &mut [KvCache],
    gc: &mut [CudaKvCache],
    req: &Request,
) {
    let want = host.forward(cc, req).unwrap();
    let got = m.forward(gc, req).unwrap();
    assert_outputs(what, &got, &want);
    assert_caches(what, gc, cc, F32_TOL);
}

/// Reads of every site at every position of every row.
fn read_everything(mut req: Request, rows: usize, num_layers: usize) -> Request {
    let sites = std::iter::once(Site::Embed)
        .chain((0..num_layers).map(Site::BlockOut))
        .chain(std::iter::once(Site::FinalNorm));
    for site in sites {
        for r in 0..rows {
            req = req.read(site, r, Positions::All);
        }
    }
    req
}

fn vector(seed: usize, d: usize, scale: f32) -> Vec<f32> {
    (0..d)
        .map(|i| (((seed * 31 + i * 17) % 23) as f32 - 11.0) / 11.0 * scale)
        .collect()
}

// ---- f32 parity ------------------------------------------------------------------------

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn f32_single_prompt_logits_states_and_cache_match_cpu() {
    let dev = common::gpu().clone();
    for name in TINY_MODELS {
        let host = load(name);
        let m = gpu(&host, &dev, DType::F32);
        let c = &host.config;
        let req = read_everything(
            Request::tokens(vec![ids(1, 11, c.vocab_size)]).logits(LogitsAt::All),
            1,
            c.num_layers,
        );
        let mut cc = [host.new_cache()];
        let mut gc = [m.new_cache()];
        assert_same_pass(name, &host, &m, &mut cc, &mut gc, &req);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn f32_batched_unequal_lengths_with_writes_match_cpu() {
    let dev = common::gpu().clone();
    for name in TINY_MODELS {
        let host = load(name);
        let m = gpu(&host, &dev, DType::F32);
        let (v, d, l) = (
            host.config.vocab_size,
            host.config.hidden_size,
            host.config.num_layers,
        );
        let rows: Vec<Vec<u32>> = [5, 1, 9, 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| ids(10 + i, n, v))
            .collect();
        let req = Request::tokens(rows)
            .logits(LogitsAt::At(vec![(2, 8), (0, 0), (1, 0), (2, 3), (3, 2)]))
            .write(Site::Embed, 2, 4, WriteOp::Replace(vector(1, d, 0.5)))
            .write(Site::BlockOut(1), 0, 2, WriteOp::Add(vector(2, d, 2.0)))
            // Two writes to one state compose in request order.
            .write(Site::BlockOut(1), 0, 2, WriteOp::Add(vector(3, d, 1.0)))
            .write(Site::BlockOut(0), 2, 7, WriteOp::Add(vector(4, d, 3.0)))
            .write(Site::BlockOut(0), 2, 7, WriteOp::Replace(vector(5, d, 1.0)))
            .write(Site::FinalNorm, 3, 0, WriteOp::Add(vector(6, d, 1.0)))
            .read(Site::BlockOut(0), 2, Positions::All)
            .read(Site::BlockOut(1), 0, Positions::At(vec![2, 4, 0]))
            .read(Site::BlockOut(l - 1), 1, Positions::Last)
            .read(Site::FinalNorm, 3, Positions::All)
            .read(Site::Embed, 2, Positions::At(vec![4]));
        let mut cc: Vec<KvCache> = (0..4).map(|_| host.new_cache()).collect();
        let mut gc: Vec<CudaKvCache> = (0..4).map(|_| m.new_cache()).collect();
        assert_same_pass(name, &host, &m, &mut cc, &mut gc, &req);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn f32_prefill_then_decode_matches_cpu() {
    let dev = common::gpu().clone();
    for name in TINY_MODELS {
        let host = load(name);
        let m = gpu(&host, &dev, DType::F32);
        let (v, l) = (host.config.vocab_size, host.config.num_layers);
        let mut cc: Vec<KvCache> = (0..3).map(|_| host.new_cache()).collect();
        let mut gc: Vec<CudaKvCache> = (0..3).map(|_| m.new_cache()).collect();
        // Row 0 crosses the initial 16-position capacity during prefill, and again (32)
        // during decode: both growth paths run.
        let prefill = read_everything(
            Request::tokens(vec![ids(20, 20, v), ids(21, 2, v), ids(22, 13, v)])
                .logits(LogitsAt::All),
            3,
            l,
        );
        let want = host.forward(&mut cc, &prefill).unwrap();
        let got = m.forward(&mut gc, &prefill).unwrap();
        assert_outputs(&format!("{name} prefill"), &got, &want);
        for step in 0..14 {
            // Mostly one token per row; every fourth step feeds row 1 three tokens.
            let rows: Vec<Vec<u32>> = (0..3)
                .map(|r| {
                    ids(
                        30 + step * 3 + r,
                        if r == 1 && step % 4 == 3 { 3 } else { 1 },
                        v,
                    )
                })
                .collect();
            let req = Request::tokens(rows)
                .logits(LogitsAt::All)
                .read(Site::BlockOut(l / 2), 1, Positions::All)
                .read(Site::FinalNorm, 0, Positions::Last);
            let want = host.forward(&mut cc, &req).unwrap();
            let got = m.forward(&mut gc, &req).unwrap();
            assert_outputs(&format!("{name} decode step {step}"), &got, &want);
        }
        assert!(gc[0].len(0) > 32);
        assert_caches(name, &gc, &cc, F32_TOL);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn f32_forks_and_hidden_starts_match_cpu() {
    let dev = common::gpu().clone();
    for name in TINY_MODELS {
        let host = load(name);
        let m = gpu(&host, &dev, DType::F32);
        let (v, d, l) = (
            host.config.vocab_size,
            host.config.hidden_size,
            host.config.num_layers,
        );
        // A shared 12-token prefix.
        let mut cp = [host.new_cache()];
        let mut gp = [m.new_cache()];
        let pre = Request::tokens(vec![ids(40, 12, v)]).logits(LogitsAt::None);
        host.forward(&mut cp, &pre).unwrap();
        m.forward(&mut gp, &pre).unwrap();
        let [cp] = cp;
        let [gp] = gp;
        let (cp, gp) = (Arc::new(cp), Arc::new(gp));

        // Token continuations on forks at 12, 5 and 0 positions, next to a fresh cache.
        let mut cc = vec![
            cp.fork_at(12).unwrap(),
            cp.fork_at(5).unwrap(),
            cp.fork_at(0).unwrap(),
            host.new_cache(),
        ];
        let mut gc = vec![
            gp.fork_at(12).unwrap(),
            gp.fork_at(5).unwrap(),
            gp.fork_at(0).unwrap(),
            m.new_cache(),
        ];
        let req = read_everything(
            Request::tokens(vec![
                ids(41, 2, v),
                ids(42, 3, v),
                ids(43, 1, v),
                ids(44, 4, v),
            ])
            .logits(LogitsAt::All)
            .write(Site::BlockOut(0), 1, 6, WriteOp::Add(vector(7, d, 2.0))),
            4,
            l,
        );
        assert_same_pass(&format!("{name} forks"), &host, &m, &mut cc, &mut gc, &req);
        // The prefix is untouched.
        assert_caches(
            &format!("{name} prefix"),
            std::slice::from_ref(&*gp),
            std::slice::from_ref(&*cp),
            F32_TOL,
        );

        // States at BlockOut(0) of another prompt, fed in after block 0 on forks whose
        // later blocks see 7 and 12 positions (block 0 sees fewer: it does not run).
        let src = host
            .forward(
                &mut [host.new_cache()],
                &Request::tokens(vec![ids(45, 3, v)])
                    .logits(LogitsAt::None)
                    .read(Site::BlockOut(0), 0, Positions::All)
                    .read(Site::FinalNorm, 0, Positions::All),
            )
            .unwrap();
        let states = |site: Site| -> Vec<f32> {
            src.states
                .iter()
                .filter(|s| s.site == site)
                .flat_map(|s| s.values.iter().copied())
                .collect()
        };
        let mut lens = vec![7; l];
        lens[0] = 3;
        let mut cc = vec![cp.fork(&lens).unwrap(), cp.fork_at(12).unwrap()];
        let mut gc = vec![gp.fork(&lens).unwrap(), gp.fork_at(12).unwrap()];
        let hidden = states(Site::BlockOut(0));
        let req = read_everything(
            Request::new(Input::Hidden {
                site: Site::BlockOut(0),
                rows: vec![
                    HiddenRow {
                        start_pos: 7,
                        states: hidden.clone(),
                    },
                    HiddenRow {
                        start_pos: 12,
                        states: hidden[..2 * d].to_vec(),
                    },
                ],
            })
            .logits(LogitsAt::All)
            .write(Site::BlockOut(0), 0, 8, WriteOp::Replace(vector(8, d, 1.0))),
            0,
            l,
        )
        .read(Site::BlockOut(0), 0, Positions::All)
        .read(Site::BlockOut(l - 1), 1, Positions::All)
        .read(Site::FinalNorm, 0, Positions::Last);
        assert_same_pass(
            &format!("{name} hidden start"),
            &host,
            &m,
            &mut cc,
            &mut gc,
            &req,
        );

        // A start at the final norm runs no block: logits straight from the states.
        let req = Request::new(Input::Hidden {
            site: Site::FinalNorm,
            rows: vec![HiddenRow {
                start_pos: 0,
                states: states(Site::FinalNorm),
            }],
        })
        .logits(LogitsAt::All)
        .write(Site::FinalNorm, 0, 1, WriteOp::Add(vector(9, d, 0.5)))
        .read(Site::FinalNorm, 0, Positions::All);
        let want = host.forward(&mut [host.new_cache()], &req).unwrap();
        let got = m.forward(&mut [m.new_cache()], &req).unwrap();
        assert_outputs(&format!("{name} final-norm start"), &got, &want);

        // One prefix level only.
        let nested = Arc::new(gp.fork_at(4).unwrap());
        let e = nested.fork_at(2).unwrap_err().to_string();
        assert!(e.contains("one level"), "{e}");
        // Fork errors as on the CPU.
        let err = |r: Result<KvCache, qwen_scope::Error>| r.err().unwrap().to_string();
        assert_eq!(gp.fork_at(13).unwrap_err().to_string(), err(cp.fork_at(13)));
        assert_eq!(gp.fork(&[1]).unwrap_err().to_string(), err(cp.fork(&[1])));
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn f32_patched_greedy_matches_cpu() {
    let dev = common::gpu().clone();
    for name in TINY_MODELS {
        let host = load(name);
        let m = gpu(&host, &dev, DType::F32);
        let (v, d) = (host.config.vocab_size, host.config.hidden_size);
        let source = host
            .forward(
                &mut [host.new_cache()],
                &Request::tokens(vec![ids(50, 6, v)])
                    .logits(LogitsAt::None)
                    .read(Site::BlockOut(1), 0, Positions::Last),
            )
            .unwrap();
        let patch = source.states[0].values.clone();

        let mut cp = [host.new_cache()];
        let mut gp = [m.new_cache()];
        let pre = Request::tokens(vec![ids(51, 8, v)]).logits(LogitsAt::None);
        host.forward(&mut cp, &pre).unwrap();
        m.forward(&mut gp, &pre).unwrap();
        let [cp] = cp;
        let [gp] = gp;
        let (cp, gp) = (Arc::new(cp), Arc::new(gp));
        let first = Request::tokens(vec![ids(52, 1, v), ids(53, 2, v), ids(54, 1, v)])
            .write(Site::BlockOut(1), 0, 8, WriteOp::Replace(patch.clone()))
            .write(Site::Embed, 1, 9, WriteOp::Add(vector(10, d, 1.0)));
        let mut cc: Vec<KvCache> = (0..3).map(|_| cp.fork_at(8).unwrap()).collect();
        let mut gc: Vec<CudaKvCache> = (0..3).map(|_| gp.fork_at(8).unwrap()).collect();
        let want = host.greedy(&mut cc, first.clone(), 12).unwrap();
        let got = m.greedy(&mut gc, first, 12).unwrap();
        assert_eq!(got, want, "{name}: patched greedy tokens");

        // Without forks, and max_new = 0.
        let req = Request::tokens(vec![ids(55, 5, v)]);
        let want = host
            .greedy(&mut [host.new_cache()], req.clone(), 9)
            .unwrap();
        let got = m.greedy(&mut [m.new_cache()], req.clone(), 9).unwrap();
        assert_eq!(got, want, "{name}: greedy tokens");
        assert_eq!(
            m.greedy(&mut [m.new_cache()], req, 0).unwrap(),
            vec![Vec::<u32>::new()]
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn invalid_requests_fail_as_on_the_cpu_and_leave_caches_alone() {
    let dev = common::gpu().clone();
    let host = load("tiny-qwen2");
    let m = gpu(&host, &dev, DType::F32);
    let (v, d) = (host.config.vocab_size, host.config.hidden_size);
    let ok = || Request::tokens(vec![ids(60, 3, v)]);
    let hidden = |site: Site, start_pos: usize, n: usize| {
        Request::new(Input::Hidden {
            site,
            rows: vec![HiddenRow {
                start_pos,
                states: vec![0.5; n],
            }],
        })
    };
    // (what, number of caches, request)
    let cases: Vec<(&str, usize, Request)> = vec![
        ("read row", 1, ok().read(Site::Embed, 1, Positions::All)),
        (
            "write position",
            1,
            ok().write(Site::Embed, 0, 3, WriteOp::Add(vec![0.0; d])),
        ),
        (
            "write size",
            1,
            ok().write(Site::FinalNorm, 0, 0, WriteOp::Replace(vec![0.0; d + 1])),
        ),
        (
            "site range",
            1,
            ok().read(Site::BlockOut(99), 0, Positions::Last),
        ),
        ("token id", 1, Request::tokens(vec![vec![0, v as u32]])),
        ("rows vs caches", 2, ok()),
        ("empty batch", 0, Request::tokens(vec![])),
        ("empty row", 1, Request::tokens(vec![vec![]])),
        ("too long", 1, Request::tokens(vec![ids(61, 129, v)])),
        (
            "read position",
            1,
            ok().read(Site::Embed, 0, Positions::At(vec![5])),
        ),
        ("logits pair", 1, ok().logits(LogitsAt::At(vec![(0, 7)]))),
        (
            "site before start",
            1,
            hidden(Site::BlockOut(2), 0, d).read(Site::BlockOut(0), 0, Positions::All),
        ),
        ("hidden size", 1, hidden(Site::Embed, 0, d + 3)),
        ("hidden start", 1, hidden(Site::BlockOut(0), 3, d)),
        ("hidden site", 1, hidden(Site::BlockOut(4), 0, d)),
    ];
    for (what, rows, req) in cases {
        let mut cc: Vec<KvCache> = (0..rows).map(|_| host.new_cache()).collect();
        let mut gc: Vec<CudaKvCache> = (0..rows).map(|_| m.new_cache()).collect();
        let want = host.forward(&mut cc, &req).unwrap_err().to_string();
        let got = m.forward(&mut gc, &req).unwrap_err().to_string();
        assert_eq!(got, want, "{what}");
        assert!(gc.iter().all(|c| c.is_empty()), "{what}: cache changed");
    }
    // A cache of another dtype is refused.
    let half = gpu(&host, &dev, DType::F16);
    let e = m
        .forward(&mut [half.new_cache()], &ok())
        .unwrap_err()
        .to_string();
    assert!(e.contains("f16"), "{e}");
}

// ---- f16 / bf16 ------------------------------------------------------------------------

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn bf16_needs_sm80() {
    let dev = common::gpu().clone();
    let made = CudaModel::new(&load("tiny-llama"), dev.clone(), DType::BF16);
    match (dev.compute_capability().0 >= 8, made) {
        (true, r) => assert!(r.is_ok(), "bf16 refused on {}", dev.name()),
        (false, Ok(_)) => panic!("bf16 accepted on {} (below sm_80)", dev.name()),
        (false, Err(e)) => assert!(e.to_string().contains("sm_80"), "{e}"),
    }
}

/// (max relative error, strict top-1 agreement, top-1 agreement counting near-ties).
fn half_metrics(got: &Output, want: &Output, tol: f32) -> (f32, f32, f32) {
    let (mut rel, mut strict, mut loose) = (0.0f32, 0usize, 0usize);
    for (g, w) in got.logits.iter().zip(&want.logits) {
        assert_eq!((g.row, g.pos), (w.row, w.pos));
        let scale = max_abs(&w.values).max(f32::MIN_POSITIVE);
        rel = rel.max(max_abs_diff(&g.values, &w.values) / scale);
        let (gt, wt) = (argmax(&g.values), argmax(&w.values));
        strict += (gt == wt) as usize;
        loose += (gt == wt || w.values[wt] - w.values[gt] <= tol * scale) as usize;
    }
    let n = want.logits.len().max(1) as f32;
    (rel, strict as f32 / n, loose as f32 / n)
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn half_modes_track_the_f32_cpu_pass() {
    let dev = common::gpu().clone();
    for name in TINY_MODELS {
        let host = load(name);
        let (v, l) = (host.config.vocab_size, host.config.num_layers);
        let rows = vec![ids(70, 7, v), ids(71, 3, v), ids(72, 12, v)];
        let req = Request::tokens(rows)
            .logits(LogitsAt::All)
            .read(Site::FinalNorm, 0, Positions::All)
            .read(Site::FinalNorm, 2, Positions::All)
            .read(Site::BlockOut(l - 1), 1, Positions::All);
        let want = host
            .forward(
                &mut (0..3).map(|_| host.new_cache()).collect::<Vec<_>>(),
                &req,
            )
            .unwrap();
        for (dtype, tol) in [(DType::F16, 1e-2f32), (DType::BF16, 5e-2)] {
            if !bf16_ok(&dev, dtype) {
                continue;
            }
            let m = gpu(&host, &dev, dtype);
            let mut gc: Vec<CudaKvCache> = (0..3).map(|_| m.new_cache()).collect();
            let got = m.forward(&mut gc, &req).unwrap();
            let (rel, strict, loose) = half_metrics(&got, &want, tol);
            let mut state_rel = 0.0f32;
            for (g, w) in got.states.iter().zip(&want.states) {
                assert_eq!((g.site, g.row, g.pos), (w.site, w.row, w.pos));
                let scale = max_abs(&w.values).max(f32::MIN_POSITIVE);
                state_rel = state_rel.max(max_abs_diff(&g.values, &w.values) / scale);
            }
            say(&format!(
                "{name} {}: logits rel err {rel:.2e}, states rel err {state_rel:.2e}, top-1 \
                 {:.1}% ({:.1}% with near-ties), tolerance {tol:e}",
                dtype.suffix(),
                100.0 * strict,
                100.0 * loose
            ));
            assert!(
                rel <= tol,
                "{name} {dtype:?}: logits rel err {rel:e} > {tol:e}"
            );
            assert!(
                state_rel <= tol,
                "{name} {dtype:?}: states rel err {state_rel:e} > {tol:e}"
            );
            assert!(loose >= 0.99, "{name} {dtype:?}: top-1 agreement {loose}");
            // The caches hold the rounded keys/values: close to the CPU's f32 ones.
            let mut cc: Vec<KvCache> = (0..3).map(|_| host.new_cache()).collect();
            host.forward(&mut cc, &req).unwrap();
            assert_caches(&format!("{name} {dtype:?}"), &gc, &cc, 4.0 * tol);
            // Generation runs and starts like the f32 pass where that is not a near tie.
            let g = m
                .greedy(
                    &mut [m.new_cache()],
                    Request::tokens(vec![ids(73, 4, v)]),
                    5,
                )
                .unwrap();
            assert_eq!(g[0].len(), 5);
        }
    }
}

/// Rows joining one pass at their own sites (embedding, block outputs, final norm), over
/// forks of a shared prefix, with a read at every row's final norm.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn f32_joining_pass_matches_cpu() {
    let dev = common::gpu().clone();
    for name in TINY_MODELS {
        let host = load(name);
        let m = gpu(&host, &dev, DType::F32);
        let (v, d, l) = (
            host.config.vocab_size,
            host.config.hidden_size,
            host.config.num_layers,
        );
        let prompt = Request::tokens(vec![ids(80, 9, v)]).logits(LogitsAt::None);
        let mut hp = host.new_cache();
        host.forward(std::slice::from_mut(&mut hp), &prompt)
            .unwrap();
        let mut gp = m.new_cache();
        m.forward(std::slice::from_mut(&mut gp), &prompt).unwrap();
        let (hp, gp) = (Arc::new(hp), Arc::new(gp));
        let sites = [
            Site::Embed,
            Site::BlockOut(0),
            Site::BlockOut(0),
            Site::BlockOut(l - 1),
            Site::FinalNorm,
        ];
        let rows: Vec<(Site, HiddenRow)> = sites
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let row = HiddenRow {
                    start_pos: 8,
                    states: [vector(90 + i, d, 1.0), vector(95 + i, d, 1.0)].concat(),
                };
                (s, row)
            })
            .collect();
        let req = (0..sites.len()).fold(
            Request::new(Input::Joining(rows)).logits(LogitsAt::All),
            |r, row| r.read(Site::FinalNorm, row, Positions::All),
        );
        let mut hc: Vec<KvCache> = (0..sites.len())
            .map(|_| KvCache::fork_at(&hp, 8).unwrap())
            .collect();
        let mut gc: Vec<CudaKvCache> = (0..sites.len())
            .map(|_| CudaKvCache::fork_at(&gp, 8).unwrap())
            .collect();
        assert_same_pass(
            &format!("{name} joining"),
            &host,
            &m,
            &mut hc,
            &mut gc,
            &req,
        );
    }
}

// ---- the patchscope layer on the GPU -----------------------------------------------------

/// The next-token sweep (fast path: shared target prefix, forks, hidden starts, batched
/// cells) and a patched generation run on the GPU give the CPU's results: the same
/// predictions in every cell and surprisals within 1e-3 in f32.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored where one is"]
fn f32_patchscopes_match_cpu() {
    use qwen_scope::patchscope::next_token::{fit_tuned_lens, lens_rows, run_sources, NextToken};
    use qwen_scope::patchscope::{target::Target, TOKEN_IDENTITY_PROMPT};
    let dev = common::gpu().clone();
    let prompts = [
        "The old lighthouse keeper counted the ships every night.",
        "Fresh bread smells best early in the morning.",
        "In 1969, two astronauts walked on the Moon.",
        "Rivers carry sand and stones down to the sea.",
        "A prime number has exactly two divisors.",
    ];
    for name in TINY_MODELS {
        let host = load(name);
        let m = gpu(&host, &dev, DType::F32);
        let encoded: Vec<(usize, Vec<u32>)> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| (i, host.tokenizer.encode(p).unwrap()))
            .collect();
        let (train, val) = encoded.split_at(2);
        let tuned = fit_tuned_lens(&lens_rows(&host, train, 5, true).unwrap()).unwrap();
        let run = |cpu: bool| {
            if cpu {
                let nt = NextToken::new(&host, TOKEN_IDENTITY_PROMPT, tuned.clone(), true).unwrap();
                nt.evaluate(&run_sources(&host, val, 5).unwrap()).unwrap()
            } else {
                let nt = NextToken::new(&m, TOKEN_IDENTITY_PROMPT, tuned.clone(), true).unwrap();
                nt.evaluate(&run_sources(&m, val, 5).unwrap()).unwrap()
            }
        };
        let (want, got) = (run(true), run(false));
        let mut cells = 0;
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.position, g.source_top1), (w.position, w.source_top1));
            let pairs = g
                .token_identity
                .iter()
                .flatten()
                .zip(w.token_identity.iter().flatten())
                .chain(g.logit_lens.iter().zip(&w.logit_lens))
                .chain(g.tuned_lens.iter().zip(&w.tuned_lens));
            for (a, b) in pairs {
                assert_eq!(a.pred, b.pred, "{name} sample {}", g.index);
                assert!(
                    (a.surprisal - b.surprisal).abs() <= 1e-3,
                    "{name} sample {}: surprisal {} vs {}",
                    g.index,
                    a.surprisal,
                    b.surprisal
                );
                cells += 1;
            }
        }
        // a patched generation from the shared target, as the attribute experiment runs it
        let tokens = host
            .tokenizer
            .encode("Syria: Syria; leaf: leaf; x")
            .unwrap();
        let pos = tokens.len() - 1;
        let states = vec![vector(3, host.config.hidden_size, 2.0); 2];
        let site = Site::BlockOut(1);
        let cpu = Target::new(&host, tokens.clone(), pos)
            .and_then(|t| t.generate(&host, site, states.clone(), 6))
            .unwrap();
        let dev_gen = Target::new(&m, tokens, pos)
            .and_then(|t| t.generate(&m, site, states, 6))
            .unwrap();
        assert_eq!(dev_gen, cpu, "{name}: patched generation");
        say(&format!(
            "{name}: {cells} sweep cells and a patched generation equal the CPU's"
        ));
    }
}

// ---- transformers parity on Qwen2-0.5B shapes (tools/gpu_parity.py) --------------------

/// Tensors of a safetensors file as f32 (F32 and I64 only), with shapes.
fn read_safetensors(path: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    use safetensors::{Dtype, SafeTensors};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let data = t.data();
            let values = match t.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (name, (t.shape().to_vec(), values))
        })
        .collect()
}

/// Per-position relative error (max over positions) and top-1 agreements of `got` logits
/// against the reference tensor [rows, seq, vocab].
fn logit_metrics(
    got: &Output,
    want: &[f32],
    seq: usize,
    vocab: usize,
    tol: f32,
) -> (f32, f32, f32) {
    let (mut rel, mut strict, mut loose) = (0.0f32, 0usize, 0usize);
    for l in &got.logits {
        let w = &want[(l.row * seq + l.pos) * vocab..][..vocab];
        let scale = max_abs(w).max(f32::MIN_POSITIVE);
        rel = rel.max(max_abs_diff(&l.values, w) / scale);
        let (gt, wt) = (argmax(&l.values), argmax(w));
        strict += (gt == wt) as usize;
        loose += (gt == wt || w[wt] - w[gt] <= tol * scale) as usize;
    }
    let n = got.logits.len().max(1) as f32;
    (rel, strict as f32 / n, loose as f32 / n)
}

/// Worst per-position relative error of the read states against transformers'
/// `hidden_states` (the sites that have an index there), and the worst site.
fn state_metrics(
    got: &Output,
    refs: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    prefix: &str,
    seq: usize,
    num_layers: usize,
) -> (f32, String) {
    let (mut worst, mut at, mut compared) = (0.0f32, String::new(), 0usize);
    for s in &got.states {
        let Some(i) = s.site.hf_hidden_states_index(num_layers) else {
            continue;
        };
        let Some((_, w)) = refs.get(&format!("{prefix}.hidden.{i}")) else {
            continue;
        };
        let d = s.values.len();
        let w = &w[(s.row * seq + s.pos) * d..][..d];
        let r = max_abs_diff(&s.values, w) / max_abs(w).max(f32::MIN_POSITIVE);
        compared += 1;
        if r > worst {
            (worst, at) = (r, s.site.to_string());
        }
    }
    if compared == 0 {
        return (f32::NAN, "-".into());
    }
    (worst, at)
}

#[test]
#[ignore = "needs QWEN_SCOPE_PARITY_MODEL and QWEN_SCOPE_PARITY_REF: run tools/gpu-check.sh"]
fn qwen2_05b_parity() {
    let test = "qwen2_05b_parity";
    // Asked for by name (it is ignored otherwise), so a missing input fails: a test that
    // did nothing must not count as passed.
    let (Ok(model_dir), Ok(ref_path)) = (
        std::env::var("QWEN_SCOPE_PARITY_MODEL"),
        std::env::var("QWEN_SCOPE_PARITY_REF"),
    ) else {
        panic!(
            "{test} needs QWEN_SCOPE_PARITY_MODEL and QWEN_SCOPE_PARITY_REF (a transformers \
             reference made with torch on the GPU): run it through tools/gpu_parity.py, or \
             leave it out with --skip {test}"
        );
    };
    let dev = common::gpu().clone();
    let t0 = Instant::now();
    let refs = read_safetensors(&ref_path);
    let host = CpuModel::load(&model_dir, None).expect("model loads");
    let (l, vocab) = (host.config.num_layers, host.config.vocab_size);
    say(&format!(
        "{test}: {} on {} (sm_{}{}), host load {:.1} s",
        model_dir,
        dev.name(),
        dev.compute_capability().0,
        dev.compute_capability().1,
        t0.elapsed().as_secs_f32()
    ));
    let (shape, ids) = &refs["input_ids"];
    let (rows, seq) = (shape[0], shape[1]);
    let prompts: Vec<Vec<u32>> = ids
        .chunks(seq)
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect();
    let req = read_everything(Request::tokens(prompts).logits(LogitsAt::All), rows, l);
    let f32_ref = &refs["f32.logits"].1;

    let mut table: Vec<String> = vec![format!(
        "{:<10} {:<10} {:>12} {:>8} {:>10} {:>12} {:>14} {:>8}",
        "ours", "vs", "logits rel", "top-1", "near-tie", "states rel", "worst site", "time s"
    )];
    let mut row = |ours: &str, vs: &str, m: (f32, f32, f32), s: (f32, String), t: f32| {
        table.push(format!(
            "{ours:<10} {vs:<10} {:>12.3e} {:>7.1}% {:>9.1}% {:>12.3e} {:>14} {t:>8.2}",
            m.0,
            100.0 * m.1,
            100.0 * m.2,
            s.0,
            s.1
        ));
    };
    let mut failures = Vec::new();

    // Our CPU pass, for context (its own parity is tests/parity.rs).
    let t = Instant::now();
    let cpu = host
        .forward(
            &mut (0..rows).map(|_| host.new_cache()).collect::<Vec<_>>(),
            &req,
        )
        .unwrap();
    let m = logit_metrics(&cpu, f32_ref, seq, vocab, 1e-3);
    let s = state_metrics(&cpu, &refs, "f32", seq, l);
    row("cpu f32", "hf f32", m, s, t.elapsed().as_secs_f32());

    // transformers in half precision against itself in f32: the baseline for ours.
    let mut baseline = HashMap::new();
    for dt in ["bf16", "f16"] {
        if let Some((_, hl)) = refs.get(&format!("{dt}.logits")) {
            let mut rel = 0.0f32;
            let (mut strict, mut loose) = (0usize, 0usize);
            for p in 0..rows * seq {
                let (g, w) = (&hl[p * vocab..][..vocab], &f32_ref[p * vocab..][..vocab]);
                let scale = max_abs(w).max(f32::MIN_POSITIVE);
                rel = rel.max(max_abs_diff(g, w) / scale);
                let (gt, wt) = (argmax(g), argmax(w));
                strict += (gt == wt) as usize;
                loose += (gt == wt || w[wt] - w[gt] <= 2e-2 * scale) as usize;
            }
            let n = (rows * seq) as f32;
            baseline.insert(dt, rel);
            row(
                &format!("hf {dt}"),
                "hf f32",
                (rel, strict as f32 / n, loose as f32 / n),
                (f32::NAN, "-".into()),
                0.0,
            );
        }
    }

    for (dtype, name) in [
        (DType::F32, "f32"),
        (DType::BF16, "bf16"),
        (DType::F16, "f16"),
    ] {
        if dtype != DType::F32 && !refs.contains_key(&format!("{name}.logits"))
            || !bf16_ok(&dev, dtype)
        {
            continue;
        }
        let t = Instant::now();
        let m = CudaModel::new(&host, dev.clone(), dtype).expect("upload");
        let upload = t.elapsed().as_secs_f32();
        // Once to warm up (cuBLAS init, first launches), once timed.
        let mut caches: Vec<CudaKvCache> = (0..rows).map(|_| m.new_cache()).collect();
        m.forward(&mut caches, &req).unwrap();
        let t = Instant::now();
        let mut caches: Vec<CudaKvCache> = (0..rows).map(|_| m.new_cache()).collect();
        let out = m.forward(&mut caches, &req).unwrap();
        let secs = t.elapsed().as_secs_f32();
        say(&format!(
            "{test}: cuda {name}: upload {upload:.1} s, forward {secs:.3} s"
        ));
        let ours = format!("cuda {name}");
        if dtype == DType::F32 {
            let lm = logit_metrics(&out, f32_ref, seq, vocab, 1e-3);
            let sm = state_metrics(&out, &refs, "f32", seq, l);
            if lm.0 > 1e-3 {
                failures.push(format!("cuda f32 logits rel err {:.3e} > 1e-3", lm.0));
            }
            if sm.0 > 1e-3 {
                failures.push(format!(
                    "cuda f32 states rel err {:.3e} > 1e-3 at {}",
                    sm.0, sm.1
                ));
            }
            if lm.2 < 0.99 {
                failures.push(format!("cuda f32 top-1 agreement {:.3} < 0.99", lm.2));
            }
            row(&ours, "hf f32", lm, sm, secs);
        } else {
            let tol = 2e-2f32.max(1.25 * baseline.get(name).copied().unwrap_or(0.0));
            let vs32 = logit_metrics(&out, f32_ref, seq, vocab, 2e-2);
            let s32 = state_metrics(&out, &refs, "f32", seq, l);
            row(&ours, "hf f32", vs32, s32, secs);
            let same = logit_metrics(&out, &refs[&format!("{name}.logits")].1, seq, vocab, 2e-2);
            let ssame = state_metrics(&out, &refs, name, seq, l);
            row(&ours, &format!("hf {name}"), same, ssame, secs);
            if vs32.0 > tol {
                failures.push(format!(
                    "cuda {name} logits rel err vs hf f32 {:.3e} > {tol:.3e}",
                    vs32.0
                ));
            }
            if vs32.2 < 0.99 {
                failures.push(format!(
                    "cuda {name} top-1 agreement with hf f32 {:.3} < 0.99",
                    vs32.2
                ));
            }
        }
    }
    for line in &table {
        say(line);
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}
