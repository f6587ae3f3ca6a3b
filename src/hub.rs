//! Where a model's files are: a local folder, or a Hugging Face repo id resolved through
//! hf-hub (honouring HF_HOME, HF_HUB_OFFLINE and a revision).

use crate::digest::file_fingerprint;
use crate::error::{Error, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The files that make a model.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
    pub tokenizer: PathBuf,
}

impl ModelFiles {
    /// Each file's name and [`file_fingerprint`]: what a results folder records, so that
    /// resuming it with weights changed in place is refused.
    pub fn fingerprint(&self) -> Result<Vec<(String, String)>> {
        let mut all = vec![&self.config, &self.tokenizer];
        all.extend(&self.weights);
        all.into_iter()
            .map(|p| {
                let name = p.file_name().map_or(p.display().to_string(), |n| {
                    n.to_string_lossy().into_owned()
                });
                Ok((name, file_fingerprint(p)?))
            })
            .collect()
    }
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// Resolves `spec`: an existing folder is used as is; anything else must look like a repo id.
pub fn resolve(spec: &str, revision: Option<&str>) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        return from_folder(path);
    }
    let looks_like_repo =
        spec.split('/').count() == 2 && !spec.starts_with(['.', '/']) && !path.exists();
    if !looks_like_repo {
        return Err(Error::ModelNotFound(format!(
            "{spec} is neither a model folder nor a Hugging Face repo id (owner/name)"
        )));
    }
    from_hub(spec, revision)
}

fn from_folder(dir: &Path) -> Result<ModelFiles> {
    let need = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::ModelNotFound(format!(
                "{} is missing (expected in model folder {})",
                name,
                dir.display()
            )))
        }
    };
    let config = need("config.json")?;
    let tokenizer = need("tokenizer.json")?;
    let weights = if dir.join(INDEX).is_file() {
        shard_names(&dir.join(INDEX))?
            .iter()
            .map(|n| need(n))
            .collect::<Result<_>>()?
    } else if dir.join(SINGLE).is_file() {
        vec![dir.join(SINGLE)]
    } else {
        return Err(Error::ModelNotFound(format!(
            "no {SINGLE} or {INDEX} in model folder {}",
            dir.display()
        )));
    };
    Ok(ModelFiles {
        config,
        weights,
        tokenizer,
    })
}

/// The shard file names listed in a model.safetensors.index.json.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let bad = |msg: &str| Error::Safetensors {
        path: index.to_path_buf(),
        msg: msg.to_string(),
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object"))?;
    let names: BTreeSet<String> = map
        .values()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("weight_map values must be file names"))
        })
        .collect::<Result<_>>()?;
    Ok(names.into_iter().collect())
}

/// HF_HUB_OFFLINE as huggingface_hub reads it: 1, true, yes or on, in any case.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Fetches one file of a repo (from the cache, or the Hub).
type Getter<'a> = Box<dyn Fn(&str) -> Result<PathBuf> + 'a>;

fn from_hub(repo_id: &str, revision: Option<&str>) -> Result<ModelFiles> {
    let repo = Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    );
    let get: Getter<'_> = if offline() {
        let cached = Cache::from_env().repo(repo);
        Box::new(move |name: &str| {
            cached.get(name).ok_or_else(|| {
                Error::Hub(format!(
                    "{repo_id}: {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
                ))
            })
        })
    } else {
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .build()
            .map_err(|e| Error::Hub(e.to_string()))?
            .repo(repo);
        Box::new(move |name: &str| {
            api.get(name)
                .map_err(|e| Error::Hub(format!("{repo_id}: cannot get {name}: {e}")))
        })
    };
    let config = get("config.json")?;
    let tokenizer = get("tokenizer.json")?;
    let weights = match get(INDEX) {
        Ok(index) => shard_names(&index)?
            .iter()
            .map(|n| get(n))
            .collect::<Result<_>>()?,
        Err(_) => vec![get(SINGLE)?],
    };
    Ok(ModelFiles {
        config,
        weights,
        tokenizer,
    })
}
