//! Choosing the next token from logits: greedy (temperature 0) or sampled
//! with temperature and nucleus (top_p), reproducible with a seed.

use rand::{Rng, SeedableRng, rngs::StdRng};

#[derive(Debug)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: StdRng,
}

/// Candidates sorted for the nucleus before falling back to the whole
/// vocabulary: the nucleus almost always lies within them, and selecting
/// them is linear where sorting 49k logits a token is not.
const SHORTLIST: usize = 1024;

impl Sampler {
    pub fn new(temperature: f32, top_p: f32, seed: Option<u64>) -> Self {
        Self {
            temperature: temperature.max(0.0),
            top_p: if top_p > 0.0 && top_p <= 1.0 {
                top_p
            } else {
                1.0
            },
            rng: match seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_rng(&mut rand::rng()),
            },
        }
    }

    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 || logits.len() < 2 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (((l - max) / self.temperature).exp(), i as u32))
            .collect();
        let total: f32 = probs.iter().map(|p| p.0).sum();
        if !(total.is_finite() && total > 0.0) {
            return argmax(logits);
        }
        let by_prob = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        let keep = if self.top_p >= 1.0 {
            probs.len()
        } else {
            let short = SHORTLIST.min(probs.len() - 1);
            probs.select_nth_unstable_by(short, by_prob);
            probs[..short].sort_unstable_by(by_prob);
            let mut nucleus = nucleus_len(&probs[..short], total * self.top_p);
            if nucleus.is_none() {
                probs.sort_unstable_by(by_prob);
                nucleus = nucleus_len(&probs, total * self.top_p);
            }
            nucleus.unwrap_or(probs.len())
        };
        let mass: f32 = probs[..keep].iter().map(|p| p.0).sum();
        let mut target = self.rng.random::<f32>() * mass;
        for &(p, id) in &probs[..keep] {
            if target < p {
                return id;
            }
            target -= p;
        }
        probs[keep - 1].1
    }
}

/// How many of the sorted candidates it takes to reach `mass`, if they do.
fn nucleus_len(sorted: &[(f32, u32)], mass: f32) -> Option<usize> {
    let mut sum = 0f32;
    for (i, p) in sorted.iter().enumerate() {
        sum += p.0;
        if sum >= mass {
            return Some(i + 1);
        }
    }
    None
}

/// The model's log-probability of `token` under `logits`: the log-softmax
/// at temperature 1, whatever the sampler's temperature or nucleus, so it
/// measures the model's own certainty (as OpenAI-compatible engines report
/// it) rather than the sampling settings. One pass of exponentials over the
/// vocabulary, about as costly as the greedy argmax; run only when asked.
pub fn log_prob(logits: &[f32], token: u32) -> f64 {
    let Some(&chosen) = logits.get(token as usize) else {
        return f64::NAN;
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return f64::NAN;
    }
    // Summed in f64: 49k terms in f32 would lose the small ones.
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    f64::from(chosen - max) - sum.ln()
}

/// [`log_prob`] of `token` and the `top` most likely tokens with theirs,
/// most likely first, from one normalisation: what a client asking for
/// `top_logprobs` gets. Selecting the top is linear in the vocabulary.
pub fn log_probs_with_top(logits: &[f32], token: u32, top: usize) -> (f64, Vec<(u32, f64)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() || (token as usize) >= logits.len() {
        return (f64::NAN, Vec::new());
    }
    let log_sum = logits
        .iter()
        .map(|&l| f64::from((l - max).exp()))
        .sum::<f64>()
        .ln();
    let lp = |id: u32| f64::from(logits[id as usize] - max) - log_sum;
    let top = top.min(logits.len());
    let mut best = Vec::new();
    if top > 0 {
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if top < ids.len() {
            ids.select_nth_unstable_by(top - 1, by_logit);
            ids.truncate(top);
        }
        ids.sort_unstable_by(by_logit);
        best = ids.into_iter().map(|id| (id, lp(id))).collect();
    }
    (lp(token), best)
}

/// The index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_is_the_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        for (i, &l) in logits.iter().enumerate() {
            let expected = f64::from(l) - z.ln();
            assert!((log_prob(&logits, i as u32) - expected).abs() < 1e-6);
        }
        // Large logits do not overflow; a certain token is log 1 = 0.
        assert!(log_prob(&[1000.0, 0.0], 0).abs() < 1e-9);
        assert!(log_prob(&[1.0], 3).is_nan());
    }

    #[test]
    fn top_log_probs_are_the_largest_in_order() {
        let logits = [0.5f32, 3.0, -1.0, 2.0, 2.5];
        let (lp, top) = log_probs_with_top(&logits, 3, 3);
        assert!((lp - log_prob(&logits, 3)).abs() < 1e-9);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 4, 3]);
        for (id, lp) in &top {
            assert!((lp - log_prob(&logits, *id)).abs() < 1e-9);
        }
        assert_eq!(log_probs_with_top(&logits, 0, 0).1, vec![]);
        assert_eq!(log_probs_with_top(&logits, 0, 99).1.len(), 5);
        assert!(log_probs_with_top(&logits, 9, 1).0.is_nan());
    }

    #[test]
    fn greedy_takes_the_largest() {
        let mut s = Sampler::new(0.0, 1.0, None);
        assert_eq!(s.next(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_p() {
        let logits: Vec<f32> = (0..2000).map(|i| -(i as f32) * 0.01).collect();
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 0.5, Some(seed));
            (0..50).map(|_| s.next(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // Half the mass of this distribution lies in the first ~69 tokens.
        assert!(draw(7).iter().all(|&t| t < 80), "{:?}", draw(7));
        // A tiny nucleus is the top token alone.
        let mut s = Sampler::new(1.0, 1e-6, Some(1));
        assert!((0..20).all(|_| s.next(&logits) == 0));
        // High temperature spreads the draws.
        let mut s = Sampler::new(2.0, 1.0, Some(3));
        assert!((0..50).map(|_| s.next(&logits)).any(|t| t > 200));
    }
}
