//! The cascade's acceptance threshold calibrated on rows with recorded answers: the verifier's score of
//! the weak model's answer per row, both models' recorded quality and cost, and a target (a share of
//! escalations, or a mean cost per request) give the threshold for `gateway.cascade.accept_threshold`.
//!
//! The gateway accepts an answer when its score is `>= accept_threshold` and escalates it otherwise; a
//! cascade pays the weak call on every request and the strong call on escalated ones (the cost model of
//! shared/data/README.md).

/// One request of the calibration set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CascadeRow {
    /// The verifier's score of the weak model's recorded answer.
    pub score: f64,
    pub q_weak: f64,
    pub q_strong: f64,
    pub cost_weak: f64,
    pub cost_strong: f64,
}

/// What the threshold is calibrated for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The share of requests escalated (0..=1); the nearest reachable share is taken.
    EscalationShare(f64),
    /// A mean cost per request in USD: the largest escalation share whose cost stays within it.
    CostPerRequest(f64),
}

/// What a threshold does on the calibration rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperatingPoint {
    /// Accept when `score >= threshold`; in [0, 1], the shortest decimal that splits the rows this way.
    pub threshold: f64,
    pub escalated: usize,
    pub rows: usize,
    pub share: f64,
    /// Mean USD per request: every weak call plus the strong calls of escalated requests.
    pub cost: f64,
    /// Mean recorded quality of the answers returned (the strong model's where escalated).
    pub quality: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ThresholdError {
    #[error("no rows to calibrate the cascade on")]
    NoRows,
    #[error("row {0}: the verifier's score is not a number")]
    NanScore(usize),
    #[error("escalation share {0}: a share of requests is between 0 and 1")]
    BadShare(f64),
    #[error("target cost {0}: a cost per request in USD is positive")]
    BadCost(f64),
    #[error(
        "target cost {target:.3e} USD per request is out of reach on these rows: the cheapest reachable cost, escalating nothing (the weak model's calls alone), is {cheapest:.3e}"
    )]
    Unreachable { target: f64, cheapest: f64 },
}

/// The acceptance threshold reaching `target` on `rows`, with what it does there.
pub fn calibrate(rows: &[CascadeRow], target: Target) -> Result<OperatingPoint, ThresholdError> {
    if rows.is_empty() {
        return Err(ThresholdError::NoRows);
    }
    if let Some(i) = rows.iter().position(|r| r.score.is_nan()) {
        return Err(ThresholdError::NanScore(i));
    }
    match target {
        Target::EscalationShare(s) if !(0.0..=1.0).contains(&s) => {
            return Err(ThresholdError::BadShare(s));
        }
        Target::CostPerRequest(c) if !(c.is_finite() && c > 0.0) => {
            return Err(ThresholdError::BadCost(c));
        }
        _ => {}
    }
    let mut sorted = rows.to_vec();
    sorted.sort_by(|a, b| a.score.total_cmp(&b.score));
    let n = sorted.len();
    // A threshold escalates a prefix of the ascending scores: the first k when it lies in (s[k-1], s[k]].
    let interval = |k: usize| -> (f64, f64) {
        let lo = if k == 0 {
            f64::NEG_INFINITY
        } else {
            sorted[k - 1].score
        };
        (lo, sorted.get(k).map_or(f64::INFINITY, |r| r.score))
    };
    // Only prefixes ending between two distinct scores are reachable (tied answers are accepted or
    // escalated together), and the threshold must lie in [0, 1] for the gateway's config.
    let reachable: Vec<usize> = (0..=n)
        .filter(|&k| {
            let (lo, hi) = interval(k);
            lo < hi && lo < 1.0 && hi >= 0.0
        })
        .collect();
    let weak_cost: f64 = sorted.iter().map(|r| r.cost_weak).sum();
    let weak_quality: f64 = sorted.iter().map(|r| r.q_weak).sum();
    let mut strong_prefix = vec![0.0; n + 1];
    let mut gain_prefix = vec![0.0; n + 1];
    for (i, r) in sorted.iter().enumerate() {
        strong_prefix[i + 1] = strong_prefix[i] + r.cost_strong;
        gain_prefix[i + 1] = gain_prefix[i] + (r.q_strong - r.q_weak);
    }
    let nf = n as f64;
    let cost_at = |k: usize| (weak_cost + strong_prefix[k]) / nf;
    let k = match target {
        Target::EscalationShare(s) => {
            let want = s * nf;
            // The nearest reachable count; on a tie the cheaper (fewer escalations). Never empty:
            // escalating exactly the negative scores (none, for probabilities) is always reachable.
            reachable
                .iter()
                .copied()
                .min_by(|&a, &b| (a as f64 - want).abs().total_cmp(&(b as f64 - want).abs()))
                .unwrap_or(0)
        }
        Target::CostPerRequest(target) => {
            // Costs are sums of many small floats: a target computed the same way by hand must match.
            let within = |k: usize| cost_at(k) <= target * (1.0 + 1e-12);
            match reachable.iter().copied().filter(|&k| within(k)).max() {
                Some(k) => k,
                None => {
                    return Err(ThresholdError::Unreachable {
                        target,
                        cheapest: cost_at(0),
                    });
                }
            }
        }
    };
    let (lo, hi) = interval(k);
    Ok(OperatingPoint {
        threshold: short_decimal_in(lo, hi.min(1.0)),
        escalated: k,
        rows: n,
        share: k as f64 / nf,
        cost: cost_at(k),
        quality: (weak_quality + gain_prefix[k]) / nf,
    })
}

/// The shortest decimal `t >= 0` in `(lo, hi]`, so the pasted YAML value splits the rows the same way
/// (the gateway scores with the same code, hence the same f64s). Needs `lo < hi` and `hi >= 0`.
fn short_decimal_in(lo: f64, hi: f64) -> f64 {
    for digits in 0..=17usize {
        let step = 10f64.powi(-(digits as i32));
        // The first multiple of `step` above `lo`; `lo / step` is off by an ulp either way (0.3 / 0.1 is
        // 2.9999999999999996), so the neighbours are tried in increasing order too.
        let base = (lo / step).floor();
        for off in 0..3 {
            let v = ((base + f64::from(off)) * step).max(0.0);
            // Printing and parsing back removes the multiplication's noise (0.30000000000000004).
            let v: f64 = format!("{v:.digits$}").parse().unwrap_or(hi);
            if v > lo && v <= hi {
                return v;
            }
        }
    }
    hi.max(0.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Five requests; weak calls cost 1, strong calls 10 (so k escalations cost (5 + 10k) / 5 = 1 + 2k).
    /// Sorted by score: 0.1 (weak wrong, strong right), 0.3 (wrong, right), 0.3 (right, right),
    /// 0.6 (wrong, wrong), 0.9 (right, right).
    fn fixture() -> Vec<CascadeRow> {
        let row = |score, q_weak, q_strong| CascadeRow {
            score,
            q_weak,
            q_strong,
            cost_weak: 1.0,
            cost_strong: 10.0,
        };
        vec![
            row(0.6, 0.0, 0.0),
            row(0.1, 0.0, 1.0),
            row(0.9, 1.0, 1.0),
            row(0.3, 0.0, 1.0),
            row(0.3, 1.0, 1.0),
        ]
    }

    fn escalated_by(rows: &[CascadeRow], t: f64) -> usize {
        rows.iter().filter(|r| r.score < t).count()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn threshold_from_a_share() {
        let rows = fixture();
        // 20%: the lowest score (0.1) escalates; the shortest decimal in (0.1, 0.3] is 0.2.
        let p = calibrate(&rows, Target::EscalationShare(0.2)).unwrap();
        assert_eq!(p.threshold, 0.2);
        assert_eq!((p.escalated, p.rows), (1, 5));
        assert!(close(p.share, 0.2));
        assert!(close(p.cost, 3.0), "(5 + 10) / 5: {}", p.cost);
        // Returned: strong 1 (score 0.1) + weak 0, 0, 1, 1.
        assert!(close(p.quality, 3.0 / 5.0), "{}", p.quality);
        // 40% would split the tied 0.3s: 20% and 60% are as near, the cheaper wins; 50% goes to 60%
        // (3 escalations, threshold in (0.3, 0.6]: 0.4), quality strong 1, 1, 1 + weak 0, 1.
        let p = calibrate(&rows, Target::EscalationShare(0.4)).unwrap();
        assert_eq!(p.escalated, 1);
        let p = calibrate(&rows, Target::EscalationShare(0.5)).unwrap();
        assert_eq!((p.escalated, p.threshold), (3, 0.4));
        assert!(close(p.cost, 7.0) && close(p.quality, 4.0 / 5.0));
        // The ends: nothing (threshold 0) and everything (threshold 1, above 0.9).
        let p = calibrate(&rows, Target::EscalationShare(0.0)).unwrap();
        assert_eq!((p.escalated, p.threshold), (0, 0.0));
        assert!(close(p.cost, 1.0) && close(p.quality, 0.4));
        let p = calibrate(&rows, Target::EscalationShare(1.0)).unwrap();
        assert_eq!((p.escalated, p.threshold), (5, 1.0));
        assert!(close(p.cost, 11.0) && close(p.quality, 0.8));
        // The printed threshold splits the rows as reported, the gateway's way (escalate below it).
        for s in [0.0, 0.2, 0.5, 0.6, 0.8, 1.0] {
            let p = calibrate(&rows, Target::EscalationShare(s)).unwrap();
            assert_eq!(escalated_by(&rows, p.threshold), p.escalated, "{s}");
        }
        assert_eq!(
            calibrate(&rows, Target::EscalationShare(1.5)),
            Err(ThresholdError::BadShare(1.5))
        );
    }

    #[test]
    fn threshold_from_a_cost() {
        let rows = fixture();
        // k escalations cost 1 + 2k; the reachable k are 0, 1, 3, 4 and 5.
        // 6 USD: k = 2 would split the tie at 0.3, so 1 escalation at 3 USD.
        let p = calibrate(&rows, Target::CostPerRequest(6.0)).unwrap();
        assert_eq!((p.escalated, p.threshold), (1, 0.2));
        assert!(close(p.cost, 3.0) && close(p.quality, 0.6));
        // Exactly 7 USD: 3 escalations fit (threshold 0.4).
        let p = calibrate(&rows, Target::CostPerRequest(7.0)).unwrap();
        assert_eq!((p.escalated, p.threshold), (3, 0.4));
        // 9.5: 4 escalations (9 USD), threshold in (0.6, 0.9]: 0.7; quality strong 1, 1, 1, 0 + weak 1.
        let p = calibrate(&rows, Target::CostPerRequest(9.5)).unwrap();
        assert_eq!((p.escalated, p.threshold), (4, 0.7));
        assert!(close(p.cost, 9.0) && close(p.quality, 0.8));
        assert!(close(p.share, 0.8));
        // Plenty: everything escalated. Just the weak calls: nothing.
        let p = calibrate(&rows, Target::CostPerRequest(100.0)).unwrap();
        assert_eq!((p.escalated, p.threshold), (5, 1.0));
        let p = calibrate(&rows, Target::CostPerRequest(1.0)).unwrap();
        assert_eq!((p.escalated, p.threshold), (0, 0.0));
    }

    #[test]
    fn an_unreachable_cost_names_the_cheapest() {
        let err = calibrate(&fixture(), Target::CostPerRequest(0.5)).unwrap_err();
        assert_eq!(
            err,
            ThresholdError::Unreachable {
                target: 0.5,
                cheapest: 1.0
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("cheapest reachable cost") && msg.contains("is 1.000e0"),
            "{msg}"
        );
        assert_eq!(
            calibrate(&[], Target::CostPerRequest(1.0)),
            Err(ThresholdError::NoRows)
        );
        assert_eq!(
            calibrate(&fixture(), Target::CostPerRequest(-1.0)),
            Err(ThresholdError::BadCost(-1.0))
        );
    }

    #[test]
    fn short_decimals() {
        assert_eq!(short_decimal_in(0.1, 0.3), 0.2);
        assert_eq!(short_decimal_in(f64::NEG_INFINITY, 0.1), 0.0);
        assert_eq!(short_decimal_in(0.9, 1.0), 1.0);
        assert_eq!(short_decimal_in(0.61234, 0.61239), 0.61235);
        assert_eq!(short_decimal_in(0.61234, 0.6124), 0.6124);
        assert_eq!(
            short_decimal_in(0.3, 0.30000000000000004),
            0.30000000000000004
        );
    }
}
