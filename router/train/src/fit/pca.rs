//! Fitting the principal-component projection that the exemplar memory stores (`pca.f32`).

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};
use routemesh_router::predict::Projection;

fn orthonormalize(v: &mut Array2<f64>) {
    // Modified Gram-Schmidt over the columns.
    for c in 0..v.ncols() {
        for p in 0..c {
            let d = v.column(c).dot(&v.column(p));
            let prev = v.column(p).to_owned();
            v.column_mut(c).scaled_add(-d, &prev);
        }
        let n = v.column(c).dot(&v.column(c)).sqrt().max(1e-12);
        v.column_mut(c).mapv_inplace(|x| x / n);
    }
}

/// Top-`k` principal directions by block power iteration on the covariance (k ≤ dim).
pub fn fit_projection(x: ArrayView2<'_, f32>, k: usize, seed: u64) -> Projection {
    let dim = x.ncols();
    let k = k.clamp(1, dim);
    let xd = x.mapv(f64::from);
    let mean = xd.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(dim));
    let xc = &xd - &mean;
    let cov = xc.t().dot(&xc) / (x.nrows().max(2) - 1) as f64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = Array2::from_shape_fn((dim, k), |_| rng.random::<f64>() - 0.5);
    orthonormalize(&mut v);
    for _ in 0..60 {
        v = cov.dot(&v);
        orthonormalize(&mut v);
    }
    Projection {
        mean: mean.mapv(|m| m as f32),
        basis: v.t().mapv(|b| b as f32),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_dominant_direction() {
        // Points spread along (1, 1, 0) with little noise elsewhere.
        let x = Array2::from_shape_fn((50, 3), |(i, j)| {
            let t = i as f32 / 10.0 - 2.5;
            match j {
                0 | 1 => t + 0.01 * (i % 3) as f32,
                _ => 0.02 * (i % 2) as f32,
            }
        });
        let p = fit_projection(x.view(), 1, 1);
        let b = p.basis.row(0);
        assert!(
            (b[0].abs() - std::f32::consts::FRAC_1_SQRT_2).abs() < 0.01 && b[2].abs() < 0.05,
            "{b:?}"
        );
        let y = p.apply(x.view());
        assert_eq!(y.shape(), &[50, 1]);
    }
}
