//! `qwen-scope sweep` end to end on a fixture model: the results folder, resumption after
//! an interruption, and bad input.

mod common;

use std::path::Path;

use common::cli as run;

fn tiny() -> String {
    common::fixture("tiny-qwen2").to_str().unwrap().to_string()
}

fn prompts_file(dir: &Path) -> String {
    let p = dir.join("prompts.txt");
    let lines: Vec<&str> = qwen_scope::data::DEFAULT_PROMPTS.lines().take(20).collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p.to_str().unwrap().to_string()
}

fn sweep(out: &Path, prompts: &str, extra: &[&str]) -> (i32, String, String) {
    sweep_model(&tiny(), out, prompts, extra)
}

fn sweep_model(model: &str, out: &Path, prompts: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "sweep",
        "--model",
        model,
        "--prompts",
        prompts,
        "--train",
        "8",
        "--val",
        "12",
        "--batch",
        "4",
        "--seed",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs)
}

#[test]
fn sweep_writes_tables_plots_and_resumes_to_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_file(dir.path());
    let full = dir.path().join("full");
    let (code, stdout, err) = sweep(&full, &prompts, &["--grid"]);
    assert_eq!(code, 0, "{err}");
    for f in [
        "run.json",
        "samples.jsonl",
        "samples.csv",
        "summary.csv",
        "summary.json",
        "next_token.png",
        "grid_precision.png",
        "tuned_lens.safetensors",
    ] {
        assert!(full.join(f).is_file(), "{f} missing");
    }
    assert!(stdout.contains("token-identity"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("summary.json")).unwrap()).unwrap();
    let rows = summary["summary"].as_array().unwrap();
    // 4 layers: 16 grid cells + 4 logit lens + 4 tuned lens
    assert_eq!(rows.len(), 24);
    let last = rows
        .iter()
        .find(|r| {
            r["method"] == "token_identity" && r["source_layer"] == 3 && r["target_layer"] == 3
        })
        .unwrap();
    assert_eq!(last["precision_at_1"], 1.0, "final-layer rule");
    assert_eq!(
        std::fs::read_to_string(full.join("samples.jsonl"))
            .unwrap()
            .lines()
            .count(),
        12
    );

    // interrupted run: keep the first batch of the journal plus a torn line, then resume
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    for f in ["run.json", "tuned_lens.safetensors"] {
        std::fs::copy(full.join(f), cut.join(f)).unwrap();
    }
    let journal = std::fs::read_to_string(full.join("samples.jsonl")).unwrap();
    let mut kept: String = journal.lines().take(4).map(|l| format!("{l}\n")).collect();
    kept.push_str(&journal.lines().nth(4).unwrap()[..20]);
    std::fs::write(cut.join("samples.jsonl"), kept).unwrap();
    let (code, _, err) = sweep(&cut, &prompts, &["--grid", "--resume"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("resuming: 4 of 12 samples already done"),
        "{err}"
    );
    for f in ["samples.csv", "summary.csv", "summary.json"] {
        assert_eq!(
            std::fs::read(full.join(f)).unwrap(),
            std::fs::read(cut.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
}

#[test]
fn sweep_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_file(dir.path());
    let out = dir.path().join("r");

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let (code, _, err) = sweep(&out, empty.to_str().unwrap(), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("no prompts"), "{err}");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": 3}\n").unwrap();
    let (code, _, err) = sweep(&out, bad.to_str().unwrap(), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("line 2: no string field \"text\""), "{err}");

    let (code, _, err) = run(&[
        "sweep",
        "--model",
        &tiny(),
        "--prompts",
        &prompts,
        "--train",
        "15",
        "--val",
        "10",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "--train 15 + --val 10 needs 25 prompts, but {prompts} holds 20"
        )),
        "{err}"
    );

    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let (code, _, err) = sweep(&blocker.join("sub"), &prompts, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot create results folder"), "{err}");

    let (code, _, err) = sweep(&out, &prompts, &["--resume"]);
    assert_ne!(code, 0);
    assert!(err.contains("no earlier run"), "{err}");
    let (code, _, err) = sweep(&out, &prompts, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = sweep(&out, &prompts, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("already holds a run"), "{err}");
    let (code, _, err) = sweep(&out, &prompts, &["--resume", "--grid"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("holds a run that differs from this one (1 difference)")
            && err.contains("\n  grid: earlier false, now true"),
        "{err}"
    );
}

#[test]
fn resume_refuses_changed_weights_and_other_experiments() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_file(dir.path());
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(common::fixture("tiny-qwen2")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let m = model.to_str().unwrap();
    let out = dir.path().join("out");
    let (code, _, err) = sweep_model(m, &out, &prompts, &[]);
    assert_eq!(code, 0, "{err}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    let recorded = &record["model"];
    assert_eq!(recorded["qwen_scope_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        recorded["files"]["model.safetensors"].is_string(),
        "{record}"
    );
    let (code, _, err) = sweep_model(m, &out, &prompts, &["--resume"]);
    assert_eq!(code, 0, "unchanged weights resume: {err}");

    // the same file name, other weights: one byte of the last tensor changed in place
    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&weights, &bytes).unwrap();
    let (code, _, err) = sweep_model(m, &out, &prompts, &["--resume"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("(1 difference)")
            && err.contains("\n  model.files.model.safetensors: earlier \""),
        "{err}"
    );

    // a sweep never writes into another experiment's folder, nor the reverse
    let attrs = dir.path().join("attributes");
    let relations = concat!(env!("CARGO_MANIFEST_DIR"), "/data/relations/capitals.json");
    let attributes = |out: &Path| {
        run(&[
            "attributes",
            "--model",
            m,
            "--relations",
            relations,
            "--limit",
            "1",
            "--source-layers",
            "1",
            "--target-layers",
            "1",
            "--all-rows",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (code, _, err) = attributes(&attrs);
    assert_eq!(code, 0, "{err}");
    for resume in [false, true] {
        let extra: &[&str] = if resume { &["--resume"] } else { &[] };
        let (code, _, err) = sweep_model(m, &attrs, &prompts, extra);
        assert_ne!(code, 0);
        assert!(
            err.contains("holds results of another experiment (\"attributes\")"),
            "{err}"
        );
    }
    let (code, _, err) = attributes(&out);
    assert_ne!(code, 0);
    assert!(err.contains("another experiment (\"next_token\")"), "{err}");
}

#[test]
fn inspect_and_attributes_refuse_bad_input() {
    let m = tiny();
    let (code, _, err) = run(&[
        "inspect",
        "--model",
        &m,
        "--source",
        "Paris",
        "--target",
        "no slot here",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("target prompt \"no slot here\" has no placeholder \"x\" token"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "inspect", "--model", &m, "--source", "Paris", "--layers", "9",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("error: --layers \"9\": \"9\" is out of range: the model has 4 blocks (0..3)"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "inspect",
        "--model",
        &m,
        "--source",
        "Paris",
        "--position",
        "40",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--position 40 out of range: the source \"Paris\" has"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("r.tsv");
    std::fs::write(
        &tsv,
        "prompt_target\tobject\tsubject\nThe capital of x\tParis\tFrance\n",
    )
    .unwrap();
    let out = dir.path().join("o");
    let (code, _, err) = run(&[
        "attributes",
        "--model",
        &m,
        "--relations",
        tsv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("TSV has no column \"prompt_source\""), "{err}");
    let (code, stdout, err) = run(&[
        "attributes",
        "--model",
        &m,
        "--relations",
        "data/relations/capitals.json",
        "--target",
        "The capital of x",
        "--all-rows",
        "--limit",
        "2",
        "--max-new",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    // the tiny random model knows no capital: all rows are evaluated, none is known
    assert!(
        stdout.contains("0 of 2 rows known unpatched, 2 evaluated"),
        "{stdout}"
    );
    assert!(out.join("summary.csv").is_file() && out.join("rows.jsonl").is_file());

    let attributes = |extra: &[&str], out: &Path| {
        let mut args = vec![
            "attributes",
            "--model",
            &m,
            "--relations",
            "data/relations/capitals.json",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let fresh = dir.path().join("fresh");
    let (code, _, err) = attributes(&["--limit", "0"], &fresh);
    assert_ne!(code, 0);
    assert!(err.contains("--limit must be at least 1"), "{err}");
    let (code, _, err) = attributes(&["--target", "x, the capital of x"], &fresh);
    assert_ne!(code, 0);
    assert!(
        err.contains("has 2 placeholder \"x\" tokens: use exactly one"),
        "{err}"
    );
    assert!(!fresh.exists(), "a refused run leaves no results folder");
}

/// `--resume` goes by what the model is (its files' fingerprints), not by the path that
/// reached it: the same folder through a symbolic link, a relative path with `..` in it, or
/// a copy elsewhere resumes; when it refuses, each difference has its own line.
#[test]
fn resume_goes_by_the_model_not_by_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_file(dir.path());
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(common::fixture("tiny-qwen2")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let out = dir.path().join("out");
    let (code, _, err) = sweep_model(model.to_str().unwrap(), &out, &prompts, &[]);
    assert_eq!(code, 0, "{err}");
    // cut the journal back to its first batch, so that each resume has work to do
    let journal = out.join("samples.jsonl");
    let full = std::fs::read_to_string(&journal).unwrap();
    let first: String = full.lines().take(4).map(|l| format!("{l}\n")).collect();

    let link = dir.path().join("link-to-model");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    let dotted = dir.path().join("model/../model/");
    let copy = dir.path().join("elsewhere");
    std::fs::create_dir(&copy).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
    }
    for other in [&link, &dotted, &copy] {
        std::fs::write(&journal, &first).unwrap();
        let (code, _, err) = sweep_model(other.to_str().unwrap(), &out, &prompts, &["--resume"]);
        assert_eq!(code, 0, "{}: {err}", other.display());
        assert!(
            err.contains("resuming: 4 of 12 samples already done"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&journal).unwrap(), full);
    }
    // the prompts reached by another path are the same prompts
    let relative = format!(
        "{}/../{}",
        dir.path().display(),
        dir.path().file_name().unwrap().to_str().unwrap()
    );
    let prompts_again = format!("{relative}/prompts.txt");
    let (code, _, err) = sweep_model(model.to_str().unwrap(), &out, &prompts_again, &["--resume"]);
    assert_eq!(code, 0, "{err}");

    // other settings and other weights: one line each
    let weights = copy.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&weights, &bytes).unwrap();
    let (code, _, err) = sweep_model(
        copy.to_str().unwrap(),
        &out,
        &prompts,
        &["--resume", "--grid", "--lens-positions", "one"],
    );
    assert_ne!(code, 0);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
    assert!(err.contains("(3 differences)"), "{err}");
    assert_eq!(lines.len(), 3, "{err}");
    assert_eq!(lines[0], "  grid: earlier false, now true");
    assert_eq!(lines[1], "  lens_positions: earlier \"all\", now \"one\"");
    assert!(
        lines[2].starts_with("  model.files.model.safetensors: earlier \""),
        "{err}"
    );
}
