//! Engine confidence: per-token log-probabilities reduced to the summary a
//! cascade's verifier reads (token count, mean and minimum log-probability).
//!
//! Backends push one log-probability per generated token as they go, so a
//! stream needs no buffer of them, and take the summary at the end.

/// How sure an engine was of the tokens it generated (natural-log
/// probabilities, each <= 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Confidence {
    /// Tokens the summary covers.
    pub tokens: u32,
    pub mean_logprob: f64,
    pub min_logprob: f64,
}

/// Accumulates log-probabilities token by token.
#[derive(Debug, Clone, Default)]
pub struct LogprobSummary {
    tokens: u32,
    sum: f64,
    min: f64,
    /// Set once a value was not a log-probability: a summary over the rest
    /// would overstate the engine's confidence, so none is given.
    broken: bool,
}

impl LogprobSummary {
    /// Adds one token's log-probability. A value that cannot be one (NaN,
    /// +inf, clearly positive) spoils the summary rather than being skipped.
    pub fn push(&mut self, logprob: f64) {
        // Engines round; a tiny positive value is a probability of 1.
        const ROUNDING: f64 = 1e-6;
        if logprob.is_nan() || logprob > ROUNDING {
            self.broken = true;
            return;
        }
        let logprob = logprob.min(0.0);
        self.min = if self.tokens == 0 {
            logprob
        } else {
            self.min.min(logprob)
        };
        self.tokens = self.tokens.saturating_add(1);
        self.sum += logprob;
    }

    /// Marks the summary unusable (the engine sent something that is not a
    /// log-probability where one was due).
    pub fn spoil(&mut self) {
        self.broken = true;
    }

    /// The summary, or `None` when no token was covered or a value was bad.
    pub fn finish(&self) -> Option<Confidence> {
        if self.broken || self.tokens == 0 {
            return None;
        }
        Some(Confidence {
            tokens: self.tokens,
            mean_logprob: self.sum / f64::from(self.tokens),
            min_logprob: self.min,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_min() {
        let mut s = LogprobSummary::default();
        assert_eq!(s.finish(), None);
        for lp in [-0.5, -0.25, -2.0, 0.0] {
            s.push(lp);
        }
        let c = s.finish().unwrap();
        assert_eq!(c.tokens, 4);
        assert!((c.mean_logprob - (-2.75 / 4.0)).abs() < 1e-12);
        assert_eq!(c.min_logprob, -2.0);
    }

    #[test]
    fn bad_values_spoil_the_summary() {
        let mut s = LogprobSummary::default();
        s.push(-0.1);
        s.push(1e-9); // rounding noise: counts as 0
        assert_eq!(
            s.finish().map(|c| (c.tokens, c.min_logprob)),
            Some((2, -0.1))
        );
        s.push(f64::NAN);
        assert_eq!(s.finish(), None);
        let mut s = LogprobSummary::default();
        s.push(0.5);
        assert_eq!(s.finish(), None);
        let mut s = LogprobSummary::default();
        s.push(f64::NEG_INFINITY);
        assert_eq!(s.finish().map(|c| c.min_logprob), Some(f64::NEG_INFINITY));
    }
}
