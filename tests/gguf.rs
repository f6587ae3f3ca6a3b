//! tools/get_model.sh --from-gguf (tools/convert_gguf.py) reads qwen3, qwen2 and llama GGUFs:
//! each tiny fixture is written as a GGUF laid out as llama.cpp lays out its architecture
//! (tools/gguf_from_model.py: llama.cpp's tensor names and metadata, Qwen3's attn_q_norm /
//! attn_k_norm and attention.key_length, Q/K permuted for llama only, Qwen2's tokenizer
//! path), converted back, and the converted folder must be the fixture: the same config,
//! every weight bit for bit, the same logits bit for bit and the same tokens.
//!
//! Needs `.venv-tools` in the crate root with gguf and numpy, which tools/get_model.sh makes
//! (CI runs it first). Without it the test is skipped visibly, and fails under CI=true.

mod common;

use qwen_scope::backend::cpu::model::Block;
use qwen_scope::Engine;
use qwen_scope::{Arch, CpuModel, LogitsAt, Request};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tools_python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".venv-tools/bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import gguf, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let msg = format!(
        "{} cannot import gguf and numpy (tools/get_model.sh installs them)",
        py.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let bad = got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    assert!(bad.is_none(), "{what}[{}] differs", bad.unwrap());
}

/// The converted llama folder is a Qwen2 graph with zero q/k/v biases: the same function.
fn same_bias(what: &str, got: &Option<Vec<f32>>, want: &Option<Vec<f32>>, n: usize) {
    let zeros = vec![0.0; n];
    same_bits(
        what,
        got.as_deref().unwrap_or(&zeros),
        want.as_deref().unwrap_or(&zeros),
    );
}

fn same_block(l: usize, got: &Block, want: &Block) {
    let w = |n: &str| format!("block {l} {n}");
    same_bits(&w("input_norm"), &got.input_norm, &want.input_norm);
    same_bits(&w("qkv"), &got.qkv.w, &want.qkv.w);
    same_bias(&w("qkv bias"), &got.qkv.b, &want.qkv.b, want.qkv.out);
    same_bits(&w("o_proj"), &got.o_proj.w, &want.o_proj.w);
    same_bias(
        &w("o_proj bias"),
        &got.o_proj.b,
        &want.o_proj.b,
        want.o_proj.out,
    );
    assert_eq!(
        got.q_norm.is_some(),
        want.q_norm.is_some(),
        "{}",
        w("q_norm")
    );
    for (n, g, x) in [
        ("q_norm", &got.q_norm, &want.q_norm),
        ("k_norm", &got.k_norm, &want.k_norm),
    ] {
        if let (Some(g), Some(x)) = (g, x) {
            same_bits(&w(n), g, x);
        }
    }
    same_bits(
        &w("post_attention_norm"),
        &got.post_attention_norm,
        &want.post_attention_norm,
    );
    same_bits(&w("gate_up"), &got.gate_up.w, &want.gate_up.w);
    same_bits(&w("down"), &got.down.w, &want.down.w);
}

#[test]
fn converted_gguf_equals_the_fixture_it_was_written_from() {
    let Some(py) = tools_python() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in [
        "tiny-qwen3",
        "tiny-qwen3-untied-bias",
        "tiny-qwen2",
        "tiny-llama",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join(format!("{name}.gguf"));
        let out = dir.path().join("converted");
        let fixture = common::fixture(name);
        run(Command::new(&py)
            .arg(root.join("tools/gguf_from_model.py"))
            .arg(&fixture)
            .arg(&gguf));
        run(Command::new("bash")
            .arg(root.join("tools/get_model.sh"))
            .arg("--from-gguf")
            .arg(&gguf)
            .arg(&out));
        assert!(out.join(".qwen-scope-model").exists(), "{name}: no marker");

        let want = CpuModel::load(fixture.to_str().unwrap(), None).unwrap();
        let got = CpuModel::load(out.to_str().unwrap(), None).unwrap();
        let (g, w) = (&got.config, &want.config);
        // llama GGUFs become Qwen2 folders (zero q/k/v biases): the same function
        let arch = if w.arch == Arch::Llama {
            Arch::Qwen2
        } else {
            w.arch
        };
        assert_eq!(g.arch, arch, "{name}");
        assert_eq!(
            (g.hidden_size, g.intermediate_size, g.num_layers),
            (w.hidden_size, w.intermediate_size, w.num_layers),
            "{name}"
        );
        assert_eq!(
            (g.num_heads, g.num_kv_heads, g.head_dim, g.vocab_size),
            (w.num_heads, w.num_kv_heads, w.head_dim, w.vocab_size),
            "{name}"
        );
        assert_eq!(
            (g.rms_norm_eps, g.rope_theta, g.tie_word_embeddings),
            (w.rms_norm_eps, w.rope_theta, w.tie_word_embeddings),
            "{name}"
        );
        assert_eq!((g.qk_norm, g.o_bias), (w.qk_norm, w.o_bias), "{name}");
        assert_eq!(g.max_position_embeddings, w.max_position_embeddings);

        same_bits(&format!("{name} embed"), &got.embed, &want.embed);
        same_bits(&format!("{name} lm_head"), got.lm_head(), want.lm_head());
        same_bits(
            &format!("{name} final_norm"),
            &got.final_norm,
            &want.final_norm,
        );
        for (l, (gb, wb)) in got.blocks.iter().zip(&want.blocks).enumerate() {
            same_block(l, gb, wb);
        }

        let r = common::Reference::load(name);
        let text = r.json["single"].as_str().unwrap();
        let ids = want.tokenizer.encode(text).unwrap();
        assert_eq!(got.tokenizer.encode(text).unwrap(), ids, "{name}: tokens");
        assert_eq!(got.tokenizer.decode(&ids).unwrap(), text, "{name}: decode");
        let req = Request::tokens(vec![ids]).logits(LogitsAt::All);
        let a = got.forward(&mut [got.new_cache()], &req).unwrap();
        let b = want.forward(&mut [want.new_cache()], &req).unwrap();
        for (x, y) in a.logits.iter().zip(&b.logits) {
            same_bits(&format!("{name} logits[{}]", y.pos), &x.values, &y.values);
        }
        eprintln!("{name}: the converted GGUF equals the fixture (weights, logits, tokens)");
    }
}
