//! The numeric pieces route_eval.py takes from numpy (`np.trapz`, `np.interp`, `np.quantile`), ported to
//! give the same numbers.

/// Mean of the values (NaN for none), as `np.mean`.
pub(crate) fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// `np.trapz(y, x)`: the trapezoid rule over increasing `x`.
pub fn trapz(y: &[f64], x: &[f64]) -> f64 {
    (1..x.len().min(y.len()))
        .map(|i| (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2.0)
        .sum()
}

/// `np.interp` for increasing `xp` (clamped at both ends).
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if n == 0 {
        return f64::NAN;
    }
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[n - 1] {
        return fp[n - 1];
    }
    // Last j with xp[j] <= x (numpy's binary search on sorted input).
    let j = xp.partition_point(|&v| v <= x).saturating_sub(1);
    let (x0, x1, y0, y1) = (xp[j], xp[j + 1], fp[j], fp[j + 1]);
    if x1 == x0 {
        y0
    } else {
        y0 + (x - x0) * (y1 - y0) / (x1 - x0)
    }
}

/// `np.quantile(v, q)` with the default linear method.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    // numpy's 'linear' method: virtual index (n - 1)·q, then its _lerp (which switches formula at 0.5).
    let virt = (n - 1) as f64 * q;
    let prev = virt.floor().clamp(0.0, (n - 1) as f64);
    let next = (prev + 1.0).min((n - 1) as f64);
    let gamma = virt - virt.floor();
    let (a, b) = (sorted[prev as usize], sorted[next as usize]);
    let d = b - a;
    if gamma >= 0.5 {
        b - d * (1.0 - gamma)
    } else {
        a + d * gamma
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn quantile_matches_numpy_linear() {
        let v = [1.0, 2.0, 4.0, 8.0];
        close(quantile(&v, 0.0), 1.0);
        close(quantile(&v, 0.5), 3.0);
        close(quantile(&v, 1.0), 8.0);
        close(quantile(&v, 0.25), 1.75);
    }
}
