//! `qwen-scope forward` and `qwen-scope generate`: one pass or one generation, by hand.

use anyhow::{bail, Result};
use qwen_scope::backend::cpu::logits::{log_softmax, top_k};
use qwen_scope::report::write_atomic;
use qwen_scope::{Engine, LogitsAt, Positions, Request, Site};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

pub fn encode_all<E: Engine>(model: &E, prompts: &[String]) -> Result<Vec<Vec<u32>>> {
    prompts
        .iter()
        .map(|p| {
            let ids = model.tokenizer().encode(p)?;
            if ids.is_empty() {
                bail!("empty prompt: {p:?} has no tokens");
            }
            Ok(ids)
        })
        .collect()
}

pub fn forward<E: Engine>(model: &E, prompts: &[String], out: &Path, k: usize) -> Result<()> {
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "safetensors" | "json") {
        bail!(
            "--out must end in .safetensors or .json, got {}",
            out.display()
        );
    }
    let rows = encode_all(model, prompts)?;
    let sites: Vec<Site> = std::iter::once(Site::Embed)
        .chain((0..model.num_layers()).map(Site::BlockOut))
        .chain(std::iter::once(Site::FinalNorm))
        .collect();
    let mut req = Request::tokens(rows.clone()).logits(LogitsAt::All);
    for r in 0..rows.len() {
        for &s in &sites {
            req = req.read(s, r, Positions::All);
        }
    }
    let mut caches: Vec<_> = rows.iter().map(|_| model.new_cache()).collect();
    let t = Instant::now();
    let res = model.forward(&mut caches, &req)?;
    let secs = t.elapsed().as_secs_f64();
    let n_tokens: usize = rows.iter().map(Vec::len).sum();
    eprintln!(
        "forward: {n_tokens} tokens in {secs:.3}s ({:.1} tokens/s)",
        n_tokens as f64 / secs
    );

    // name -> (shape, values); every tensor is per row, positions in order.
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (r, ids) in rows.iter().enumerate() {
        let t = ids.len();
        let logits: Vec<f32> = (0..t)
            .flat_map(|p| res.logits_at(r, p).expect("all logits were asked").to_vec())
            .collect();
        tensors.insert(
            format!("row{r}.logits"),
            (vec![t, model.config().vocab_size], logits),
        );
        for &s in &sites {
            let vals: Vec<f32> = (0..t)
                .flat_map(|p| res.state(s, r, p).expect("all states were asked").to_vec())
                .collect();
            tensors.insert(
                format!("row{r}.{s}"),
                (vec![t, model.config().hidden_size], vals),
            );
        }
        let last = res.last_logits(r).expect("logits");
        let lp = log_softmax(last);
        println!("prompt {r}: {:?} ({t} tokens)", prompts[r]);
        for (id, _) in top_k(last, k) {
            println!(
                "  {:>8.4}  {:>6}  {:?}",
                lp[id],
                id,
                model.tokenizer().decode(&[id as u32])?
            );
        }
    }
    if ext == "json" {
        let json = serde_json::json!({
            "prompts": prompts,
            "input_ids": rows,
            "tensors": tensors.iter().map(|(k, (shape, v))| (k.clone(), serde_json::json!({"shape": shape, "values": v}))).collect::<serde_json::Map<_, _>>(),
        });
        write_atomic(out, &serde_json::to_vec(&json)?)?;
    } else {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(k, (shape, v))| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytemuck::cast_slice(v),
                )?;
                Ok((k.clone(), view))
            })
            .collect::<Result<_>>()?;
        write_atomic(out, &safetensors::serialize(views, None)?)?;
    }
    eprintln!("wrote {} tensors to {}", tensors.len(), out.display());
    Ok(())
}

pub fn generate<E: Engine>(model: &E, prompt: &str, max_new: usize) -> Result<()> {
    let rows = encode_all(model, &[prompt.to_string()])?;
    // the last generated token is never fed back, so it needs no position of its own
    let limit = model.config().max_position_embeddings;
    let room = (limit + 1).saturating_sub(rows[0].len());
    let n = max_new.min(room.max(1));
    let mut caches = vec![model.new_cache()];
    let t = Instant::now();
    let new = model.greedy(&mut caches, Request::tokens(rows), n)?;
    let secs = t.elapsed().as_secs_f64();
    println!("{}{}", prompt, model.tokenizer().decode(&new[0])?);
    eprintln!("{} tokens in {secs:.2}s", new[0].len());
    if n < max_new {
        eprintln!(
            "note: stopped after {n} of {max_new} tokens: the model's context limit is {limit} positions"
        );
    }
    Ok(())
}
