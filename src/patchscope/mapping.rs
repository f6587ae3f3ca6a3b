//! Mappings from a source representation to the vector patched into the target: the
//! identity, or an affine map fitted by least squares as the official code does
//! (`numpy.linalg.lstsq(pad(X), pad(Y))`, pad = append a column of ones), in f64.

use crate::error::{Error, Result};
use nalgebra::DMatrix;
use std::path::Path;

/// h' = [h, 1] · W, with W stored [(inp + 1), out] row-major.
#[derive(Debug, Clone)]
pub struct Affine {
    pub inp: usize,
    pub out: usize,
    pub w: Vec<f32>,
}

#[derive(Debug, Clone)]
pub enum Mapping {
    Identity,
    Affine(Affine),
}

impl Mapping {
    pub fn apply(&self, h: &[f32]) -> Vec<f32> {
        match self {
            Mapping::Identity => h.to_vec(),
            Mapping::Affine(a) => a.apply(h),
        }
    }
}

impl Affine {
    pub fn apply(&self, h: &[f32]) -> Vec<f32> {
        assert_eq!(h.len(), self.inp, "affine map: input has the wrong width");
        let mut y: Vec<f64> = self.w[self.inp * self.out..]
            .iter()
            .map(|&b| b as f64)
            .collect();
        for (i, &hi) in h.iter().enumerate() {
            let row = &self.w[i * self.out..(i + 1) * self.out];
            for (yj, &wj) in y.iter_mut().zip(row) {
                *yj += hi as f64 * wj as f64;
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    /// Least-squares fit of `ys` from `xs` with a bias (minimum-norm solution where the
    /// system is under-determined, like numpy's lstsq).
    pub fn fit(xs: &[Vec<f32>], ys: &[Vec<f32>]) -> Result<Affine> {
        let n = xs.len();
        if n == 0 || n != ys.len() {
            return Err(Error::input(format!(
                "affine fit needs matching, non-empty rows ({} inputs, {} targets)",
                n,
                ys.len()
            )));
        }
        let (inp, out) = (xs[0].len(), ys[0].len());
        // A NaN or infinity would make the fit NaN, or keep the SVD from ever converging.
        let bad = |rows: &[Vec<f32>]| rows.iter().position(|r| r.iter().any(|v| !v.is_finite()));
        if let Some((what, r)) = [("input", bad(xs)), ("target", bad(ys))]
            .into_iter()
            .find_map(|(w, r)| r.map(|r| (w, r)))
        {
            return Err(Error::input(format!(
                "affine fit: {what} row {r} holds NaN or infinite values (the forward pass \
                 that made it overflowed or is broken)"
            )));
        }
        let d = inp + 1;
        let x = DMatrix::from_fn(n, d, |r, c| if c < inp { xs[r][c] as f64 } else { 1.0 });
        let y = DMatrix::from_fn(n, out, |r, c| ys[r][c] as f64);
        let solution = if n > d {
            // over-determined: the normal equations are much cheaper than an SVD of X; a
            // rank-deficient X (Cholesky fails) falls back to the minimum-norm solve
            let g = x.transpose() * &x;
            let rhs = x.transpose() * &y;
            match g.clone().cholesky() {
                Some(ch) => ch.solve(&rhs),
                None => min_norm_solve(g, &rhs)?,
            }
        } else {
            min_norm_solve(x, &y)?
        };
        let mut w = Vec::with_capacity(d * out);
        for r in 0..d {
            for c in 0..out {
                w.push(solution[(r, c)] as f32);
            }
        }
        Ok(Affine { inp, out, w })
    }
}

/// argmin ||a·s - b|| of least norm, through the SVD with numpy's default cut-off.
fn min_norm_solve(a: DMatrix<f64>, b: &DMatrix<f64>) -> Result<DMatrix<f64>> {
    let cutoff = f64::EPSILON * a.nrows().max(a.ncols()) as f64;
    // nalgebra's svd() iterates without a cap; finite input converges far below this one.
    let cap = 1000 * a.nrows().max(a.ncols());
    let svd = a
        .try_svd(true, true, f64::EPSILON, cap)
        .ok_or_else(|| Error::input(format!("least-squares fit: no SVD after {cap} iterations")))?;
    let max_sv = svd.singular_values.max();
    svd.solve(b, cutoff * max_sv)
        .map_err(|e| Error::input(format!("least-squares fit failed: {e}")))
}

/// Writes per-layer affine maps to a safetensors file (`layer.<l>` tensors [inp + 1, out]).
pub fn save_affines(path: &Path, maps: &[Affine]) -> Result<()> {
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = maps
        .iter()
        .enumerate()
        .map(|(l, a)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![a.inp + 1, a.out],
                bytemuck::cast_slice(&a.w),
            )
            .expect("shape matches data");
            (format!("layer.{l}"), view)
        })
        .collect();
    let bytes = safetensors::serialize(tensors, None).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    crate::report::atomic::write(path, &bytes)
}

/// Reads what `save_affines` wrote.
pub fn load_affines(path: &Path) -> Result<Vec<Affine>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut maps = Vec::new();
    while let Ok(view) = st.tensor(&format!("layer.{}", maps.len())) {
        let shape = view.shape();
        if view.dtype() != safetensors::Dtype::F32 || shape.len() != 2 || shape[0] < 2 {
            return Err(bad(format!(
                "layer.{}: expected an f32 [inp + 1, out] matrix",
                maps.len()
            )));
        }
        let w = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        maps.push(Affine {
            inp: shape[0] - 1,
            out: shape[1],
            w,
        });
    }
    if maps.is_empty() {
        return Err(bad("no layer.<l> tensors".into()));
    }
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_finite_states_instead_of_hanging() {
        let mut xs: Vec<Vec<f32>> = (0..3).map(|i| vec![i as f32, 1.0, 2.0]).collect();
        let ys = xs.clone();
        xs[2][1] = f32::NAN;
        let e = Affine::fit(&xs, &ys).unwrap_err().to_string();
        assert!(e.contains("input row 2 holds NaN"), "{e}");
        let e = Affine::fit(&ys, &xs).unwrap_err().to_string();
        assert!(e.contains("target row 2 holds NaN"), "{e}");
    }

    #[test]
    fn recovers_an_exact_affine_map() {
        // y = M x + b with M = [[2, 0], [1, -1]], b = [0.5, 3]
        let xs: Vec<Vec<f32>> = (0..12)
            .map(|i| vec![i as f32 * 0.3 - 1.0, ((i * 7) % 5) as f32])
            .collect();
        let ys: Vec<Vec<f32>> = xs
            .iter()
            .map(|x| vec![2.0 * x[0] + 0.5, x[0] - x[1] + 3.0])
            .collect();
        for n in [4, 12] {
            // n = 4: just determined (the first three points are affinely collinear, the
            // fourth is not); n = 12: over-determined
            let a = Affine::fit(&xs[..n], &ys[..n]).unwrap();
            for (x, y) in xs.iter().zip(&ys) {
                let got = a.apply(x);
                assert!(
                    (got[0] - y[0]).abs() < 1e-4 && (got[1] - y[1]).abs() < 1e-4,
                    "n={n}: {got:?} vs {y:?}"
                );
            }
        }
    }

    #[test]
    fn under_determined_fit_is_minimum_norm() {
        // one sample, 2 inputs + bias: min-norm solution of [1, 2, 1]·w = 6 is w = 6/6 * [1, 2, 1]
        let a = Affine::fit(&[vec![1.0, 2.0]], &[vec![6.0]]).unwrap();
        let want = [1.0, 2.0, 1.0];
        for (g, w) in a.w.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{:?}", a.w);
        }
    }
}
