//! Repo ids resolve through the Hugging Face cache layout (HF_HOME/hub/models--o--n/...),
//! offline, with revisions.

mod common;

use std::path::Path;
use std::process::Command;

/// Lays a fixture model out as the HF cache does: blobs behind a snapshot of a commit,
/// `refs/<revision>` naming the commit.
fn fake_cache(home: &Path, repo: &str, revision: &str, commit: &str) {
    let root = home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs").join(revision), commit).unwrap();
    for entry in std::fs::read_dir(common::fixture("tiny-qwen2-untied")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
}

fn forward(home: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen-scope"))
        .env("HF_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .args(["forward", "--prompt", "Hi there.", "--out"])
        .arg(home.join("dump.json"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn repo_id_loads_from_the_offline_cache_at_a_revision() {
    let home = tempfile::tempdir().unwrap();
    fake_cache(
        home.path(),
        "tiny/qwen2-untied",
        "main",
        "0123456789abcdef0123456789abcdef01234567",
    );
    fake_cache(
        home.path(),
        "tiny/qwen2-untied",
        "v1",
        "89abcdef0123456789abcdef0123456789abcdef",
    );
    let (code, err) = forward(home.path(), &["--model", "tiny/qwen2-untied"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("loaded tiny/qwen2-untied"), "{err}");
    let (code, err) = forward(
        home.path(),
        &["--model", "tiny/qwen2-untied", "--revision", "v1"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, err) = forward(
        home.path(),
        &["--model", "tiny/qwen2-untied", "--revision", "v2"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("not in the local Hugging Face cache"), "{err}");
    let (code, err) = forward(home.path(), &["--model", "nobody/nothing"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("nobody/nothing: config.json is not in the local Hugging Face cache"),
        "{err}"
    );
}
