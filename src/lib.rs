//! qwen-scope: a Qwen2-family inference engine whose residual stream is data, built for
//! PatchScopes experiments.
//!
//! Data flows one way: [`hub`] finds the files, [`config`], [`weights`] and [`tokenizer`]
//! read them into a [`model::Model`], the [`backend`] supplies the ops, and [`forward`]
//! runs the pass with the reads and writes of [`stream`] against the caches of [`kv`].

pub mod backend;
pub mod config;
pub mod data;
pub mod error;
pub mod forward;
pub mod generate;
pub mod hub;
pub mod kv;
pub mod model;
pub mod patchscope;
mod plan;
pub mod report;
pub mod stream;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, Config};
pub use error::{Error, Result};
pub use forward::{HiddenRow, Input, Logits, LogitsAt, Output, Request};
pub use kv::KvCache;
pub use model::Model;
pub use stream::{Positions, Read, Site, State, Write, WriteOp};
