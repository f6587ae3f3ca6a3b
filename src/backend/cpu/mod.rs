//! The f32 CPU backend: the model on the CPU ([`CpuModel`], model.rs) and one file per op
//! family, multi-threaded with rayon.

pub mod attention;
pub mod embedding;
pub(crate) mod head_argmax;
pub mod logits;
pub mod matmul;
pub mod model;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

pub use model::CpuModel;
