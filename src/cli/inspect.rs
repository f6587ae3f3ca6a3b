//! `qwen-scope inspect`: one patchscope by hand, e.g. an entity description: the generated
//! text for each chosen source layer.

use anyhow::{bail, Result};
use qwen_scope::patchscope::attributes::{parse_layers, placeholder_position};
use qwen_scope::patchscope::mapping::{load_affines, Mapping};
use qwen_scope::patchscope::target::Target;
use qwen_scope::patchscope::{source_site, target_site, ENTITY_DESCRIPTION_PROMPT};
use qwen_scope::{Engine, LogitsAt, Positions, Request};

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
    let num_layers = model.num_layers();
    let layers = parse_layers(&a.layers, num_layers)?;
    if let Some(t) = a.target_layer {
        model.config().check_layer(t)?;
    }
    let tokens = model.tokenizer().encode(&a.source)?;
    if tokens.is_empty() {
        bail!("empty source text");
    }
    let n = tokens.len() as i64;
    let pos = if a.position < 0 {
        n + a.position
    } else {
        a.position
    };
    if pos < 0 || pos >= n {
        bail!(
            "position {} out of range: the source has {n} tokens",
            a.position
        );
    }
    let pos = pos as usize;
    let maps = a.mapping.as_deref().map(load_affines).transpose()?;
    if let Some(m) = &maps {
        if m.len() != num_layers || m[0].inp != model.config().hidden_size {
            bail!(
                "--mapping holds {} maps of width {}; the model has {num_layers} layers of width {}",
                m.len(),
                m[0].inp,
                model.config().hidden_size
            );
        }
    }
    let mut req = Request::tokens(vec![tokens[..=pos].to_vec()]).logits(LogitsAt::None);
    for &l in &layers {
        req = req.read(source_site(l, num_layers), 0, Positions::Last);
    }
    let out = model.forward(&mut [model.new_cache()], &req)?;
    let target_tokens = model.tokenizer().encode(&a.target)?;
    let patch_pos = placeholder_position(model.tokenizer(), &target_tokens)?;
    let target = Target::new(model, target_tokens, patch_pos)?;
    println!(
        "source token {pos} = {:?}; target placeholder at token {patch_pos}",
        model.tokenizer().decode(&[tokens[pos]])?
    );
    for &l in &layers {
        let lt = a.target_layer.unwrap_or(l);
        let state = out
            .state(source_site(l, num_layers), 0, pos)
            .expect("state was read");
        let state = match &maps {
            Some(m) => Mapping::Affine(m[l].clone()).apply(state),
            None => Mapping::Identity.apply(state),
        };
        let generated = target.generate(
            model,
            target_site(l, lt, num_layers),
            vec![state],
            a.max_new,
        )?;
        let text = model.tokenizer().decode(&generated[0])?;
        println!("layer {l:>2} -> {lt:>2}: {:?}", text);
    }
    Ok(())
}
