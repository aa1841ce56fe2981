//! RouterBench's many-model metrics: the λ sweep of argmax(quality − λ·cost), its non-decreasing convex
//! hull, AIQ, q_max and the cost to match the best single model, next to oracle, random and singles-hull
//! references.

use serde::Serialize;

use super::numeric::{interp, mean, trapz};

/// The model chosen per row at willingness-to-pay `lam` (USD⁻¹): argmax pred − lam·cost, ties to the cheapest;
/// at `lam = inf` the cheapest, ties to the best predicted.
pub fn choose(pred: &[f64], cost: &[f64], lam: f64) -> usize {
    let inf = lam.is_infinite();
    let primary = |j: usize| {
        if inf {
            -cost[j]
        } else {
            pred[j] - lam * cost[j]
        }
    };
    let secondary = |j: usize| if inf { pred[j] } else { -cost[j] };
    let best = (0..pred.len())
        .map(primary)
        .fold(f64::NEG_INFINITY, f64::max);
    let tol = best - 1e-12 * (1.0 + best.abs());
    let mut pick = 0;
    let mut pick_sec = f64::NEG_INFINITY;
    for j in 0..pred.len() {
        if primary(j) >= tol && secondary(j) > pick_sec {
            pick = j;
            pick_sec = secondary(j);
        }
    }
    pick
}

/// The λ grid of the sweep: 0, 241 log-spaced values over 1e-4..1e4 scaled by the mean per-row cost spread, ∞.
pub fn lambda_grid(cost: &[Vec<f64>]) -> Vec<f64> {
    let spread = mean(cost.iter().map(|r| {
        r.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - r.iter().copied().fold(f64::INFINITY, f64::min)
    }));
    let mut lams = vec![0.0];
    if spread > 0.0 {
        let n = 241;
        let step = 8.0 / (n - 1) as f64;
        lams.extend((0..n).map(|i| {
            let e = if i == n - 1 {
                4.0
            } else {
                i as f64 * step - 4.0
            };
            10f64.powf(e) / spread
        }));
    }
    lams.push(f64::INFINITY);
    lams
}

/// (mean cost, mean true quality) when routing every row at `lam`.
pub fn route_point(
    pred: &[Vec<f64>],
    truth: &[Vec<f64>],
    cost: &[Vec<f64>],
    lam: f64,
) -> (f64, f64) {
    let picks: Vec<usize> = pred
        .iter()
        .zip(cost)
        .map(|(p, c)| choose(p, c, lam))
        .collect();
    (
        mean(picks.iter().enumerate().map(|(i, &j)| cost[i][j])),
        mean(picks.iter().enumerate().map(|(i, &j)| truth[i][j])),
    )
}

/// The distinct (cost, quality) points of the λ sweep, sorted.
pub fn sweep(pred: &[Vec<f64>], truth: &[Vec<f64>], cost: &[Vec<f64>]) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = lambda_grid(cost)
        .into_iter()
        .map(|l| route_point(pred, truth, cost, l))
        .collect();
    pts.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    pts.dedup();
    pts
}

/// Non-decreasing convex hull: the upper concave envelope of the points, cut at its highest point.
pub fn ndch(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut best: Vec<(f64, f64)> = points.to_vec();
    best.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    // Keep the best quality at each cost.
    let mut uniq: Vec<(f64, f64)> = Vec::new();
    for p in best {
        match uniq.last_mut() {
            Some(last) if last.0 == p.0 => last.1 = last.1.max(p.1),
            _ => uniq.push(p),
        }
    }
    let mut hull: Vec<(f64, f64)> = Vec::new();
    for p in uniq {
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            // b on or below the segment a-p: not on the upper envelope.
            if (b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0) >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    let mut top = 0;
    for (i, p) in hull.iter().enumerate() {
        if p.1 > hull[top].1 {
            top = i;
        }
    }
    hull.truncate(top + 1);
    hull
}

/// NDCH value at cost `c`: `None` left of its first point, flat right of its last.
pub fn hull_at(h: &[(f64, f64)], c: f64) -> Option<f64> {
    if h.is_empty() || c < h[0].0 * (1.0 - 1e-9) {
        return None;
    }
    let xs: Vec<f64> = h.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = h.iter().map(|p| p.1).collect();
    Some(interp(c, &xs, &ys))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CurveMetrics {
    /// Area under the NDCH over [c_min, c_max] / (c_max − c_min).
    pub aiq: f64,
    /// RouterBench's code divides by c_max instead of the range.
    pub aiq_rb_code: f64,
    pub q_max: f64,
    pub cost_at_q_max: f64,
    pub q_at_cheapest: Option<f64>,
    pub q_at_best: Option<f64>,
    /// Least cost at which the hull reaches the best single model's quality, as a fraction of its cost.
    pub cost_to_match_best: Option<f64>,
    #[serde(skip)]
    pub points: Vec<(f64, f64)>,
}

pub fn curve_metrics(
    points: &[(f64, f64)],
    lo: f64,
    hi: f64,
    c_cheap: f64,
    c_best: f64,
    q_best: f64,
) -> CurveMetrics {
    let h = ndch(points);
    let last = h[h.len() - 1];
    let mut xs: Vec<f64> = h.iter().map(|p| p.0.clamp(lo, hi)).collect();
    xs.push(hi);
    let mut ys: Vec<f64> = h.iter().map(|p| p.1).collect();
    ys.push(last.1);
    let aiq = if hi > lo {
        trapz(&ys, &xs) / (hi - lo)
    } else {
        last.1
    };
    let reach = h.iter().position(|p| p.1 >= q_best - 1e-12);
    let match_best = reach.map(|i| {
        if i == 0 {
            h[0].0 / c_best
        } else {
            let ((x0, y0), (x1, y1)) = (h[i - 1], h[i]);
            (x0 + (q_best - y0) / (y1 - y0) * (x1 - x0)) / c_best
        }
    });
    CurveMetrics {
        aiq,
        aiq_rb_code: if hi > 0.0 { aiq * (hi - lo) / hi } else { aiq },
        q_max: last.1,
        cost_at_q_max: last.0,
        q_at_cheapest: hull_at(&h, c_cheap),
        q_at_best: hull_at(&h, c_best),
        cost_to_match_best: match_best,
        points: points.to_vec(),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MultiSection {
    pub c_min: f64,
    pub c_max: f64,
    pub cheapest_model: String,
    pub best_model: String,
    pub router: CurveMetrics,
    pub oracle: CurveMetrics,
    pub random: CurveMetrics,
    pub singles_hull: CurveMetrics,
    pub single: Vec<(String, CurveMetrics)>,
}

pub fn multi_section(
    models: &[String],
    truth: &[Vec<f64>],
    pred: &[Vec<f64>],
    cost: &[Vec<f64>],
) -> MultiSection {
    let m = models.len();
    let lo = mean(
        cost.iter()
            .map(|r| r.iter().copied().fold(f64::INFINITY, f64::min)),
    );
    let hi = mean(
        cost.iter()
            .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
    );
    let single: Vec<(f64, f64)> = (0..m)
        .map(|j| {
            (
                mean(cost.iter().map(|r| r[j])),
                mean(truth.iter().map(|r| r[j])),
            )
        })
        .collect();
    let by = |better: &dyn Fn(usize, usize) -> bool| {
        (1..m).fold(0, |b, j| if better(j, b) { j } else { b })
    };
    let cheapest = by(&|j, b| (single[j].0, -single[j].1) < (single[b].0, -single[b].1));
    let best = by(&|j, b| (single[j].1, -single[j].0) > (single[b].1, -single[b].0));
    let (c_cheap, (c_best, q_best)) = (single[cheapest].0, single[best]);
    let cm = |pts: &[(f64, f64)]| curve_metrics(pts, lo, hi, c_cheap, c_best, q_best);
    let all = |mat: &[Vec<f64>]| mean(mat.iter().flat_map(|r| r.iter().copied()));
    MultiSection {
        c_min: lo,
        c_max: hi,
        cheapest_model: models[cheapest].clone(),
        best_model: models[best].clone(),
        router: cm(&sweep(pred, truth, cost)),
        oracle: cm(&sweep(truth, truth, cost)),
        random: cm(&[(all(cost), all(truth))]),
        singles_hull: cm(&single),
        single: models
            .iter()
            .cloned()
            .zip(single.iter().map(|p| cm(&[*p])))
            .collect(),
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
    fn ndch_and_aiq_by_hand() {
        let pts = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (4.0, 1.0), (4.0, 0.2)];
        assert_eq!(ndch(&pts), vec![(1.0, 0.5), (2.0, 0.9), (4.0, 1.0)]);
        let c = curve_metrics(&pts, 1.0, 5.0, 1.0, 4.0, 0.95);
        // Trapezoids 0.7 + 1.9 + 1.0 over a range of 4.
        close(c.aiq, 0.9);
        close(c.q_max, 1.0);
        close(c.cost_to_match_best.unwrap(), 3.0 / 4.0);
        close(c.q_at_cheapest.unwrap(), 0.5);
        close(hull_at(&ndch(&pts), 3.0).unwrap(), 0.95);
        assert_eq!(hull_at(&ndch(&pts), 0.5), None);
        // A hull that peaks early is flat afterwards and stops there.
        assert_eq!(ndch(&[(1.0, 0.9), (2.0, 0.5)]), vec![(1.0, 0.9)]);
        // Starting right of c_min contributes nothing left of its first point.
        close(
            curve_metrics(&[(3.0, 1.0)], 1.0, 5.0, 1.0, 3.0, 1.0).aiq,
            0.5,
        );
    }

    #[test]
    fn choose_prefers_cheaper_on_ties_and_cheapest_at_infinity() {
        let cost = [2.0, 1.0, 3.0];
        assert_eq!(choose(&[0.5, 0.5, 0.4], &cost, 0.0), 1);
        assert_eq!(choose(&[0.5, 0.4, 0.9], &cost, 0.0), 2);
        assert_eq!(choose(&[0.5, 0.4, 0.9], &cost, 0.3), 1);
        assert_eq!(choose(&[0.5, 0.4, 0.9], &cost, f64::INFINITY), 1);
    }

    #[test]
    fn multi_section_baselines() {
        // Model a: cheap, right on row 0; model b: pricey, right on both rows.
        let models = vec!["a".to_string(), "b".to_string()];
        let truth = vec![vec![1.0, 1.0], vec![0.0, 1.0]];
        let cost = vec![vec![1.0, 3.0], vec![1.0, 3.0]];
        let m = multi_section(&models, &truth, &truth, &cost);
        assert_eq!(
            (m.cheapest_model.as_str(), m.best_model.as_str()),
            ("a", "b")
        );
        // Oracle: a on row 0, b on row 1 -> (2, 1.0); cheapest point (1, .5): area .75*1 + 1*1 over 2.
        close(m.oracle.aiq, 0.875);
        close(m.oracle.cost_to_match_best.unwrap(), 2.0 / 3.0);
        // Singles hull: line from (1, .5) to (3, 1): mean 0.75.
        close(m.singles_hull.aiq, 0.75);
        close(m.random.q_max, 0.75);
    }
}
