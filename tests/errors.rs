//! Bad input gives a clear error naming the problem, never a panic.

mod common;

use qwen_scope::Engine;
use qwen_scope::{CpuModel, LogitsAt, Positions, Request, Site, WriteOp};
use std::path::Path;

/// A copy of a fixture model folder that a test may damage.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(common::fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match CpuModel::load(dir.to_str().unwrap(), None) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "config has no {from}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

fn tiny() -> CpuModel {
    CpuModel::load(common::fixture("tiny-qwen2").to_str().unwrap(), None).unwrap()
}

fn forward_err(model: &CpuModel, rows: usize, req: Request) -> String {
    let mut caches: Vec<_> = (0..rows).map(|_| model.new_cache()).collect();
    model
        .forward(&mut caches, &req)
        .expect_err("should fail")
        .to_string()
}

#[test]
fn missing_folder_and_missing_files() {
    let e = load_err(Path::new("./no/such/model"));
    assert!(e.contains("neither a model folder nor"), "{e}");
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let dir = copy_fixture("tiny-qwen2");
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let e = load_err(dir.path());
        assert!(
            e.contains(if file == "model.safetensors" {
                "no model.safetensors"
            } else {
                file
            }),
            "{file}: {e}"
        );
    }
    let dir = copy_fixture("tiny-qwen2-untied");
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    assert!(load_err(dir.path()).contains("model-00002-of-00003.safetensors is missing"));
}

#[test]
fn corrupt_files() {
    let dir = copy_fixture("tiny-qwen2");
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json",
    )
    .unwrap();
    assert!(load_err(dir.path()).contains("cannot read safetensors"));
    let dir = copy_fixture("tiny-qwen2");
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(load_err(dir.path()).contains("invalid config"));
    let dir = copy_fixture("tiny-qwen2");
    std::fs::write(dir.path().join("tokenizer.json"), "[]").unwrap();
    assert!(load_err(dir.path()).contains("tokenizer"));
}

#[test]
fn unknown_architecture_and_mismatched_shapes() {
    let dir = copy_fixture("tiny-qwen2");
    edit_config(dir.path(), "Qwen2ForCausalLM", "MistralForCausalLM");
    let e = load_err(dir.path());
    assert!(
        e.contains("unsupported architecture \"MistralForCausalLM\""),
        "{e}"
    );

    let dir = copy_fixture("tiny-qwen2");
    edit_config(
        dir.path(),
        "\"intermediate_size\": 128",
        "\"intermediate_size\": 96",
    );
    let e = load_err(dir.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[128, 64]"),
        "{e}"
    );

    let dir = copy_fixture("tiny-qwen2-untied");
    edit_config(
        dir.path(),
        "\"tie_word_embeddings\": false",
        "\"tie_word_embeddings\": false, \"hidden_act\": \"gelu\"",
    );
    assert!(load_err(dir.path()).contains("hidden_act"));
}

/// Qwen3's config and tensors must agree: head_dim, attention_bias and the q/k norms.
#[test]
fn qwen3_config_and_weights_must_agree() {
    let dir = copy_fixture("tiny-qwen3");
    edit_config(dir.path(), "\"head_dim\": 32", "\"head_dim\": 16");
    let e = load_err(dir.path());
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.weight") && e.contains("[128, 64]"),
        "{e}"
    );

    let dir = copy_fixture("tiny-qwen3");
    edit_config(
        dir.path(),
        "\"attention_bias\": false",
        "\"attention_bias\": true",
    );
    let e = load_err(dir.path());
    assert!(e.contains("model.layers.0.self_attn.q_proj.bias"), "{e}");

    let dir = copy_fixture("tiny-qwen3-untied-bias");
    edit_config(
        dir.path(),
        "\"attention_bias\": true",
        "\"attention_bias\": false",
    );
    let e = load_err(dir.path());
    assert!(
        e.contains("q_proj.bias") && e.contains("attention_bias = false"),
        "{e}"
    );

    // a Llama checkpoint labelled Qwen3: no q/k norms
    let dir = copy_fixture("tiny-llama");
    edit_config(dir.path(), "LlamaForCausalLM", "Qwen3ForCausalLM");
    let e = load_err(dir.path());
    assert!(
        e.contains("model.layers.0.self_attn.q_norm.weight") && e.contains("not found"),
        "{e}"
    );
}

#[test]
fn out_of_range_layers_positions_rows_and_tokens() {
    let m = tiny();
    let ids = vec![5u32, 6, 7];
    let e = forward_err(
        &m,
        1,
        Request::tokens(vec![ids.clone()]).read(Site::BlockOut(4), 0, Positions::All),
    );
    assert!(
        e.contains("layer 4 out of range") && e.contains("4 blocks (0..3)"),
        "{e}"
    );
    let e = forward_err(
        &m,
        1,
        Request::tokens(vec![ids.clone()]).read(Site::Embed, 0, Positions::At(vec![3])),
    );
    assert!(e.contains("position 3 of row 0 is not computed"), "{e}");
    let e = forward_err(
        &m,
        1,
        Request::tokens(vec![ids.clone()]).logits(LogitsAt::At(vec![(1, 0)])),
    );
    assert!(e.contains("row 1 out of range"), "{e}");
    let e = forward_err(
        &m,
        1,
        Request::tokens(vec![ids.clone()]).write(Site::Embed, 0, 0, WriteOp::Add(vec![0.0; 3])),
    );
    assert!(e.contains("3 values, hidden size is 64"), "{e}");
    let e = forward_err(&m, 1, Request::tokens(vec![vec![5, 512]]));
    assert!(e.contains("token id 512 out of range"), "{e}");
    let e = forward_err(&m, 2, Request::tokens(vec![ids]));
    assert!(e.contains("1 input rows but 2 KV caches"), "{e}");
}

#[test]
fn empty_and_too_long_prompts() {
    let m = tiny();
    let e = forward_err(&m, 1, Request::tokens(vec![vec![]]));
    assert!(e.contains("empty"), "{e}");
    let e = forward_err(&m, 1, Request::tokens(vec![vec![7; 129]]));
    assert!(
        e.contains("prompt too long") && e.contains("allows 128"),
        "{e}"
    );
    // continuing a cache past the limit is caught too
    let mut caches = vec![m.new_cache()];
    m.forward(&mut caches, &Request::tokens(vec![vec![7; 128]]))
        .unwrap();
    let e = m
        .forward(&mut caches, &Request::tokens(vec![vec![7]]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt too long"), "{e}");
}

fn cli(args: &[&str]) -> (i32, String) {
    let (code, _, stderr) = common::cli(args);
    (code, stderr)
}

#[test]
fn cli_reports_errors_with_non_zero_exit() {
    let tiny = common::fixture("tiny-qwen2");
    let tiny = tiny.to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("x.safetensors");
    let file = file.to_str().unwrap();
    let (code, err) = cli(&[
        "forward",
        "--model",
        "./missing-model",
        "--prompt",
        "hi",
        "--out",
        file,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("neither a model folder"), "{err}");
    let (code, err) = cli(&["forward", "--model", tiny, "--prompt", "", "--out", file]);
    assert_ne!(code, 0);
    assert!(err.contains("empty prompt"), "{err}");
    let (code, err) = cli(&[
        "forward",
        "--model",
        tiny,
        "--prompt",
        "hi",
        "--out",
        "/no/such/dir/x.safetensors",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("error: cannot write /no/such/dir/x.safetensors: "),
        "{err}"
    );
}

#[test]
fn cli_device_flags_are_checked() {
    let tiny = common::fixture("tiny-qwen2");
    let tiny = tiny.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            tiny,
            "--prompt",
            "hi",
            "--max-new",
            "2",
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let (code, err) = run(&["--device", "tpu"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown device \"tpu\""), "{err}");
    let (code, err) = run(&["--device", "cpu", "--dtype", "f16"]);
    assert_ne!(code, 0);
    assert!(err.contains("--dtype applies to GPUs only"), "{err}");
    // auto falls back to the CPU where no GPU is usable, and says so
    let (code, err) = run(&["--device", "auto"]);
    assert_eq!(code, 0, "{err}");
    if !common::gpu_usable() {
        assert!(err.contains("running on the CPU"), "{err}");
        // an explicit GPU request fails with the reason instead
        let (code, err) = run(&["--device", "cuda:0"]);
        assert_ne!(code, 0);
        assert!(err.contains("CUDA") || err.contains("nvcc"), "{err}");
    }
    let (code, err) = run(&["--device", "cuda:99"]);
    assert_ne!(code, 0, "{err}");
}

#[test]
fn cli_forward_dump_matches_the_library() {
    let tiny = common::fixture("tiny-qwen2");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("dump.safetensors");
    let (code, err) = cli(&[
        "forward",
        "--model",
        tiny.to_str().unwrap(),
        "--prompt",
        "Hi there.",
        "--prompt",
        "The bridge was built in 1887.",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let r = common::Reference::load("tiny-qwen2");
    // row 2 of the fixture batch is the same text: its last final_norm state must match
    let want = r.get("batch.final_norm");
    let (t_max, h) = (want.shape[1], want.shape[2]);
    let got = st.tensor("row1.final_norm").unwrap();
    let t = got.shape()[0];
    let got: Vec<f32> = got
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let at = 2 * t_max + t_max - 1;
    common::assert_close(
        "cli final_norm",
        &got[(t - 1) * h..],
        &want.f32[at * h..(at + 1) * h],
        1e-4,
    );
    assert!(st.tensor("row0.resid_post.3").is_ok() && st.tensor("row0.embed").is_ok());
}

#[test]
fn generate_stops_at_the_context_limit_and_keeps_its_tokens() {
    let tiny = common::fixture("tiny-qwen2");
    let model = qwen_scope::CpuModel::load(tiny.to_str().unwrap(), None).unwrap();
    let limit = model.config.max_position_embeddings;
    // a prompt 8 positions short of the limit: room for 9 new tokens (the last is not fed)
    let mut prompt = String::new();
    while model.tokenizer.encode(&prompt).unwrap().len() < limit - 8 {
        prompt.push_str(" word");
    }
    let tokens = model.tokenizer.encode(&prompt).unwrap().len();
    let room = limit + 1 - tokens;
    let tiny = tiny.to_str().unwrap();
    let generate = |n: usize| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-scope"))
            .args([
                "generate", "--device", "cpu", "--model", tiny, "--prompt", &prompt,
            ])
            .args(["--max-new", &n.to_string()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stdout, err) = generate(room + 20);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "stopped after {room} of {} tokens: the model's context limit is {limit} positions",
            room + 20
        )),
        "{err}"
    );
    let (code, exact, err) = generate(room);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("stopped after"), "{err}");
    assert_eq!(
        stdout, exact,
        "the tokens made before the limit are printed"
    );
    assert!(stdout.len() > prompt.len());
}

/// An error line says each thing once: no clause of it repeats (an I/O error printed by
/// the error and again by its source, a path named by two layers of context).
fn assert_says_it_once(err: &str) {
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {err:?}"));
    let clauses: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, c) in clauses.iter().enumerate() {
        assert!(
            c.len() < 6 || !clauses[i + 1..].contains(c),
            "{c:?} repeats in {line:?}"
        );
    }
    for what in ["os error", "out of range", "cannot "] {
        assert!(
            line.matches(what).count() <= 1,
            "{what:?} twice in {line:?}"
        );
    }
}

/// (arguments, environment, the message expected).
type Case = (Vec<String>, Vec<(&'static str, &'static str)>, String);

/// Runs the CLI with extra environment variables; (exit code, stderr).
fn cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-scope"))
        .env("QWEN_SCOPE_DEVICE", "cpu")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// Each class of bad input gives one error line that quotes what the user wrote and where
/// it came from (a flag, an environment variable, a file and its line), says what it was
/// compared with, and says it once.
#[test]
fn errors_quote_the_input_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let tiny = common::fixture("tiny-qwen2");
    let tiny = tiny.to_str().unwrap();
    let relations = concat!(env!("CARGO_MANIFEST_DIR"), "/data/relations/capitals.json");
    std::fs::write(d("p.txt"), "one prompt\n\ntwo prompts\nthree\n").unwrap();
    std::fs::write(d("bad.txt"), b"fine\nstill fine\nnot \xff fine\n").unwrap();
    std::fs::write(d("bad.jsonl"), "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n").unwrap();
    std::fs::write(
        d("r.tsv"),
        "prompt_target\tsubject\tobject\tprompt_source\nx is\tA\tB\t\nx is\tC\tD\tno subject\n",
    )
    .unwrap();
    std::fs::write(d("r.json"), "{\"name\": \"r\",\n \"samples\": [1, 2]\n}").unwrap();
    let sweep = |extra: &[&str]| {
        let mut a = vec!["sweep", "--model", tiny];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let attributes = |extra: &[&str]| {
        let mut a = vec!["attributes", "--model", tiny, "--relations"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let out = d("out");
    let p = d("p.txt");
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // layer lists: the list as written, and the part at fault
        (attributes(&[relations, "--source-layers", "0,2-9:3", "--out", &out]), vec![],
         "error: --source-layers \"0,2-9:3\": \"2-9:3\" reaches layer 5, out of range: the model has 4 blocks (0..3)".into()),
        (attributes(&[relations, "--target-layers", "1,x", "--out", &out]), vec![],
         "error: --target-layers \"1,x\": \"x\" is not a layer number".into()),
        (vec!["inspect".into(), "--model".into(), tiny.into(), "--source".into(), "Paris".into(), "--target-layer".into(), "4".into()], vec![],
         "error: --target-layer 4 is out of range: the model has 4 blocks (0..3)".into()),
        // settings from the environment name the variable
        (sweep(&["--out", &out]), vec![("QWEN_SCOPE_DEVICE", "tpu")],
         "error: unknown device \"tpu\" in the environment variable QWEN_SCOPE_DEVICE".into()),
        (sweep(&["--out", &out]), vec![("QWEN_SCOPE_DEVICE", "cuda:99")],
         "error: QWEN_SCOPE_DEVICE=cuda:99 (from the environment) chose the device: ".into()),
        // counts say what they were compared with, and which numbers were defaults
        (sweep(&["--prompts", &p, "--train", "3", "--out", &out]), vec![],
         format!("error: --train 3 leaves no prompt to evaluate: {p} holds 3 prompts")),
        (sweep(&["--prompts", &p, "--val", "4", "--out", &out]), vec![],
         format!("error: --train 1 (the default: half the prompts) + --val 4 needs 5 prompts, but {p} holds 3")),
        (sweep(&["--train", "200", "--val", "150", "--out", &out]), vec![],
         "error: --train 200 + --val 150 needs 350 prompts, but the default prompt set (data/prompts.txt) holds 300".into()),
        (vec!["inspect".into(), "--model".into(), tiny.into(), "--source".into(), "Paris".into(), "--position".into(), "-9".into()], vec![],
         "error: --position -9 out of range: the source \"Paris\" has".into()),
        // text files: the file and the line
        (sweep(&["--prompts", &d("bad.txt"), "--out", &out]), vec![],
         format!("error: {}: line 3, column 5: not UTF-8 text", d("bad.txt"))),
        (sweep(&["--prompts", &d("bad.jsonl"), "--out", &out]), vec![],
         format!("error: {}: line 3: malformed JSON: EOF while parsing an object", d("bad.jsonl"))),
        (attributes(&[&d("r.tsv"), "--out", &out]), vec![],
         format!("error: {}: no row left to evaluate (dropped: 1 empty prompt_source (line 2), 1 subject not in prompt_source (line 3))", d("r.tsv"))),
        (attributes(&[&d("r.json"), "--out", &out]), vec![],
         format!("error: {}: line 2: malformed LRE JSON: invalid type: integer `1`", d("r.json"))),
        // files that cannot be read or written: named once, with the reason once
        (sweep(&["--prompts", &d("missing.txt"), "--out", &out]), vec![],
         format!("error: cannot read {}: No such file or directory (os error 2)", d("missing.txt"))),
        (vec!["forward".into(), "--model".into(), tiny.into(), "--prompt".into(), "hi".into(), "--out".into(), format!("{}/x.json", d("p.txt"))], vec![],
         format!("error: cannot write {}/x.json: Not a directory (os error 20)", d("p.txt"))),
    ];
    for (args, env, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = cli_env(&args, &env);
        assert_ne!(code, 0, "{args:?} succeeded: {err}");
        assert!(err.contains(&want), "{args:?}\nwant: {want}\ngot: {err}");
        assert_says_it_once(&err);
        assert!(
            !dir.path().join("out").exists(),
            "{args:?} left a results folder"
        );
    }
}

/// A journal line that is not a record (a file edited by hand, another tool's output) is
/// named by its line when resuming.
#[test]
fn a_corrupt_journal_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = common::fixture("tiny-qwen2");
    let out = dir.path().join("out");
    let args = |resume: bool| {
        let mut a = vec![
            "sweep",
            "--model",
            tiny.to_str().unwrap(),
            "--train",
            "4",
            "--val",
            "4",
            "--batch",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        if resume {
            a.push("--resume");
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |resume: bool| {
        let a = args(resume);
        cli_env(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };
    let (code, err) = run(false);
    assert_eq!(code, 0, "{err}");
    let journal = out.join("samples.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"index\": \"three\"}";
    std::fs::write(&journal, lines.join("\n") + "\n").unwrap();
    let (code, err) = run(true);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "error: {} line 3: not a record of this run's journal",
            journal.display()
        )),
        "{err}"
    );
    assert_says_it_once(&err);
}
