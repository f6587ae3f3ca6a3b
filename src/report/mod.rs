//! What a run leaves behind: a journal that survives interruption, CSV/JSON tables, plots.

pub mod accuracy;
pub mod journal;
pub mod plot;
pub mod summary;

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees
/// half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
