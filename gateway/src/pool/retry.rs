//! A retry budget: failovers may add at most a fixed share of extra load,
//! plus a small burst, so a sick pool never turns into a retry storm.

use std::sync::Mutex;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    tokens: Mutex<f64>,
    ratio: f64,
    burst: f64,
}

impl RetryBudget {
    /// `ratio`: retries allowed per request served; `burst`: retries
    /// available at once (also the starting balance).
    pub(crate) fn new(ratio: f64, burst: f64) -> Self {
        Self {
            tokens: Mutex::new(burst),
            ratio,
            burst,
        }
    }

    /// A request was admitted: it earns a share of a retry.
    pub(crate) fn deposit(&self) {
        if let Ok(mut t) = self.tokens.lock() {
            *t = (*t + self.ratio).min(self.burst);
        }
    }

    /// Spends one retry if the budget has it.
    pub(crate) fn try_withdraw(&self) -> bool {
        match self.tokens.lock() {
            Ok(mut t) if *t >= 1.0 => {
                *t -= 1.0;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_ratio() {
        let b = RetryBudget::new(0.2, 2.0);
        assert!(
            b.try_withdraw() && b.try_withdraw() && !b.try_withdraw(),
            "the burst, then nothing"
        );
        let mut retried = 0;
        for _ in 0..100 {
            b.deposit();
            retried += usize::from(b.try_withdraw());
        }
        assert_eq!(retried, 20, "one retry per five requests");
    }
}
