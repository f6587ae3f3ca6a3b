//! A run split with `--shard K/N` and joined by `qwen-scope merge` writes, byte for byte,
//! the results folder of the unsharded run: for the sweep and for attribute extraction,
//! with shard counts that do not divide the work, shards given in any order, shards that
//! own nothing, and a shard killed at any moment and rerun with --resume. The merge
//! refuses what is not one whole run, naming the shard.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SWEEP_FILES: [&str; 6] = [
    "run.json",
    "samples.jsonl",
    "samples.csv",
    "summary.csv",
    "summary.json",
    "tuned_lens.safetensors",
];
const ATTRIBUTE_FILES: [&str; 4] = ["run.json", "rows.jsonl", "summary.csv", "summary.json"];

fn tiny() -> String {
    common::fixture("tiny-qwen2").to_str().unwrap().to_string()
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A grid sweep of 30 evaluated prompts in 8 batches of 4 (the last holds 2); `extra`
/// adds flags or replaces these.
fn sweep(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["sweep".into(), "--grid".into()];
    let defaults = [
        ("--model", tiny()),
        ("--train", "20".into()),
        ("--val", "30".into()),
        ("--batch", "4".into()),
        ("--out", path(out)),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), value]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Attribute extraction on both project relation files: 67 rows in 23 batches of 3.
fn attributes(out: &Path, extra: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut args: Vec<String> = vec![
        "attributes".into(),
        "--model".into(),
        tiny(),
        "--relations".into(),
        path(&root.join("data/relations/capitals.json")),
        path(&root.join("data/relations/cities.json")),
        "--all-rows".into(),
        "--max-new".into(),
        "4".into(),
        "--batch".into(),
        "3".into(),
        "--out".into(),
        path(out),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, _, err) = common::cli(&args);
    assert_eq!(code, 0, "qwen-scope {}: {err}", args.join(" "));
    err
}

/// Runs shards K of N into dir/K; returns their folders.
fn shards(dir: &Path, count: usize, args: &dyn Fn(&Path, &[&str]) -> Vec<String>) -> Vec<PathBuf> {
    (0..count)
        .map(|k| {
            let out = dir.join(k.to_string());
            run(&args(&out, &["--shard", &format!("{k}/{count}")]));
            out
        })
        .collect()
}

fn merge(out: &Path, shards: &[PathBuf]) -> (i32, String) {
    let mut args = vec!["merge".to_string(), path(out)];
    args.extend(shards.iter().map(|s| path(s)));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, _, err) = common::cli(&args);
    (code, err)
}

fn assert_same_files(want: &Path, got: &Path, files: &[&str]) {
    for f in files {
        let (a, b) = (std::fs::read(want.join(f)), std::fs::read(got.join(f)));
        let a = a.unwrap_or_else(|e| panic!("{}/{f}: {e}", want.display()));
        let b = b.unwrap_or_else(|e| panic!("{}/{f}: {e}", got.display()));
        assert!(
            a == b,
            "{f} differs between {} and {}",
            want.display(),
            got.display()
        );
    }
}

#[test]
fn sharded_sweeps_merge_to_the_unsharded_run_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    run(&sweep(&whole, &[]));
    // 8 batches over 3 shards (2, 3 and 3), named to merge in any order
    let mut parts = shards(&dir.path().join("three"), 3, &sweep);
    parts.reverse();
    let merged = dir.path().join("merged3");
    let (code, err) = merge(&merged, &parts);
    assert_eq!(code, 0, "{err}");
    assert_same_files(&whole, &merged, &SWEEP_FILES);
    // 8 batches over 11 shards: three own nothing, and say so
    let dir11 = dir.path().join("eleven");
    let parts = shards(&dir11, 11, &sweep);
    let empty: Vec<usize> = (0..11)
        .filter(|k| {
            !dir11
                .join(k.to_string())
                .join("samples.jsonl")
                .metadata()
                .is_ok_and(|m| m.len() > 0)
        })
        .collect();
    assert_eq!(empty.len(), 3, "{empty:?}");
    let merged = dir.path().join("merged11");
    let (code, err) = merge(&merged, &parts);
    assert_eq!(code, 0, "{err}");
    assert_same_files(&whole, &merged, &SWEEP_FILES);
    // merging again into the same folder rewrites the same results
    let (code, err) = merge(&merged, &parts);
    assert_eq!(code, 0, "{err}");
    assert_same_files(&whole, &merged, &SWEEP_FILES);
}

#[test]
fn sharded_attribute_runs_merge_to_the_unsharded_run_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    run(&attributes(&whole, &[]));
    // 23 batches of rows over 4 shards: 5, 6, 6, 6, across both relation files
    let parts = shards(&dir.path().join("parts"), 4, &attributes);
    let merged = dir.path().join("merged");
    let (code, err) = merge(&merged, &parts);
    assert_eq!(code, 0, "{err}");
    assert_same_files(&whole, &merged, &ATTRIBUTE_FILES);
    let summary = std::fs::read_to_string(whole.join("summary.json")).unwrap();
    assert!(
        summary.contains("\"rows\": 67"),
        "the test's premise: 67 rows"
    );
}

/// Killed (SIGKILL) at eight moments of its run, a shard rerun with --resume gives the
/// same merge as the unsharded run.
#[test]
fn a_killed_shard_resumes_to_the_same_merge() {
    let dir = tempfile::tempdir().unwrap();
    // the whole default prompt set in batches of 8: a shard long enough to be killed in
    // each phase (the lens fit, the evaluation, the reports)
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "sweep",
            "--model",
            &tiny(),
            "--grid",
            "--batch",
            "8",
            "--out",
            &path(out),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let whole = dir.path().join("whole");
    run(&args(&whole, &[]));
    let parts = shards(&dir.path().join("parts"), 3, &args);
    let victim = parts[1].clone();
    let t = std::time::Instant::now();
    run(&args(&dir.path().join("timed"), &["--shard", "1/3"]));
    let shard_run = t.elapsed();
    for i in 0..8u32 {
        let _ = std::fs::remove_dir_all(&victim);
        let mut child = Command::new(env!("CARGO_BIN_EXE_qwen-scope"))
            .args(args(&victim, &["--shard", "1/3"]))
            .env("QWEN_SCOPE_DEVICE", "cpu")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(shard_run * i / 8);
        let _ = child.kill();
        child.wait().unwrap();
        let merged = dir.path().join(format!("merged{i}"));
        let (code, err) = merge(&merged, &parts);
        if code != 0 {
            // unfinished (or not started): the merge names shard 1/3 and what to do
            assert!(
                err.contains("shard 1/3") || err.contains(&path(&victim)),
                "killed at {i}/8: {err}"
            );
            let mut again = args(&victim, &["--shard", "1/3"]);
            if victim.join("run.json").exists() {
                again.push("--resume".into());
                assert!(
                    err.contains("--resume"),
                    "killed at {i}/8, the merge says how to finish: {err}"
                );
            }
            run(&again);
            let (code, err) = merge(&merged, &parts);
            assert_eq!(code, 0, "killed at {i}/8, resumed: {err}");
        }
        assert_same_files(&whole, &merged, &SWEEP_FILES);
    }
}

#[test]
fn merge_refuses_what_is_not_one_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let parts = shards(&d.join("parts"), 3, &sweep);
    let refused = |out: &str, shards: &[PathBuf], want: &[&str]| {
        let out = d.join(out);
        let (code, err) = merge(&out, shards);
        assert_ne!(code, 0, "merged: {shards:?}");
        for w in want {
            assert!(err.contains(w), "{w:?} not in: {err}");
        }
    };
    let (p0, p1, p2) = (parts[0].clone(), parts[1].clone(), parts[2].clone());
    refused(
        "m",
        &[p0.clone(), p2.clone()],
        &["missing 1 of 3 shards: 1/3"],
    );
    refused(
        "m",
        &[p0.clone(), p1.clone(), p1.clone(), p2.clone()],
        &["shard 1/3 given twice"],
    );
    // another seed: the settings that differ are named
    let seeded = d.join("seeded");
    run(&sweep(&seeded, &["--seed", "7", "--shard", "1/3"]));
    refused(
        "m",
        &[p0.clone(), seeded, p2.clone()],
        &["not shards of one run", "seed: the first 42, this one 7"],
    );
    // another batch: another split, and other results
    let batch5 = d.join("batch5");
    run(&sweep(&batch5, &["--batch", "5", "--shard", "1/3"]));
    refused(
        "m",
        &[p0.clone(), batch5, p2.clone()],
        &["batch: the first 4, this one 5"],
    );
    // another shard count
    let four = d.join("four");
    run(&sweep(&four, &["--shard", "1/4"]));
    refused(
        "m",
        &[p0.clone(), four, p2.clone()],
        &["into 3 and 4 shards"],
    );
    // a whole run, and a folder that is not a run
    let whole = d.join("whole");
    run(&sweep(&whole, &[]));
    refused(
        "m",
        &[p0.clone(), whole.clone(), p2.clone()],
        &["holds a whole run, not a shard"],
    );
    refused(
        "m",
        &[p0.clone(), d.join("nothing"), p2.clone()],
        &["nothing", "never started"],
    );
    // an unfinished shard: its journal cut short, its tables not yet written
    let cut = d.join("cut");
    std::fs::create_dir(&cut).unwrap();
    std::fs::copy(p1.join("run.json"), cut.join("run.json")).unwrap();
    let journal = std::fs::read_to_string(p1.join("samples.jsonl")).unwrap();
    let first: Vec<&str> = journal.lines().take(4).collect();
    std::fs::write(cut.join("samples.jsonl"), first.join("\n") + "\n{\"torn").unwrap();
    refused(
        "m",
        &[p0.clone(), cut, p2.clone()],
        &["shard 1/3", "unfinished: 4 of its 12 prompts", "--resume"],
    );
    // a shard of another experiment
    let attr = d.join("attr");
    run(&attributes(&attr, &["--shard", "1/3"]));
    refused(
        "m",
        &[p0.clone(), attr, p2.clone()],
        &["the experiment next_token", "the experiment attributes"],
    );
    // never over a shard, nor over another run's results
    refused("parts/0", &parts, &["is shard 0/3", "another folder"]);
    run(&sweep(&d.join("other"), &["--seed", "7"]));
    refused("other", &parts, &["holds the results of another run"]);
    assert!(!d.join("m").exists(), "a refused merge writes nothing");
}

#[test]
fn shard_and_device_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let fails = |args: Vec<String>, want: &str| {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (code, _, err) = common::cli(&a);
        assert_ne!(code, 0);
        assert!(err.contains(want), "{want:?} not in: {err}");
    };
    fails(sweep(&out, &["--shard", "3/3"]), "K counts from 0");
    fails(sweep(&out, &["--shard", "1of3"]), "give K/N");
    fails(sweep(&out, &["--device", "cuda:0,cuda:0"]), "listed twice");
    fails(
        sweep(&out, &["--device", "cuda:0,cuda:1", "--shard", "0/2"]),
        "give each Slurm task or process one device",
    );
    fails(
        vec![
            "forward".into(),
            "--model".into(),
            tiny(),
            "--device".into(),
            "cuda:0,cuda:1".into(),
            "--prompt".into(),
            "a".into(),
            "--out".into(),
            path(&out.join("f.json")),
        ],
        "give one device here",
    );
    // a resumed run keeps its batch: another batch size gives other results
    run(&sweep(&out, &[]));
    fails(
        sweep(&out, &["--batch", "8", "--resume"]),
        "batch: earlier 4, now 8",
    );
}
