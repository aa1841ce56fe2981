//! Fitting the ridge baseline: one regularised least-squares solve per model over the rows that scored it.

use ndarray::{Array1, Array2};
use routemesh_router::predict::Ridge;

use super::TrainSet;

/// Solves `a x = b` for symmetric positive definite `a` (Cholesky); `a` is regularised, so it is SPD.
fn cholesky_solve(a: &Array2<f64>, b: &Array1<f64>) -> Array1<f64> {
    let n = a.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum();
            if i == j {
                l[[i, i]] = (a[[i, i]] - s).max(1e-12).sqrt();
            } else {
                l[[i, j]] = (a[[i, j]] - s) / l[[j, j]];
            }
        }
    }
    let mut y = Array1::<f64>::zeros(n);
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[[i, k]] * y[k]).sum();
        y[i] = (b[i] - s) / l[[i, i]];
    }
    let mut x = Array1::<f64>::zeros(n);
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[[k, i]] * x[k]).sum();
        x[i] = (y[i] - s) / l[[i, i]];
    }
    x
}

/// Ridge regression of each model's observed scores on the embedding, `lambda` the L2 penalty.
pub fn train_ridge(data: &TrainSet<'_>, lambda: f64) -> Ridge {
    let dim = data.emb.ncols();
    let m = data.models.len();
    let mut weights = Array2::<f64>::zeros((m, dim));
    let mut bias = data.prior();
    for (j, bias_j) in bias.iter_mut().enumerate() {
        let rows: Vec<usize> = (0..data.quality.len())
            .filter(|&i| data.quality[i][j].is_some())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let x = data.emb.select(ndarray::Axis(0), &rows).mapv(f64::from);
        let y: Array1<f64> = rows
            .iter()
            .map(|&i| data.quality[i][j].unwrap_or(0.0))
            .collect();
        // Centre so the intercept is the mean and is not regularised.
        let xm = x
            .mean_axis(ndarray::Axis(0))
            .unwrap_or_else(|| Array1::zeros(dim));
        let ym = y.mean().unwrap_or(0.5);
        let xc = &x - &xm;
        let yc = &y - ym;
        let mut a = xc.t().dot(&xc);
        for d in 0..dim {
            a[[d, d]] += lambda;
        }
        let w = cholesky_solve(&a, &xc.t().dot(&yc));
        *bias_j = ym - w.dot(&xm);
        weights.row_mut(j).assign(&w);
    }
    Ridge {
        models: data.models.to_vec(),
        weights,
        bias,
    }
}
