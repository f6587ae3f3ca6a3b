//! The residual stream as data: sites, reads and writes that a forward pass carries out.
//!
//! Correspondence with transformers' `output_hidden_states` (L = number of blocks):
//!
//! | site            | meaning                         | HF `hidden_states` index |
//! |-----------------|---------------------------------|--------------------------|
//! | `Embed`         | embedding output = block 0 input | `0`                     |
//! | `BlockOut(l)`   | raw output of block l           | `l + 1`, for l < L-1     |
//! | `BlockOut(L-1)` | raw output of the last block    | not exposed by HF        |
//! | `FinalNorm`     | final RMSNorm of the last block | `L` (HF's last entry)    |

use crate::error::{Error, Result};
use std::fmt;

/// A point in the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// The embedding output, i.e. the input of block 0.
    Embed,
    /// The residual stream after block `l` (0-based), before any later block.
    BlockOut(usize),
    /// The last block's output after the final RMSNorm: what the LM head reads.
    FinalNorm,
}

impl Site {
    /// Position of the site along the pass (Embed = 0, BlockOut(l) = l + 1, FinalNorm = L + 1).
    pub fn order(self, num_layers: usize) -> usize {
        match self {
            Site::Embed => 0,
            Site::BlockOut(l) => l + 1,
            Site::FinalNorm => num_layers + 1,
        }
    }

    /// The first block that runs after this site (num_layers if none).
    pub fn next_block(self, num_layers: usize) -> usize {
        match self {
            Site::Embed => 0,
            Site::BlockOut(l) => l + 1,
            Site::FinalNorm => num_layers,
        }
    }

    /// The index of this state in transformers' `hidden_states` tuple, where it has one.
    pub fn hf_hidden_states_index(self, num_layers: usize) -> Option<usize> {
        match self {
            Site::Embed => Some(0),
            Site::BlockOut(l) if l + 1 < num_layers => Some(l + 1),
            Site::BlockOut(_) => None,
            Site::FinalNorm => Some(num_layers),
        }
    }

    pub fn check(self, num_layers: usize) -> Result<()> {
        match self {
            Site::BlockOut(l) if l >= num_layers => Err(Error::input(format!(
                "site {self}: layer {l} out of range: the model has {num_layers} blocks (0..{})",
                num_layers - 1
            ))),
            _ => Ok(()),
        }
    }

    /// Parses the names `Display` writes: `embed`, `resid_post.<l>`, `final_norm`.
    pub fn parse(s: &str) -> Result<Site> {
        match s {
            "embed" => Ok(Site::Embed),
            "final_norm" => Ok(Site::FinalNorm),
            _ => s
                .strip_prefix("resid_post.")
                .and_then(|l| l.parse().ok())
                .map(Site::BlockOut)
                .ok_or_else(|| {
                    Error::input(format!(
                        "unknown site {s:?}: use embed, resid_post.<layer> or final_norm"
                    ))
                }),
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Embed => write!(f, "embed"),
            Site::BlockOut(l) => write!(f, "resid_post.{l}"),
            Site::FinalNorm => write!(f, "final_norm"),
        }
    }
}

/// Which positions of a row (absolute sequence positions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    /// Every position computed in this pass.
    All,
    /// The last position computed in this pass.
    Last,
    At(Vec<usize>),
}

/// Read the state at `site` for `row` at `positions`.
#[derive(Debug, Clone)]
pub struct Read {
    pub site: Site,
    pub row: usize,
    pub positions: Positions,
}

#[derive(Debug, Clone)]
pub enum WriteOp {
    Replace(Vec<f32>),
    Add(Vec<f32>),
}

/// Change the state at (`site`, `row`, `pos`) before the pass goes on.
#[derive(Debug, Clone)]
pub struct Write {
    pub site: Site,
    pub row: usize,
    pub pos: usize,
    pub op: WriteOp,
}

/// One state vector read during a pass.
#[derive(Debug, Clone)]
pub struct State {
    pub site: Site,
    pub row: usize,
    pub pos: usize,
    pub values: Vec<f32>,
}
