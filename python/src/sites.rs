//! Site names: qwen-scope's own (`embed`, `resid_post.<l>`, `final_norm`, as
//! `Site::parse` and `Display`) and TransformerLens' hook names for the same states.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use qwen_scope::Site;

/// The site a name means in a model of `num_layers` blocks.
///
/// TransformerLens names: `hook_embed` and `blocks.0.hook_resid_pre` are the embedding
/// output (Qwen2 adds no positional embedding, so they are the same state);
/// `blocks.{l}.hook_resid_pre` is the output of block l-1; `blocks.{l}.hook_resid_post`
/// the output of block l (for the last block: before the final norm);
/// `ln_final.hook_normalized` the final-normed state the LM head reads.
pub fn site(name: &str, num_layers: usize) -> Result<Site, String> {
    let tl_block = |suffix: &str| {
        name.strip_prefix("blocks.")
            .and_then(|rest| rest.strip_suffix(suffix))
            .and_then(|l| l.parse::<usize>().ok())
    };
    let site = match name {
        "hook_embed" | "embed" => Site::Embed,
        "ln_final.hook_normalized" | "final_norm" => Site::FinalNorm,
        _ => {
            if let Some(l) = tl_block(".hook_resid_post") {
                Site::BlockOut(l)
            } else if let Some(l) = tl_block(".hook_resid_pre") {
                if l >= num_layers {
                    return Err(format!(
                        "site {name:?}: layer {l} out of range: the model has {num_layers} blocks (0..{})",
                        num_layers - 1
                    ));
                }
                match l {
                    0 => Site::Embed,
                    _ => Site::BlockOut(l - 1),
                }
            } else {
                Site::parse(name).map_err(|_| {
                    format!(
                        "unknown site {name:?}: use embed, resid_post.<layer> or final_norm, or the \
                         TransformerLens names hook_embed, blocks.<layer>.hook_resid_pre, \
                         blocks.<layer>.hook_resid_post, ln_final.hook_normalized"
                    )
                })?
            }
        }
    };
    site.check(num_layers).map_err(|e| e.to_string())?;
    Ok(site)
}

/// `parse_site(name, num_layers)`: the qwen-scope name of a site given by either name.
#[pyfunction]
pub fn parse_site(name: &str, num_layers: usize) -> PyResult<String> {
    site(name, num_layers)
        .map(|s| s.to_string())
        .map_err(PyValueError::new_err)
}
