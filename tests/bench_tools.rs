//! The benchmark scripts never print a ratio over no work (tools/bench_ratio.py): run on
//! the files a benchmark writes, made here by hand, with python3 (standard library only).
//! A relation the model does not know has no row evaluated, hence no cell timed: the
//! comparison says so, names what to change, and exits with status 3.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools")
}

/// (exit status, stdout + stderr) of `python3 tools/<script> args...`.
fn python(script: &str, args: &[&Path]) -> (i32, String) {
    let out = Command::new("python3")
        .arg(tools().join(script))
        .args(args)
        .output()
        .expect("python3 runs (the benchmark scripts need it)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().expect("exited"), text)
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// What tools/bench_attributes.sh leaves in OUT: qwen-scope's stderr and rows, and the
/// PyTorch reference's JSON, for one relation of two rows, `known` of them known
/// unpatched (and evaluated, one cell each).
fn attributes_run(dir: &Path, known: usize, qs_secs: f64, torch_secs: f64) {
    let row = |i: usize| {
        let k = i < known;
        let cells = if k { r#"[["Paris"]]"# } else { "[]" };
        format!(
            r#"{{"relation":"r","row":{i},"line":{},"subject":"s","object":"Paris","baseline":"Paris","baseline_correct":{k},"evaluated":{k},"correct":{},"generations":{cells},"margins":{}}}"#,
            i + 1,
            if k { "[[true]]" } else { "[]" },
            if k { "[[[1.0]]]" } else { "[]" },
        )
    };
    let rows: Vec<String> = (0..2).map(row).collect();
    write(dir, "qs/rows.jsonl", &(rows.join("\n") + "\n"));
    write(
        dir,
        "qs.stderr",
        &format!("evaluated 2 rows ({known} cells, baselines and source passes included) in {qs_secs}s: 0.00 cells/s\n"),
    );
    write(
        dir,
        "torch.json",
        &format!(
            r#"{{"timing": {{"cells": {known}, "wall_s": {torch_secs}}}, "rows": [{}]}}"#,
            rows.join(",")
        ),
    );
}

#[test]
fn bench_attributes_refuses_a_ratio_when_no_row_is_known() {
    let dir = tempfile::tempdir().unwrap();
    attributes_run(dir.path(), 0, 0.5, 4.4);
    // before the PyTorch side runs
    let (code, text) = python(
        "bench_attributes_compare.py",
        &[dir.path(), Path::new("8"), Path::new("--qwen-scope-only")],
    );
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("qwen-scope evaluated 0 cells (no row known unpatched in the first 8 rows of r (0 of 2 rows known); raise LIMIT"),
        "{text}"
    );
    assert!(!text.contains("qwen-scope speed-up"), "{text}");
    // and after it, were it run anyway
    let (code, text) = python("bench_attributes_compare.py", &[dir.path(), Path::new("8")]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("no speed-up: qwen-scope did no work (0 cells); PyTorch did no work (0 cells) (no row known unpatched"), "{text}");
    assert!(!text.contains("qwen-scope speed-up"), "{text}");
}

#[test]
fn bench_attributes_prints_the_ratio_over_the_same_work() {
    let dir = tempfile::tempdir().unwrap();
    attributes_run(dir.path(), 1, 0.5, 2.0);
    let (code, text) = python(
        "bench_attributes_compare.py",
        &[dir.path(), Path::new("8"), Path::new("--qwen-scope-only")],
    );
    assert_eq!((code, text.as_str()), (0, ""));
    let (code, text) = python("bench_attributes_compare.py", &[dir.path(), Path::new("8")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("cells: 1 (1 equal generations"), "{text}");
    assert!(text.contains("qwen-scope speed-up: 4.00x"), "{text}");
}

#[test]
fn bench_compare_refuses_a_ratio_over_no_token_identity_cell() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "sweep.stderr",
        "evaluated 0 samples (0 cells) in 0.0s: 0.0 cells/s\ntoken identity alone: 0 cells in 0.00s\n",
    );
    write(
        d,
        "sweep/samples.csv",
        "index,position,method,source_layer,target_layer,pred\n",
    );
    write(d, "bench.stdout", "prefill  1 x 32 tokens:     0.00 ms\n");
    write(
        d,
        "torch.json",
        r#"{"num_layers": 2, "samples": [], "mismatches": [], "threads": 2, "attn": "sdpa",
            "versions": {"torch": "2", "transformers": "5"},
            "ways": {"per-cell": {"way": "a", "seconds": 0.0, "cells": 0, "cells_per_s": 0.0,
                                  "pred": [], "margin": []}},
            "forward": [{"batch": 1, "tokens": 32, "decode": 0, "prefill_ms": 5.0}]}"#,
    );
    let (code, text) = python("bench_compare.py", &[d, Path::new("0")]);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("no speed-up: qwen-scope timed 0 token-identity cells"),
        "{text}"
    );
}

#[test]
fn bench_ratio_refuses_zero_work_zero_time_and_unequal_work() {
    let p = |args: &[&str]| {
        let args: Vec<&Path> = args.iter().map(Path::new).collect();
        python("bench_ratio.py", &args)
    };
    let (code, text) = p(&["0", "4.4", "0", "0.5", "--hint", "raise --limit"]);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("qwen-scope did no work (0.0 cells)"),
        "{text}"
    );
    assert!(text.contains("(raise --limit)"), "{text}");
    let (code, text) = p(&["10", "4.0", "10", "0"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("qwen-scope's time is 0.0"), "{text}");
    let (code, text) = p(&["10", "4.0", "9", "1.0"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("different work"), "{text}");
    let (code, text) = p(&["10", "4.0", "10", "1.0"]);
    assert_eq!(
        (code, text.trim()),
        (0, "qwen-scope speed-up over the baseline: 4.00x")
    );
}
