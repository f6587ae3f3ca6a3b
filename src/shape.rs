//! Shared vocabulary of a pass, for the plan, the caches and every backend: where a new
//! token goes (its row and position) and the attention head layout.

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
