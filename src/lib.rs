//! qwen-scope: a Qwen2-family inference engine whose residual stream is data, built for
//! PatchScopes experiments.
//!
//! Data flows one way:
//! - [`hub`] finds a model's files; [`config`], `weights` and [`tokenizer`] read them.
//! - `model` is the model's definition, once for every backend: the
//!   decoder block's recipe and the pass (src/model.rs), checked up front by the plan
//!   (src/plan.rs).
//! - [`backend`] runs it: [`CpuModel`] (backend/cpu/model.rs, f32, the reference) and
//!   [`CudaModel`](backend::cuda::CudaModel) (backend/cuda/model.rs), each with one file per
//!   op family (backend/cpu/rope.rs beside backend/cuda/kernels/rope.rs and
//!   kernels/rope.cu).
//! - A [`Request`] ([`request`]) names what a pass starts from, where the stream is read
//!   and written ([`stream`]: [`Site`], [`WriteOp`]) and the logits asked; [`Engine`] runs
//!   it against the caches of [`kv`] on either backend.
//! - [`patchscope`] builds the experiments on [`Engine`]; [`report`] writes their tables,
//!   plots and journals.
//!
//! The public API is what a library user needs: the two models and [`Engine`], the
//! request and stream types, [`Config`], [`Tokenizer`](tokenizer::Tokenizer), [`hub`], the
//! experiments and [`Error`]. The op modules under [`backend`] (the CPU twins and the
//! kernel wrappers) are public so that tests/cuda_kernels.rs and the benches can check
//! each kernel against its twin; they are not meant for library use.
//!
//! ```no_run
//! use qwen_scope::{CpuModel, Engine, LogitsAt, Positions, Request, Site, WriteOp};
//!
//! let model = CpuModel::load("models/qwen2.5-coder-0.5b", None)?;
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
pub mod hub;
pub mod kv;
mod model;
pub mod patchscope;
mod plan;
pub mod report;
pub mod request;
pub mod shape;
pub mod stream;
pub mod tokenizer;
mod weights;

pub use backend::cpu::CpuModel;
pub use config::{Arch, Config};
pub use engine::{Cache, Engine};
pub use error::{Error, Result};
pub use kv::KvCache;
pub use request::{HiddenRow, Input, Logits, LogitsAt, Output, Request};
pub use stream::{Positions, Read, Site, State, Write, WriteOp};
