//! RouteLLM's strong/weak metrics: the PGR curve over the router's score, APGR, CPT at 20/50/80% PGR,
//! RouteLLM's own 10-bin estimate, and the random and oracle references.

use serde::Serialize;

use super::numeric::{interp, mean, quantile, trapz};

/// Strong-call shares (as PGR targets) reported as CPT.
pub const CPT_TARGETS: [f64; 3] = [0.2, 0.5, 0.8];

/// Exact (strong-call fraction, accuracy) points, one per block of tied routing scores `s`
/// (strong is called on the rows with the highest `s`).
pub fn pgr_curve(s: &[f64], q_strong: &[f64], q_weak: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = s.len();
    let mut order: Vec<usize> = (0..n).collect();
    // Stable, descending: tied scores keep their row order, as numpy's argsort(-s, kind="stable").
    order.sort_by(|&a, &b| s[b].partial_cmp(&s[a]).unwrap_or(std::cmp::Ordering::Equal));
    let mut gain = vec![0.0; n + 1];
    for (i, &r) in order.iter().enumerate() {
        gain[i + 1] = gain[i] + (q_strong[r] - q_weak[r]);
    }
    let mut ks = vec![0usize];
    ks.extend((1..n).filter(|&i| s[order[i]] != s[order[i - 1]]));
    ks.push(n);
    let weak_sum: f64 = q_weak.iter().sum();
    let x = ks.iter().map(|&k| k as f64 / n as f64).collect();
    let acc = ks
        .iter()
        .map(|&k| (weak_sum + gain[k]) / n as f64)
        .collect();
    (x, acc)
}

/// Smallest strong-call % at which the piecewise-linear PGR curve reaches `p`; `None` if never.
pub fn cpt(x: &[f64], pgr: &[f64], p: f64) -> Option<f64> {
    let i = pgr.iter().position(|&v| v >= p - 1e-12)?;
    if i == 0 {
        return Some(100.0 * x[0]);
    }
    let (x0, x1, y0, y1) = (x[i - 1], x[i], pgr[i - 1], pgr[i]);
    Some(100.0 * (x0 + (p - y0) / (y1 - y0) * (x1 - x0)))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenBin {
    pub apgr: f64,
    pub cpt20: f64,
    pub cpt50: f64,
    pub cpt80: f64,
    pub points: Vec<(f64, f64)>,
}

/// RouteLLM's own 11-point estimate (thresholds at the deciles of `s`). Informational: its CPT uses
/// `np.interp` on accuracies that need not be monotone, where the result is ill-defined.
pub fn routellm_10bin(
    s: &[f64],
    q_strong: &[f64],
    q_weak: &[f64],
    acc_s: f64,
    acc_w: f64,
) -> TenBin {
    let mut sorted = s.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let nres = 10;
    let mut pts: Vec<(f64, f64)> = (0..=nres)
        .map(|i| {
            let t = quantile(&sorted, i as f64 * (1.0 / nres as f64));
            let sel: Vec<bool> = s
                .iter()
                .map(|&v| if i != nres { v >= t } else { v > t })
                .collect();
            let share = 100.0 * mean(sel.iter().map(|&b| f64::from(u8::from(b))));
            let acc = mean(
                sel.iter()
                    .enumerate()
                    .map(|(r, &b)| if b { q_strong[r] } else { q_weak[r] }),
            );
            (share, acc)
        })
        .collect();
    pts.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let x: Vec<f64> = pts.iter().map(|p| p.0).collect();
    let acc: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let span = (x[x.len() - 1] - x[0]) / 100.0;
    let x01: Vec<f64> = x.iter().map(|v| v / 100.0).collect();
    let apgr = (trapz(&acc, &x01) - acc_w * span) / ((acc_s - acc_w) * span);
    let c = |p: f64| interp(p * (acc_s - acc_w) + acc_w, &acc, &x);
    TenBin {
        apgr,
        cpt20: c(0.2),
        cpt50: c(0.5),
        cpt80: c(0.8),
        points: pts,
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BinaryMetrics {
    pub apgr: f64,
    pub cpt20: Option<f64>,
    pub cpt50: Option<f64>,
    pub cpt80: Option<f64>,
    pub max_acc: f64,
    pub routellm_10bin: Option<TenBin>,
}

/// APGR/CPT of routing score `s` (higher = more in need of the strong model).
pub fn binary_metrics(s: &[f64], q_strong: &[f64], q_weak: &[f64]) -> BinaryMetrics {
    let (acc_s, acc_w) = (mean(q_strong.iter().copied()), mean(q_weak.iter().copied()));
    let (x, acc) = pgr_curve(s, q_strong, q_weak);
    let pgr: Vec<f64> = acc.iter().map(|a| (a - acc_w) / (acc_s - acc_w)).collect();
    BinaryMetrics {
        apgr: trapz(&pgr, &x),
        cpt20: cpt(&x, &pgr, 0.2),
        cpt50: cpt(&x, &pgr, 0.5),
        cpt80: cpt(&x, &pgr, 0.8),
        max_acc: acc.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        routellm_10bin: Some(routellm_10bin(s, q_strong, q_weak, acc_s, acc_w)),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BinarySection {
    pub strong: String,
    pub weak: String,
    pub acc_strong: f64,
    pub acc_weak: f64,
    pub router: BinaryMetrics,
    pub random: BinaryMetrics,
    pub oracle: BinaryMetrics,
}

/// `None` when the two models have the same mean quality (PGR undefined).
pub fn binary_section(
    models: &[String],
    truth: &[Vec<f64>],
    pred: &[Vec<f64>],
    strong: usize,
    weak: usize,
) -> Option<BinarySection> {
    let qs: Vec<f64> = truth.iter().map(|r| r[strong]).collect();
    let qw: Vec<f64> = truth.iter().map(|r| r[weak]).collect();
    let (acc_strong, acc_weak) = (mean(qs.iter().copied()), mean(qw.iter().copied()));
    if acc_strong == acc_weak {
        return None;
    }
    let s: Vec<f64> = pred.iter().map(|r| r[strong] - r[weak]).collect();
    let o: Vec<f64> = qs.iter().zip(&qw).map(|(a, b)| a - b).collect();
    Some(BinarySection {
        strong: models[strong].clone(),
        weak: models[weak].clone(),
        acc_strong,
        acc_weak,
        router: binary_metrics(&s, &qs, &qw),
        // A prompt-blind router: PGR(x) = x in expectation.
        random: BinaryMetrics {
            apgr: 0.5,
            cpt20: Some(20.0),
            cpt50: Some(50.0),
            cpt80: Some(80.0),
            max_acc: acc_strong.max(acc_weak),
            routellm_10bin: None,
        },
        oracle: binary_metrics(&o, &qs, &qw),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn pgr_curve_apgr_and_cpt_by_hand() {
        // acc_strong 0.75, acc_weak 0.25; s orders rows 0, 2, 3, 1 -> PGR 0, .5, .5, 1, 1 at x 0, .25, .5, .75, 1.
        let qs = [1.0, 1.0, 0.0, 1.0];
        let qw = [0.0, 1.0, 0.0, 0.0];
        let m = binary_metrics(&[0.9, 0.1, 0.5, 0.3], &qs, &qw);
        close(m.apgr, 0.625);
        close(m.cpt20.unwrap(), 10.0);
        close(m.cpt50.unwrap(), 25.0);
        close(m.cpt80.unwrap(), 65.0);
        close(m.max_acc, 0.75);
    }

    #[test]
    fn tied_scores_move_as_one_block() {
        // Two blocks of two rows: PGR 0, .5, 1 at x 0, .5, 1 (the straight line = random tie-breaking).
        let m = binary_metrics(&[1.0, 1.0, 0.0, 0.0], &[1.0, 0.0, 1.0, 0.0], &[0.0; 4]);
        close(m.apgr, 0.5);
        // A constant score is one block: the random router's diagonal.
        let m = binary_metrics(&[0.3; 4], &[1.0, 0.0, 1.0, 0.0], &[0.0; 4]);
        close(m.apgr, 0.5);
        close(m.cpt80.unwrap(), 80.0);
    }

    #[test]
    fn oracle_pair_section() {
        let models = vec!["s".to_string(), "w".to_string()];
        let truth = vec![
            vec![1.0, 0.0],
            vec![1.0, 1.0],
            vec![0.0, 0.0],
            vec![0.0, 1.0],
        ];
        let pred = vec![vec![0.5, 0.5]; 4];
        let b = binary_section(&models, &truth, &pred, 0, 1);
        assert!(b.is_none(), "equal accuracies leave PGR undefined");
        let truth = vec![
            vec![1.0, 0.0],
            vec![1.0, 1.0],
            vec![0.0, 0.0],
            vec![1.0, 0.0],
        ];
        let b = binary_section(&models, &truth, &pred, 0, 1).unwrap();
        close(b.router.apgr, 0.5);
        // Oracle: the two gaining rows first, one tied block -> PGR 0, 1, 1 at x 0, .5, 1.
        close(b.oracle.cpt50.unwrap(), 25.0);
        close(b.oracle.apgr, 0.75);
    }
}
