//! qwen-scope: a Qwen2-family inference engine whose residual stream is data, built for
//! PatchScopes experiments.
//!
//! Data flows one way: [`hub`] finds the files, [`config`], [`weights`] and [`tokenizer`]
//! read them into a [`model::Model`]; a [`request`] names what a pass starts from, the
//! reads and writes of [`stream`] and the logits asked; the [`backend`] supplies the ops,
//! and [`forward`] runs the CPU pass against the caches of [`kv`].
//!
//! ```no_run
//! use qwen_scope::{LogitsAt, Model, Positions, Request, Site, WriteOp};
//!
//! let model = Model::load("models/qwen2.5-coder-0.5b", None)?;
//! let ids = model.tokenizer.encode("The capital of France is")?;
//! let steer = vec![0.1f32; model.config.hidden_size];
//! let req = Request::tokens(vec![ids])
//!     .read(Site::BlockOut(12), 0, Positions::Last) // read after block 12
//!     .write(Site::BlockOut(5), 0, 2, WriteOp::Add(steer)) // add a vector after block 5
//!     .logits(LogitsAt::Last);
//! let out = model.forward(&mut [model.new_cache()], &req)?;
//! let after_block_12 = out.state(Site::BlockOut(12), 0, 4);
//! # Ok::<(), qwen_scope::Error>(())
//! ```

pub mod backend;
pub mod config;
pub mod data;
pub mod device;
pub mod digest;
pub mod engine;
pub mod error;
pub mod forward;
pub mod generate;
pub mod hub;
pub mod kv;
pub mod model;
pub mod patchscope;
mod plan;
pub mod report;
pub mod request;
pub mod shape;
pub mod stream;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, Config};
pub use engine::{Cache, Engine};
pub use error::{Error, Result};
pub use kv::KvCache;
pub use model::Model;
pub use request::{HiddenRow, Input, Logits, LogitsAt, Output, Request};
pub use stream::{Positions, Read, Site, State, Write, WriteOp};
