//! One error type for the library: every failure a user can cause names what is wrong, and
//! [`Error::Internal`] keeps apart the failures no input should cause (a broken invariant
//! between the pass and a backend's ops), so that a bug is never reported as bad input.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed. (The I/O error is part of the message, and deliberately not
    /// the error's `source`, so a chain printed with `{:#}` does not say it twice.)
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Writing an output file failed (a full disk, a read-only folder, ...): the file
    /// named is the one being written, under its real name.
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("model not found: {0}")]
    ModelNotFound(String),
    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error(
        "unsupported architecture {0:?}: qwen-scope runs Qwen2ForCausalLM, Qwen3ForCausalLM and LlamaForCausalLM"
    )]
    UnknownArchitecture(String),
    #[error("{path}: cannot read safetensors: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("hub: {0}")]
    Hub(String),
    #[error("{0}")]
    Input(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A check between qwen-scope's own layers failed: a bug, not the caller's input.
    #[error("internal error (a qwen-scope bug; please report it): {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Write {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }

    pub(crate) fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }
}
