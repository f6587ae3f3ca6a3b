//! Safe wrappers around the kernels in kernels/*.cu, one per kernel family. Each checks
//! the buffer sizes against the shape it is given and fails with [`Error::Internal`] instead
//! of launching out of bounds; each names its CPU twin in [`crate::backend::cpu`].
//!
//! Buffers are anything cudarc can give a device pointer of (`CudaSlice`, `CudaView`,
//! `CudaViewMut`), allocated on [`Device::stream`]. The two functions that go through a
//! [`KvTable`] (raw cache pointers) are safe because the table borrows what it points to.

use super::device::Device;
use super::{CudaFloat, DType};
use crate::error::{Error, Result};
pub use crate::shape::RowLayout;
use crate::shape::{AttnShape, TokenAt};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use std::ffi::c_void;
use std::marker::PhantomData;

/// Every kernel the module must provide; all are looked up when a [`Device`] is created.
pub(crate) const KERNELS: &[&str] = &[
    "embedding_f32",
    "embedding_f16",
    "embedding_bf16",
    "rmsnorm_f32",
    "rmsnorm_f16",
    "rmsnorm_bf16",
    "rmsnorm_heads_f32",
    "rope_f32",
    "swiglu_f32",
    "swiglu_f16",
    "swiglu_bf16",
    "cast_f32_f16",
    "cast_f32_bf16",
    "cast_f16_f32",
    "cast_bf16_f32",
    "add_inplace_f32",
    "write_rows_f32",
    "gather_rows_f32",
    "add_bias_f32",
    "add_bias_f16",
    "add_bias_bf16",
    "log_softmax_f32",
    "argmax_f32",
    "topk_f32",
    "attention_f32_d64",
    "attention_f32_d128",
    "attention_f32_d256",
    "attention_f16_d64",
    "attention_f16_d128",
    "attention_f16_d256",
    "attention_bf16_d64",
    "attention_bf16_d128",
    "attention_bf16_d256",
    "attention_combine",
    "kv_append_f32",
    "kv_append_f16",
    "kv_append_bf16",
];

/// Pointers to the listed locals, as cuLaunchKernel takes its parameters. Only plain
/// identifiers are accepted so that every pointee is a named local that outlives the
/// launch (a temporary would be dropped at the end of the `let`).
macro_rules! args {
    ($($a:ident),* $(,)?) => {
        [$((&$a) as *const _ as *mut c_void),*]
    };
}

const BLOCK: u32 = 256;
/// Grid-stride kernels never need more blocks than this.
const MAX_BLOCKS: usize = 1 << 20;

fn blocks_for(n: usize, block: u32) -> u32 {
    n.div_ceil(block as usize).clamp(1, MAX_BLOCKS) as u32
}

/// Threads for a one-block-per-row kernel: a multiple of 32, at most `max`.
fn row_block(width: usize, max: u32) -> u32 {
    (width.div_ceil(32) * 32).clamp(32, max as usize) as u32
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::input(format!("{what} = {v} does not fit in 32 bits")))
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Internal(msg()))
    }
}

fn eq_len(op: &str, what: &str, got: usize, want: usize) -> Result<()> {
    check(got == want, || {
        format!("{op}: {what} has {got} elements, the shape needs {want}")
    })
}

impl RowLayout {
    /// Checks that `rows` rows of `width` values fit in a buffer of `len` values.
    fn check(&self, op: &str, rows: usize, width: usize, len: usize) -> Result<()> {
        check(self.offset + width <= self.stride, || {
            format!(
                "{op}: offset {} + width {width} exceeds the row stride {}",
                self.offset, self.stride
            )
        })?;
        if rows == 0 {
            return Ok(());
        }
        let need = (rows - 1) * self.stride + self.offset + width;
        check(need <= len, || {
            format!(
                "{op}: {rows} rows of stride {} need {need} values, the buffer has {len}",
                self.stride
            )
        })
    }
}

mod attention;
mod cast;
mod embedding;
mod logits;
mod residual;
mod rmsnorm;
mod rope;
mod swiglu;

pub use attention::*;
pub use cast::*;
pub use embedding::*;
pub use logits::*;
pub use residual::*;
pub use rmsnorm::*;
pub use rope::*;
pub use swiglu::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_is_in_the_sources() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut all = String::new();
        for e in std::fs::read_dir(dir).unwrap() {
            all.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
        }
        for k in KERNELS {
            // Entry points are either written out or instantiated through a macro.
            assert!(
                all.contains(&format!("{k}(")) || all.contains(&format!("({k},")),
                "kernel {k} not found in kernels/"
            );
        }
    }

    #[test]
    fn tiles_cover_every_token_once_within_one_row() {
        let rows = [5usize, 1, 17, 2, 16];
        let mut tokens = Vec::new();
        for (r, &n) in rows.iter().enumerate() {
            tokens.extend((0..n).map(|p| TokenAt {
                row: r,
                pos: 40 + p,
            }));
        }
        // Row 1 again, after the others (rows need not be contiguous).
        tokens.push(TokenAt { row: 1, pos: 41 });
        for tile_tokens in [1, 2, 5, 16] {
            let t = build_tiles(&tokens, tile_tokens);
            let mut seen = vec![0; tokens.len()];
            for c in t.chunks(2) {
                let (first, count) = (c[0] as usize, c[1] as usize);
                assert!(count >= 1 && count <= tile_tokens);
                for i in first..first + count {
                    seen[i] += 1;
                    assert_eq!(tokens[i].row, tokens[first].row);
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "tile_tokens {tile_tokens}");
        }
    }

    #[test]
    fn shared_memory_fits_an_sm75_opt_in() {
        assert!(attention_smem_bytes(256, 257) <= 64 * 1024);
        assert!(attention_smem_bytes(128, 129) <= 48 * 1024);
        // sm_60 (P100) has 48 KiB per block and no more: head_dim 256 drops the padding
        assert_eq!(attention_kv_ld(256, 48 * 1024), 256);
        assert!(attention_smem_bytes(256, 256) <= 48 * 1024);
        assert_eq!(attention_kv_ld(256, 64 * 1024), 257);
        assert_eq!(attention_kv_ld(128, 48 * 1024), 129);
    }
}
