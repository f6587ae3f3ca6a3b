//! Shared vocabulary of a pass, for the plan, the caches and every backend: where a new
//! token goes (its row and position), the attention head layout, and where rows sit in a
//! fused buffer.

/// The attention head layout of a model.
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// One new token: which cache (batch row) it belongs to and its position.
#[derive(Clone, Copy)]
pub struct TokenAt {
    pub row: usize,
    pub pos: usize,
}

/// Rows of `width` values starting `offset` values into rows of `stride` values, e.g. the
/// keys inside a fused [tokens, q_dim + 2 kv_dim] QKV buffer: stride = q_dim + 2 kv_dim,
/// offset = q_dim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLayout {
    pub stride: usize,
    pub offset: usize,
}

impl RowLayout {
    /// Contiguous rows of `width` values.
    pub fn packed(width: usize) -> Self {
        RowLayout {
            stride: width,
            offset: 0,
        }
    }
}
