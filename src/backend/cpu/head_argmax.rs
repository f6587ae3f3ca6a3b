//! The LM head's argmax at a fraction of the LM head's cost: a bf16 screen on the CPU's
//! AMX tiles bounds every logit, and only the tokens the bound cannot rule out are scored
//! exactly in f32. The answer is the argmax of the exact f32 logits (the first index on
//! ties), as `argmax(logits)` gives. What it saves: the f32 LM head of a Qwen2 model is
//! 136M multiply-adds per row, most of a patchscope cell; the AMX screen runs it over an
//! order of magnitude faster, and a handful of tokens per row are rescored.
//!
//! Why the bound holds. With x̂ = bf16(x) and ŵ = bf16(w) (round to nearest), dx = x - x̂,
//! dw = w - ŵ, the screen's sum a = fl(Σ x̂ᵢŵᵢ) (bf16 products are exact in f32, summed
//! in f32) and the exact f32 dot t = fl(Σ xᵢwᵢ) differ by at most
//!     |x·w - x̂·ŵ| + err(a) + err(t) ≤ ‖dx‖‖w‖ + ‖x̂‖‖dw‖ + γ(‖x̂‖‖ŵ‖ + ‖x‖‖w‖)
//! (Cauchy-Schwarz, and γ = 2·K·2⁻²⁴ for K terms: twice the classic summation bound).
//! With ‖ŵ‖ ≤ ‖w‖ + ‖dw‖, every token gets e = α‖w‖ + β‖dw‖ from two numbers per row; a
//! token whose upper bound a + e is below the best lower bound max(a - e) cannot win.

use super::matmul::dot_kernel;
use rayon::prelude::*;

/// Vocabulary columns per screening task (a multiple of 32).
const COLS_PER_TASK: usize = 2048;

/// A bf16 copy of an LM head [vocab, hidden] in AMX tile order, with each row's norms.
pub struct HeadScreen {
    vocab: usize,
    hidden: usize,
    /// Tiles of 16 vocabulary rows × 32 hidden values, [row block][hidden block], each in
    /// the pair-interleaved (VNNI) order AMX reads: tile row r holds, for each of the 16
    /// vocabulary rows, the bf16 pair at hidden 2r, 2r+1 of the block.
    packed: Vec<u16>,
    /// ‖w_j‖ and ‖w_j - bf16(w_j)‖ per vocabulary row (0 past `vocab`).
    norm_w: Vec<f32>,
    norm_dw: Vec<f32>,
}

/// A row's bound coefficients: every token's |screen - exact| ≤ α‖w‖ + β‖dw‖.
struct ScreenRow {
    alpha: f32,
    beta: f32,
}

/// What one task's screen leaves per row: the best lower bound it saw, and the tokens
/// whose upper bound reached the running best lower bound.
struct Screened {
    lower: Vec<f32>,
    candidates: Vec<Vec<(u32, f32)>>,
}

impl HeadScreen {
    /// The screen for `head` ([vocab, hidden], row-major), or `None` where it cannot run:
    /// no AMX-BF16 on this CPU or OS, `QWEN_SCOPE_NO_AMX` set, or a hidden size that is not
    /// a multiple of 32.
    pub fn new(head: &[f32], vocab: usize, hidden: usize) -> Option<HeadScreen> {
        if !hidden.is_multiple_of(32) || vocab == 0 || !amx::usable() {
            return None;
        }
        Some(Self::pack(head, vocab, hidden))
    }

    fn pack(head: &[f32], vocab: usize, hidden: usize) -> HeadScreen {
        assert_eq!(head.len(), vocab * hidden);
        let padded = vocab.div_ceil(32) * 32;
        let k_blocks = hidden / 32;
        let mut packed = vec![0u16; padded * hidden];
        packed
            .par_chunks_mut(16 * hidden)
            .enumerate()
            .for_each(|(nb, tiles)| {
                for (kb, tile) in tiles.chunks_exact_mut(512).enumerate() {
                    for c in 0..16 {
                        let j = nb * 16 + c;
                        if j >= vocab {
                            continue;
                        }
                        let w = &head[j * hidden + kb * 32..][..32];
                        for (r, pair) in w.chunks_exact(2).enumerate() {
                            tile[r * 32 + c * 2] = bf16(pair[0]);
                            tile[r * 32 + c * 2 + 1] = bf16(pair[1]);
                        }
                    }
                }
                debug_assert_eq!(tiles.len(), k_blocks * 512);
            });
        let (norm_w, norm_dw): (Vec<f32>, Vec<f32>) = (0..padded)
            .into_par_iter()
            .map(|j| {
                if j >= vocab {
                    return (0.0, 0.0);
                }
                let (w, dw) = norms(&head[j * hidden..(j + 1) * hidden]);
                (w as f32, dw as f32)
            })
            .unzip();
        HeadScreen {
            vocab,
            hidden,
            packed,
            norm_w,
            norm_dw,
        }
    }

    /// The argmax of `head · x` for each row x of `xs` ([rows, hidden]): exactly the index
    /// `argmax` picks from the f32 logits. `head` is the f32 matrix the screen was made of.
    pub fn argmax(&self, head: &[f32], xs: &[f32]) -> Vec<u32> {
        let k = self.hidden;
        let rows = xs.len() / k;
        let padded_rows = rows.div_ceil(32) * 32;
        let mut xb = vec![0u16; padded_rows * k];
        let mut bounds = Vec::with_capacity(rows);
        for (x, xb) in xs.chunks_exact(k).zip(xb.chunks_exact_mut(k)) {
            bounds.push(screen_row(x, xb));
        }
        let padded_vocab = self.norm_w.len();
        let tasks: Vec<Screened> = (0..padded_vocab.div_ceil(COLS_PER_TASK))
            .into_par_iter()
            .map(|t| {
                let cols = t * COLS_PER_TASK..((t + 1) * COLS_PER_TASK).min(padded_vocab);
                self.screen(cols, &xb, rows, &bounds)
            })
            .collect();
        let dot = dot_kernel();
        (0..rows)
            .into_par_iter()
            .map(|r| {
                let x = &xs[r * k..(r + 1) * k];
                let lower = tasks
                    .iter()
                    .map(|t| t.lower[r])
                    .fold(f32::NEG_INFINITY, f32::max);
                let candidates = tasks.iter().flat_map(|t| &t.candidates[r]);
                let mut best = (f32::NEG_INFINITY, u32::MAX);
                let mut scored = 0;
                for &(j, upper) in candidates {
                    if upper < lower {
                        continue;
                    }
                    scored += 1;
                    let logit = dot(x, &head[j as usize * k..(j as usize + 1) * k]);
                    if logit > best.0 || (logit == best.0 && j < best.1) {
                        best = (logit, j);
                    }
                }
                // a non-finite state has no bound: score every token
                if scored == 0 || !best.0.is_finite() {
                    let logits: Vec<f32> = head.chunks_exact(k).map(|w| dot(x, w)).collect();
                    return super::logits::argmax(&logits) as u32;
                }
                best.1
            })
            .collect()
    }

    /// Screens vocabulary columns `cols` (a multiple of 32 wide) for every row.
    fn screen(
        &self,
        cols: std::ops::Range<usize>,
        xb: &[u16],
        rows: usize,
        bounds: &[ScreenRow],
    ) -> Screened {
        let k = self.hidden;
        let mut lower = vec![f32::NEG_INFINITY; rows];
        let mut candidates = vec![Vec::new(); rows];
        let mut c = [0f32; 32 * 32];
        let _tiles = amx::Tiles::configure();
        for n0 in cols.step_by(32) {
            let b = &self.packed[n0 * k..(n0 + 32) * k];
            for m0 in (0..rows).step_by(32) {
                let a = &xb[m0 * k..(m0 + 32) * k];
                // SAFETY: the tiles are configured; `a` holds 32 rows of k bf16, `b` two
                // blocks of 16 rows × k in tile order, `c` 32 × 32 f32.
                unsafe { amx::block_32x32(a, b, k, &mut c) };
                for r in 0..32.min(rows - m0) {
                    let row = m0 + r;
                    let ScreenRow { alpha, beta } = bounds[row];
                    let mut low = lower[row];
                    let width = 32.min(self.vocab.saturating_sub(n0)); // padding is no token
                    for (col, &approx) in c[r * 32..r * 32 + width].iter().enumerate() {
                        let j = n0 + col;
                        let e = alpha * self.norm_w[j] + beta * self.norm_dw[j];
                        low = low.max(approx - e);
                        if approx + e >= low {
                            candidates[row].push((j as u32, approx + e));
                        }
                    }
                    lower[row] = low;
                }
            }
        }
        Screened { lower, candidates }
    }
}

/// Fills `xb` with bf16(x) and returns the bound's coefficients for x (see the module doc).
fn screen_row(x: &[f32], xb: &mut [u16]) -> ScreenRow {
    let (mut xx, mut hh, mut dd) = (0f64, 0f64, 0f64);
    for (&v, b) in x.iter().zip(xb.iter_mut()) {
        *b = bf16(v);
        let h = f32::from_bits((*b as u32) << 16) as f64;
        let v = v as f64;
        xx += v * v;
        hh += h * h;
        dd += (v - h) * (v - h);
    }
    let (norm_x, norm_xh, norm_dx) = (xx.sqrt(), hh.sqrt(), dd.sqrt());
    let gamma = 2.0 * x.len() as f64 * f64::powi(2.0, -24);
    // 1% on top for the rounding of the bound's own arithmetic in f32
    let alpha = (norm_dx + gamma * (norm_xh + norm_x)) * 1.01;
    let beta = norm_xh * (1.0 + gamma) * 1.01;
    // a non-finite row screens as "every token possible"; `argmax` then scores them all
    let finite = alpha.is_finite() && beta.is_finite();
    ScreenRow {
        alpha: if finite { alpha as f32 } else { f32::INFINITY },
        beta: if finite { beta as f32 } else { f32::INFINITY },
    }
}

/// ‖w‖ and ‖w - bf16(w)‖ in f64.
fn norms(w: &[f32]) -> (f64, f64) {
    let (mut ww, mut dd) = (0f64, 0f64);
    for &v in w {
        let d = v as f64 - f32::from_bits((bf16(v) as u32) << 16) as f64;
        ww += v as f64 * v as f64;
        dd += d * d;
    }
    (ww.sqrt(), dd.sqrt())
}

/// bf16 bits of `v`, rounded to nearest even.
fn bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// AMX through inline assembly (its intrinsics are not stable Rust).
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    /// Whether this CPU has AMX-TILE and AMX-BF16 and the OS lets this process use them.
    pub fn usable() -> bool {
        static USABLE: OnceLock<bool> = OnceLock::new();
        *USABLE.get_or_init(|| {
            if std::env::var_os("QWEN_SCOPE_NO_AMX").is_some() {
                return false;
            }
            // CPUID.(7,0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
                return false;
            }
            request_tile_permission()
        })
    }

    /// Linux hands out the tile state only on request: arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA).
    #[cfg(target_os = "linux")]
    fn request_tile_permission() -> bool {
        let ret: i64;
        // SAFETY: a plain system call that only changes this process's permissions.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") 158i64 => ret, // SYS_arch_prctl
                in("rdi") 0x1023i64,           // ARCH_REQ_XCOMP_PERM
                in("rsi") 18i64,               // XFEATURE_XTILEDATA
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        ret == 0
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_permission() -> bool {
        false
    }

    /// The tile configuration of this thread while alive: eight tiles of 16 rows × 64 bytes.
    pub struct Tiles;

    impl Tiles {
        pub fn configure() -> Tiles {
            let mut cfg = [0u8; 64];
            cfg[0] = 1; // palette 1
            for t in 0..8 {
                cfg[16 + 2 * t] = 64; // bytes per row
                cfg[48 + t] = 16; // rows
            }
            // SAFETY: `usable()` held before any screen exists; cfg is a valid palette-1
            // configuration.
            unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack)) };
            Tiles
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: releases this thread's tile state, configured by `configure`.
            unsafe { asm!("tilerelease", options(nostack)) };
        }
    }

    /// c[32 × 32] = a[32 × k] · b^T, where `a` is bf16 rows of k values and `b` two tile
    /// blocks of 16 vocabulary rows × k (as `HeadScreen::packed`), summed in f32.
    ///
    /// # Safety
    /// The tiles must be configured on this thread (`Tiles::configure`); k is a multiple
    /// of 32, `a` holds 32·k values, `b` 32·k values.
    pub unsafe fn block_32x32(a: &[u16], b: &[u16], k: usize, c: &mut [f32; 1024]) {
        debug_assert!(k.is_multiple_of(32) && a.len() >= 32 * k && b.len() >= 32 * k);
        let a_stride = k * 2; // bytes per row of `a`
        let (mut a0, mut a1) = (a.as_ptr(), a.as_ptr().add(16 * k));
        let (mut b0, mut b1) = (b.as_ptr(), b.as_ptr().add(16 * k));
        let mut steps = k / 32;
        let c = c.as_mut_ptr();
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c0} + {sc}*1], tmm0",
            "tilestored [{c1} + {sc}*1], tmm1",
            "tilestored [{c2} + {sc}*1], tmm2",
            "tilestored [{c3} + {sc}*1], tmm3",
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            b0 = inout(reg) b0,
            b1 = inout(reg) b1,
            steps = inout(reg) steps,
            sa = in(reg) a_stride,
            sb = in(reg) 64usize,
            sc = in(reg) 128usize,
            c0 = in(reg) c,
            c1 = in(reg) c.add(16),
            c2 = in(reg) c.add(16 * 32),
            c3 = in(reg) c.add(16 * 32 + 16),
            options(nostack)
        );
        let _ = (a0, a1, b0, b1, steps);
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub fn usable() -> bool {
        false
    }
    pub struct Tiles;
    impl Tiles {
        pub fn configure() -> Tiles {
            Tiles
        }
    }
    pub unsafe fn block_32x32(_: &[u16], _: &[u16], _: usize, _: &mut [f32; 1024]) {
        unreachable!("no screen is made without AMX")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::logits::argmax;

    /// Logit-like data: a head whose rows share a direction, states near it, and exact ties.
    fn case(vocab: usize, hidden: usize, rows: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let common: Vec<f32> = (0..hidden).map(|_| next()).collect();
        let mut head: Vec<f32> = (0..vocab * hidden)
            .map(|i| 0.05 * next() + 0.02 * common[i % hidden])
            .collect();
        // two identical rows: the first index must win the tie
        let (a, b) = (vocab / 3, 2 * vocab / 3);
        let row_a = head[a * hidden..(a + 1) * hidden].to_vec();
        head[b * hidden..(b + 1) * hidden].copy_from_slice(&row_a);
        let mut xs: Vec<f32> = (0..rows * hidden)
            .map(|i| 40.0 * next() + 30.0 * common[i % hidden])
            .collect();
        xs[..hidden].copy_from_slice(&row_a.iter().map(|v| v * 500.0).collect::<Vec<_>>());
        (head, xs)
    }

    /// Runs only where the CPU has AMX-BF16, so it is ignored (reported as such) by a plain
    /// `cargo test`; tools/test.sh runs it with `--ignored` where /proc/cpuinfo lists
    /// amx_bf16, and run elsewhere it fails saying why.
    #[test]
    #[ignore = "needs a CPU with AMX-BF16 (Intel Sapphire Rapids or later): tools/test.sh runs it there"]
    fn amx_screened_argmax_equals_the_exact_argmax() {
        assert!(
            amx::usable(),
            "no usable AMX-BF16 on this CPU (or QWEN_SCOPE_NO_AMX is set): the screen cannot run here"
        );
        let dot = dot_kernel();
        for (vocab, hidden, rows) in [(5000, 64, 37), (2051, 96, 64), (70, 32, 1)] {
            let (head, xs) = case(vocab, hidden, rows, vocab as u64);
            let screen = HeadScreen::new(&head, vocab, hidden).expect("AMX is usable");
            let got = screen.argmax(&head, &xs);
            for (r, x) in xs.chunks_exact(hidden).enumerate() {
                let logits: Vec<f32> = head.chunks_exact(hidden).map(|w| dot(x, w)).collect();
                assert_eq!(got[r] as usize, argmax(&logits), "{vocab}x{hidden} row {r}");
            }
        }
    }

    #[test]
    fn the_bound_covers_the_bf16_error() {
        // the screen's arithmetic without tiles: bf16 products summed in f32
        let (vocab, hidden) = (300, 64);
        let (head, xs) = case(vocab, hidden, 8, 11);
        let dot = dot_kernel();
        let widen = |b: u16| f32::from_bits((b as u32) << 16);
        for x in xs.chunks_exact(hidden) {
            let mut xb = vec![0u16; hidden];
            let ScreenRow { alpha, beta } = screen_row(x, &mut xb);
            for w in head.chunks_exact(hidden) {
                let approx: f32 = xb
                    .iter()
                    .zip(w)
                    .map(|(&a, &b)| widen(a) * widen(bf16(b)))
                    .sum();
                let (nw, ndw) = norms(w);
                let e = alpha * nw as f32 + beta * ndw as f32;
                let exact = dot(x, w);
                assert!((approx - exact).abs() <= e, "|{approx} - {exact}| > {e}");
                // and tight enough to screen: about bf16's precision of ‖x‖‖w‖
                let scale = x.iter().map(|v| v * v).sum::<f32>().sqrt() * nw as f32;
                assert!(e < 0.01 * scale, "{e} vs {scale}");
            }
        }
    }
}
