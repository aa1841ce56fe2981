//! Retry budgets: failovers may add at most a fixed share of extra load,
//! plus a burst, so a sick pool never turns into a retry storm. Two are
//! kept: one for failures a worker reported (it is full, draining, its
//! engine failed before generating), and a larger one for workers that could
//! not be reached at all (a crashed process, a dropped connection). The
//! latter is self-limiting, since the worker is marked unhealthy on its
//! first such failure, and its burst grows with the request rate, so that
//! every request in flight to a worker killed at 1,000 req/s can move on.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct RetryBudget {
    state: Mutex<Balance>,
    ratio: f64,
    burst: f64,
    /// The burst is at least this many seconds of admitted requests
    /// (0: a fixed burst).
    burst_seconds: f64,
}

#[derive(Debug)]
struct Balance {
    tokens: f64,
    /// Requests admitted in the current second, and in the last whole one.
    this_second: (Instant, f64),
    last_second: f64,
}

impl RetryBudget {
    /// `ratio`: retries allowed per request served; `burst`: retries
    /// available at once (also the starting balance).
    pub(crate) fn new(ratio: f64, burst: f64) -> Self {
        Self {
            state: Mutex::new(Balance {
                tokens: burst,
                this_second: (Instant::now(), 0.0),
                last_second: 0.0,
            }),
            ratio,
            burst,
            burst_seconds: 0.0,
        }
    }

    /// A budget whose burst is at least `seconds` of the request rate.
    pub(crate) fn scaled_to_rate(mut self, seconds: f64) -> Self {
        self.burst_seconds = seconds;
        self
    }

    /// A request was admitted: it earns a share of a retry.
    pub(crate) fn deposit(&self) {
        let Ok(mut b) = self.state.lock() else { return };
        let now = Instant::now();
        if now.duration_since(b.this_second.0) >= Duration::from_secs(1) {
            b.last_second = b.this_second.1;
            b.this_second = (now, 0.0);
        }
        b.this_second.1 += 1.0;
        let cap = self
            .burst
            .max(self.burst_seconds * b.last_second.max(b.this_second.1));
        b.tokens = (b.tokens + self.ratio).min(cap);
    }

    /// Spends one retry if the budget has it.
    pub(crate) fn try_withdraw(&self) -> bool {
        match self.state.lock() {
            Ok(mut b) if b.tokens >= 1.0 => {
                b.tokens -= 1.0;
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

    #[test]
    fn a_rate_scaled_burst_grows_with_traffic_and_stays_bounded() {
        let b = RetryBudget::new(0.5, 10.0).scaled_to_rate(0.5);
        // 1,000 requests within this second: the cap is 500, reached after
        // 1,000 deposits at 0.5 each (less the 10 it started with).
        for _ in 0..1000 {
            b.deposit();
        }
        let mut burst = 0;
        while b.try_withdraw() {
            burst += 1;
        }
        assert_eq!(burst, 500, "half a second of traffic");
        // And it is not a storm: with no new traffic, nothing more.
        assert!(!b.try_withdraw());
    }
}
