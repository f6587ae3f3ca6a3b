//! The patchscope layer: source (prompt, position, layer) -> mapping -> target (prompt,
//! position, layer), on top of the residual-stream API. Layer numbering follows the paper
//! and the official code: the layer-l representation is HF's `hidden_states[l + 1]`.

pub mod attributes;
pub mod demonstrations;
pub mod extraction;
pub mod inspect;
pub mod mapping;
pub mod next_token;
pub mod relations;
pub mod sweep;
pub mod target;

use crate::stream::Site;

/// The paper's token-identity target prompt; the patch goes on its last token ("?").
pub const TOKEN_IDENTITY_PROMPT: &str = "cat -> cat\n1135 -> 1135\nhello -> hello\n?";

/// The paper's entity-description target prompt, patched at its placeholder "x".
pub const ENTITY_DESCRIPTION_PROMPT: &str =
    "Syria: Country in the Middle East, Leonardo DiCaprio: American actor, \
     Samsung: South Korean multinational major appliance and consumer electronics corporation, x";

/// Where the layer-`layer` source representation is read: the output of block `layer`,
/// except for the last layer, whose HF representation is the final-normed state.
pub fn source_site(layer: usize, num_layers: usize) -> Site {
    if layer + 1 == num_layers {
        Site::FinalNorm
    } else {
        Site::BlockOut(layer)
    }
}

/// Where a patch into target layer `target_layer` is written. The final-layer rule
/// (official `skip_final_ln`): when source and target are both the last layer, the patched
/// state is already normed, so it replaces the final-normed state.
pub fn target_site(source_layer: usize, target_layer: usize, num_layers: usize) -> Site {
    if source_layer + 1 == num_layers && target_layer + 1 == num_layers {
        Site::FinalNorm
    } else {
        Site::BlockOut(target_layer)
    }
}

/// SplitMix64: a one-line RNG any reimplementation can reproduce exactly.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seeded source position of prompt `index` (uniform over its tokens).
pub(crate) fn source_position(seed: u64, index: usize, num_tokens: usize) -> usize {
    (splitmix64(seed.wrapping_add(index as u64)) % num_tokens as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // First outputs of the reference SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn final_layer_rule() {
        assert_eq!(source_site(3, 4), Site::FinalNorm);
        assert_eq!(source_site(2, 4), Site::BlockOut(2));
        assert_eq!(target_site(3, 3, 4), Site::FinalNorm);
        assert_eq!(target_site(2, 3, 4), Site::BlockOut(3));
        assert_eq!(target_site(3, 1, 4), Site::BlockOut(1));
    }
}
