//! Compute backends. The CPU backend in f32 is the reference every other backend is
//! tested against; each op family lives in its own file.

pub mod cpu;
pub mod cuda;
