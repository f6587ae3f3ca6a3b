//! One error type for the library: every failure a user can cause names what is wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model not found: {0}")]
    ModelNotFound(String),
    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error(
        "unsupported architecture {0:?}: qwen-scope runs Qwen2ForCausalLM and LlamaForCausalLM"
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
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
}
