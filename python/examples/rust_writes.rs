//! The Rust API's answer to a request, for the Python tests to compare with (bit for bit):
//! `rust_writes SPEC.json` runs the request in SPEC with `qwen_scope::CpuModel` directly, no
//! Python involved, and prints every logit and read state as f32 bit patterns.
//!
//! SPEC: {"model": DIR, "rows": [[ids]], "reads": ["resid_post.1", ...],
//!        "writes": [{"site", "row", "pos", "bits": [u32], "add": bool}]}

use qwen_scope::{CpuModel, Engine, LogitsAt, Positions, Request, Site, WriteOp};
use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: rust_writes SPEC.json")?;
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let model = CpuModel::load(spec["model"].as_str().ok_or("model")?, None)?;
    let rows: Vec<Vec<u32>> = serde_json::from_value(spec["rows"].clone())?;
    let n = rows.len();
    let mut req = Request::tokens(rows).logits(LogitsAt::All);
    for site in spec["reads"].as_array().ok_or("reads")? {
        let site = Site::parse(site.as_str().ok_or("read site")?)?;
        for r in 0..n {
            req = req.read(site, r, Positions::All);
        }
    }
    for w in spec["writes"].as_array().ok_or("writes")? {
        let bits: Vec<u32> = serde_json::from_value(w["bits"].clone())?;
        let values: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
        let op = if w["add"].as_bool() == Some(true) {
            WriteOp::Add(values)
        } else {
            WriteOp::Replace(values)
        };
        let site = Site::parse(w["site"].as_str().ok_or("write site")?)?;
        let at = |k: &str| w[k].as_u64().map(|v| v as usize).ok_or("write row/pos");
        req = req.write(site, at("row")?, at("pos")?, op);
    }
    let mut caches: Vec<_> = (0..n).map(|_| model.new_cache()).collect();
    let out = model.forward(&mut caches, &req)?;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let logits: Vec<Value> = out
        .logits
        .iter()
        .map(|l| json!({"row": l.row, "pos": l.pos, "bits": bits(&l.values)}))
        .collect();
    let states: Vec<Value> = out
        .states
        .iter()
        .map(|s| json!({"site": s.site.to_string(), "row": s.row, "pos": s.pos, "bits": bits(&s.values)}))
        .collect();
    println!("{}", json!({"logits": logits, "states": states}));
    Ok(())
}
