//! `qwen-scope inspect`: one patchscope by hand, e.g. an entity description: the generated
//! text for each chosen source layer (the work is [`qwen_scope::patchscope::inspect`]).

use anyhow::Result;
use qwen_scope::patchscope::inspect::{inspect as run, InspectSettings};
use qwen_scope::patchscope::mapping::load_affines;
use qwen_scope::patchscope::ENTITY_DESCRIPTION_PROMPT;
use qwen_scope::Engine;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Source text.
    #[arg(long)]
    pub source: String,
    /// Source token position; negative counts from the end (-1 = last token).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub position: i64,
    /// Target prompt with the placeholder "x" (default: the paper's entity description).
    #[arg(long, default_value = ENTITY_DESCRIPTION_PROMPT)]
    pub target: String,
    /// Source layers: all, 3, 0-5, 0,4,8-10, 0-23:4.
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// Target layer; default: the same as the source layer.
    #[arg(long)]
    pub target_layer: Option<usize>,
    #[arg(long, default_value_t = 20)]
    pub max_new: usize,
    /// Affine maps to apply to the layer-l source state first (a safetensors file with
    /// `layer.<l>` tensors, e.g. the tuned_lens.safetensors a sweep writes).
    #[arg(long)]
    pub mapping: Option<std::path::PathBuf>,
}

pub fn inspect<E: Engine>(model: &E, a: &InspectArgs) -> Result<()> {
    let settings = InspectSettings {
        source: a.source.clone(),
        position: a.position,
        target: a.target.clone(),
        layers: a.layers.clone(),
        target_layer: a.target_layer,
        max_new: a.max_new,
        mapping: a.mapping.as_deref().map(load_affines).transpose()?,
    };
    let result = run(model, &settings)?;
    println!(
        "source token {} = {:?}; target placeholder at token {}",
        result.position, result.source_token, result.patch_pos
    );
    for r in &result.rows {
        println!(
            "layer {:>2} -> {:>2}: {:?}",
            r.source_layer, r.target_layer, r.text
        );
    }
    Ok(())
}
