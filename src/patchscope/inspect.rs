//! One patchscope by hand (`qwen-scope inspect`, `Model.inspect` in Python): a source
//! text's state at one token, read at each chosen layer, optionally mapped, patched into a
//! target prompt at its placeholder, and the greedy continuation decoded.

use super::attributes::{parse_layers, placeholder_position};
use super::mapping::{Affine, Mapping};
use super::target::Target;
use super::{source_site, target_site, ENTITY_DESCRIPTION_PROMPT};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::request::{LogitsAt, Request};
use crate::stream::Positions;

#[derive(Debug, Clone)]
pub struct InspectSettings {
    pub source: String,
    /// Source token position; negative counts from the end (-1 = last token).
    pub position: i64,
    /// Target prompt with the placeholder "x".
    pub target: String,
    /// Source layers: all, 3, 0-5, 0,4,8-10, 0-23:4.
    pub layers: String,
    /// Target layer; default: the same as the source layer.
    pub target_layer: Option<usize>,
    pub max_new: usize,
    /// Affine maps applied to the layer-l source state first (one per layer).
    pub mapping: Option<Vec<Affine>>,
}

impl InspectSettings {
    pub fn new(source: &str) -> Self {
        InspectSettings {
            source: source.to_string(),
            position: -1,
            target: ENTITY_DESCRIPTION_PROMPT.to_string(),
            layers: "all".into(),
            target_layer: None,
            max_new: 20,
            mapping: None,
        }
    }
}

/// The continuation for one (source layer, target layer).
#[derive(Debug, Clone)]
pub struct Inspected {
    pub source_layer: usize,
    pub target_layer: usize,
    pub tokens: Vec<u32>,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Inspection {
    /// The source token patched, and its text.
    pub position: usize,
    pub source_token: String,
    /// The target's placeholder token.
    pub patch_pos: usize,
    pub rows: Vec<Inspected>,
}

pub fn inspect<E: Engine>(model: &E, a: &InspectSettings) -> Result<Inspection> {
    let num_layers = model.num_layers();
    let layers = parse_layers("--layers", &a.layers, num_layers)?;
    if let Some(t) = a.target_layer.filter(|&t| t >= num_layers) {
        return Err(Error::Input(format!(
            "--target-layer {t} is out of range: the model has {num_layers} blocks (0..{})",
            num_layers - 1
        )));
    }
    let tokens = model.tokenizer().encode(&a.source)?;
    if tokens.is_empty() {
        return Err(Error::Input(format!(
            "--source {:?}: empty source text (no tokens)",
            a.source
        )));
    }
    let n = tokens.len() as i64;
    let pos = if a.position < 0 {
        n + a.position
    } else {
        a.position
    };
    if pos < 0 || pos >= n {
        return Err(Error::Input(format!(
            "--position {} out of range: the source {:?} has {n} tokens (positions 0..{}, or \
             -{n}..-1 from the end)",
            a.position,
            a.source,
            n - 1
        )));
    }
    let pos = pos as usize;
    if let Some(m) = &a.mapping {
        let width = m.first().map_or(0, |m| m.inp);
        if m.len() != num_layers || width != model.config().hidden_size {
            return Err(Error::Input(format!(
                "--mapping holds {} maps of width {width}; the model has {num_layers} layers of width {}",
                m.len(),
                model.config().hidden_size
            )));
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
    let mut rows = Vec::with_capacity(layers.len());
    for &l in &layers {
        let lt = a.target_layer.unwrap_or(l);
        let state = out
            .state(source_site(l, num_layers), 0, pos)
            .expect("state was read");
        let state = match &a.mapping {
            Some(m) => Mapping::Affine(m[l].clone()).apply(state),
            None => Mapping::Identity.apply(state),
        };
        let generated = target.generate(
            model,
            target_site(l, lt, num_layers),
            vec![state],
            a.max_new,
        )?;
        let tokens = generated.into_iter().next().unwrap_or_default();
        let text = model.tokenizer().decode(&tokens)?;
        rows.push(Inspected {
            source_layer: l,
            target_layer: lt,
            tokens,
            text,
        });
    }
    Ok(Inspection {
        position: pos,
        source_token: model.tokenizer().decode(&[tokens[pos]])?,
        patch_pos,
        rows,
    })
}
