//! The f32 CPU backend: one file per op family, multi-threaded with rayon.

pub mod attention;
pub mod embedding;
pub mod head_argmax;
pub mod logits;
pub mod matmul;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
