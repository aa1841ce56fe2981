//! A logistic regression on a handful of rows, pulled towards a prior weight vector (ridge around it):
//! how an onboarded model's MF vector is fitted from its few scored prompts without forgetting what the
//! similar models' vectors say. Newton's method on a small dense system (MF's `dim + 1` unknowns).

use super::OnboardError;

/// Minimises `Σ BCE(sigmoid(θ·φ_i), y_i) + ridge/2 · ‖θ − θ0‖²` over `θ` (`features[i]` = `φ_i`, all
/// of `prior`'s length), starting from `prior`. `ridge > 0` keeps the system positive definite with any
/// number of rows, including none (then `θ = θ0`).
pub fn fit_towards(
    features: &[Vec<f64>],
    targets: &[f64],
    prior: &[f64],
    ridge: f64,
) -> Result<Vec<f64>, OnboardError> {
    let p = prior.len();
    let ridge = ridge.max(1e-6);
    let mut theta = prior.to_vec();
    for _ in 0..50 {
        let mut grad: Vec<f64> = theta
            .iter()
            .zip(prior)
            .map(|(t, t0)| ridge * (t - t0))
            .collect();
        let mut hess = vec![0.0; p * p];
        for k in 0..p {
            hess[k * p + k] = ridge;
        }
        for (phi, &y) in features.iter().zip(targets) {
            let s = sigmoid(phi.iter().zip(&theta).map(|(a, b)| a * b).sum());
            let curvature = (s * (1.0 - s)).max(1e-9);
            for a in 0..p {
                grad[a] += (s - y) * phi[a];
                let ca = curvature * phi[a];
                for b in 0..=a {
                    hess[a * p + b] += ca * phi[b];
                }
            }
        }
        let step = cholesky_solve(&mut hess, &grad, p)?;
        let mut largest = 0.0f64;
        for (t, d) in theta.iter_mut().zip(&step) {
            *t -= d;
            largest = largest.max(d.abs());
        }
        if largest < 1e-8 {
            break;
        }
    }
    Ok(theta)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Solves `H x = g` for a symmetric positive definite `H` given by its lower triangle (row-major `p×p`,
/// overwritten by its Cholesky factor).
fn cholesky_solve(h: &mut [f64], g: &[f64], p: usize) -> Result<Vec<f64>, OnboardError> {
    for j in 0..p {
        let mut d = h[j * p + j];
        for k in 0..j {
            d -= h[j * p + k] * h[j * p + k];
        }
        if d.is_nan() || d <= 0.0 || d.is_infinite() {
            return Err(OnboardError::Numerical(
                "the MF fit's system is not positive definite".into(),
            ));
        }
        let d = d.sqrt();
        h[j * p + j] = d;
        for i in j + 1..p {
            let mut v = h[i * p + j];
            for k in 0..j {
                v -= h[i * p + k] * h[j * p + k];
            }
            h[i * p + j] = v / d;
        }
    }
    // L y = g, then Lᵀ x = y.
    let mut y = g.to_vec();
    for i in 0..p {
        for k in 0..i {
            y[i] -= h[i * p + k] * y[k];
        }
        y[i] /= h[i * p + i];
    }
    for i in (0..p).rev() {
        for k in i + 1..p {
            y[i] -= h[k * p + i] * y[k];
        }
        y[i] /= h[i * p + i];
    }
    Ok(y)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn without_rows_the_prior_stays_and_with_many_the_data_wins() {
        let prior = vec![0.5, -1.0];
        assert_eq!(fit_towards(&[], &[], &prior, 1.0).unwrap(), prior);
        // y = 1 when the feature is positive: the weight on it grows well past the prior's 0.5.
        let features: Vec<Vec<f64>> = (0..200)
            .map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 }, 1.0])
            .collect();
        let targets: Vec<f64> = (0..200)
            .map(|i| if i % 2 == 0 { 0.9 } else { 0.1 })
            .collect();
        let theta = fit_towards(&features, &targets, &prior, 1.0).unwrap();
        // Unpenalised, logit(0.9) = 2.197 on the feature and 0 on the bias; the ridge keeps it a little
        // towards the prior.
        assert!(theta[0] > 2.0 && theta[0] < 2.197, "{theta:?}");
        assert!(theta[1] < 0.0 && theta[1] > -0.1, "{theta:?}");
        // A strong ridge keeps it near the prior.
        let stiff = fit_towards(&features, &targets, &prior, 1e5).unwrap();
        assert!(
            (stiff[0] - 0.5).abs() < 0.01 && (stiff[1] + 1.0).abs() < 0.01,
            "{stiff:?}"
        );
    }
}
