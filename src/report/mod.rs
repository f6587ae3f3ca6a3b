//! What a run leaves behind: a journal that survives interruption, CSV/JSON tables, plots.

pub mod accuracy;
pub mod atomic;
pub mod journal;
pub mod plot;
pub mod shard;
pub mod summary;

/// Writes `bytes` to `path`, whole or not at all ([`atomic::write`]).
pub use atomic::write as write_atomic;
