//! Log-spaced latency buckets that merge by addition, so histograms from many
//! replicas and time slots combine into one before quantiles are read.

/// Buckets per doubling: about 19% between bucket bounds.
const PER_DOUBLING: f64 = 4.0;
/// Bucket count: up to 2^20 ms (about 17 minutes).
pub const BUCKETS: usize = 81;

/// The bucket of a value in milliseconds.
pub fn bucket(ms: f64) -> usize {
    if !ms.is_finite() || ms <= 1.0 {
        return 0;
    }
    ((ms.log2() * PER_DOUBLING).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in milliseconds.
pub fn upper_bound(i: usize) -> f64 {
    2f64.powf(i as f64 / PER_DOUBLING)
}

/// The `q` quantile (0..=1) of bucket counts: the upper bound of the bucket
/// holding that rank; `None` for an empty histogram.
pub fn quantile(counts: &[f64; BUCKETS], q: f64) -> Option<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total).max(f64::MIN_POSITIVE);
    let mut seen = 0.0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(upper_bound(i));
        }
    }
    Some(upper_bound(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for ms in [0.5, 1.0, 1.5, 10.0, 99.0, 1000.0, 123_456.0] {
            let b = bucket(ms);
            assert!(upper_bound(b) >= ms.max(1.0), "{ms}");
            if b > 0 {
                assert!(upper_bound(b - 1) < ms, "{ms}");
            }
        }
        assert_eq!(bucket(f64::NAN), 0);
        assert_eq!(bucket(1e12), BUCKETS - 1);
    }

    #[test]
    fn quantiles_within_one_bucket() {
        let mut counts = [0.0; BUCKETS];
        for ms in 1..=100 {
            counts[bucket(f64::from(ms))] += 1.0;
        }
        let p50 = quantile(&counts, 0.5).unwrap();
        let p99 = quantile(&counts, 0.99).unwrap();
        assert!((50.0..=50.0 * 1.19).contains(&p50), "{p50}");
        assert!((99.0..=99.0 * 1.19).contains(&p99), "{p99}");
        assert_eq!(quantile(&[0.0; BUCKETS], 0.5), None);
    }
}
