//! SwiGLU: silu(gate) * up, from the fused [tokens, 2 * intermediate] gate/up product.

use rayon::prelude::*;

pub fn swiglu(gate_up: &[f32], intermediate: usize, out: &mut [f32]) {
    assert_eq!(gate_up.len(), 2 * out.len(), "swiglu: shapes differ");
    out.par_chunks_mut(intermediate)
        .zip(gate_up.par_chunks(2 * intermediate))
        .for_each(|(o, gu)| {
            let (gate, up) = gu.split_at(intermediate);
            for ((oi, g), u) in o.iter_mut().zip(gate).zip(up) {
                *oi = silu(*g) * u;
            }
        });
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}
