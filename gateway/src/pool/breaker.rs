//! A circuit breaker per worker: closed → open after `failures` consecutive
//! failed calls (or a failure rate over a window), open for a backoff, then
//! half-open, letting `half_open_probes` requests through; a probe's success
//! closes it, a failure re-opens it with the backoff doubled (up to
//! `max_open_for`).
//!
//! Load checks say whether a worker answers; the breaker says whether its
//! *requests* succeed, so a worker whose engine fails while its agent is
//! fine stops taking traffic instead of failing a request every load check.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Off: only load checks and the error-rate penalty keep traffic away.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Consecutive failed calls that open the breaker.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Failure share over `window` that opens the breaker (with at least
    /// `min_requests` calls in the window); 1.0 or more turns the rule off.
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_window", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub window: Duration,
    /// First time open; doubled at every failed probe.
    #[serde(default = "default_open_for", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub open_for: Duration,
    #[serde(default = "default_max_open_for", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub max_open_for: Duration,
    /// Requests let through at once while half-open.
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
}

fn yes() -> bool {
    true
}
fn default_failures() -> u32 {
    5
}
fn default_failure_rate() -> f64 {
    0.5
}
fn default_min_requests() -> u32 {
    20
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_open_for() -> Duration {
    Duration::from_secs(1)
}
fn default_max_open_for() -> Duration {
    Duration::from_secs(30)
}
fn default_probes() -> u32 {
    1
}

impl Default for BreakerConfig {
    fn default() -> Self {
        serde_norway::from_str("{}").unwrap_or_else(|_| unreachable!("empty breaker config parses"))
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad =
            |key: &str, why: &str| Err((format!("gateway.circuit_breaker.{key}"), why.into()));
        if self.failures == 0 {
            return bad("failures", "must be at least 1");
        }
        if !(self.failure_rate.is_finite() && self.failure_rate > 0.0) {
            return bad("failure_rate", "must be a number > 0");
        }
        if self.half_open_probes == 0 {
            return bad("half_open_probes", "must be at least 1");
        }
        if self.open_for.is_zero() || self.max_open_for < self.open_for {
            return bad("open_for", "must be > 0 and at most max_open_for");
        }
        if self.window.is_zero() {
            return bad("window", "must be > 0");
        }
        Ok(())
    }
}

/// What the breaker lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The state as the `routemesh_circuit_breaker_state` gauge shows it:
    /// 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed {
        consecutive: u32,
        window_start: Instant,
        calls: u32,
        failed: u32,
    },
    Open {
        until: Instant,
        backoff: Duration,
    },
    HalfOpen {
        probes: u32,
        backoff: Duration,
        /// Which half-open period this is, so a late release of an older
        /// probe never frees a slot of a newer one.
        generation: u64,
    },
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<(Inner, u64)>,
}

/// A call the breaker let through. `probe` is the half-open period it
/// probes, if it is a probe: dropped without an outcome, it frees the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub probe: Option<u64>,
}

fn closed(now: Instant) -> Inner {
    Inner::Closed {
        consecutive: 0,
        window_start: now,
        calls: 0,
        failed: 0,
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new((closed(Instant::now()), 0)),
        }
    }

    fn state_of(inner: &Inner, now: Instant) -> State {
        match inner {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until, .. } if now < *until => State::Open,
            // Its time is up: the next request is a probe.
            Inner::Open { .. } | Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    pub fn state(&self) -> State {
        self.inner
            .lock()
            .map_or(State::Closed, |i| Self::state_of(&i.0, Instant::now()))
    }

    /// Whether routing may choose this worker now (no side effect).
    pub fn allows(&self, now: Instant) -> bool {
        if !self.config.enabled {
            return true;
        }
        let Ok(inner) = self.inner.lock() else {
            return true;
        };
        match &inner.0 {
            Inner::Closed { .. } => true,
            Inner::Open { until, .. } => now >= *until,
            Inner::HalfOpen { probes, .. } => *probes < self.config.half_open_probes,
        }
    }

    /// Claims a call to this worker (a probe slot when half-open); `None`
    /// when another request took the last slot since routing looked.
    pub fn acquire(&self, now: Instant) -> (Option<Permit>, Option<Transition>) {
        let free = Some(Permit { probe: None });
        if !self.config.enabled {
            return (free, None);
        }
        let Ok(mut guard) = self.inner.lock() else {
            return (free, None);
        };
        let (inner, generations) = &mut *guard;
        match inner {
            Inner::Closed { .. } => (free, None),
            Inner::Open { until, backoff } => {
                if now < *until {
                    return (None, None);
                }
                *generations += 1;
                *inner = Inner::HalfOpen {
                    probes: 1,
                    backoff: *backoff,
                    generation: *generations,
                };
                (
                    Some(Permit {
                        probe: Some(*generations),
                    }),
                    Some(Transition {
                        from: State::Open,
                        to: State::HalfOpen,
                    }),
                )
            }
            Inner::HalfOpen {
                probes, generation, ..
            } => {
                if *probes < self.config.half_open_probes {
                    *probes += 1;
                    (
                        Some(Permit {
                            probe: Some(*generation),
                        }),
                        None,
                    )
                } else {
                    (None, None)
                }
            }
        }
    }

    /// A call ended. A probe that said nothing about the worker (the client
    /// left, the worker was merely full) frees its slot; one that reported
    /// an outcome already moved the breaker out of that half-open period.
    pub fn release(&self, permit: Permit) {
        let Some(probe) = permit.probe else {
            return;
        };
        if let Ok(mut guard) = self.inner.lock()
            && let Inner::HalfOpen {
                probes, generation, ..
            } = &mut guard.0
            && *generation == probe
        {
            *probes = probes.saturating_sub(1);
        }
    }

    pub fn on_success(&self, now: Instant) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        let mut guard = self.inner.lock().ok()?;
        let inner = &mut guard.0;
        match inner {
            Inner::Closed {
                consecutive,
                window_start,
                calls,
                failed,
            } => {
                *consecutive = 0;
                Self::count(&self.config, now, window_start, calls, failed, false);
                None
            }
            Inner::HalfOpen { .. } => {
                *inner = closed(now);
                Some(Transition {
                    from: State::HalfOpen,
                    to: State::Closed,
                })
            }
            // A call that began before the breaker opened: no news.
            Inner::Open { .. } => None,
        }
    }

    pub fn on_failure(&self, now: Instant) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        let mut guard = self.inner.lock().ok()?;
        let inner = &mut guard.0;
        let config = &self.config;
        match inner {
            Inner::Closed {
                consecutive,
                window_start,
                calls,
                failed,
            } => {
                *consecutive += 1;
                Self::count(config, now, window_start, calls, failed, true);
                let rate_tripped = *calls >= config.min_requests
                    && f64::from(*failed) >= config.failure_rate * f64::from(*calls);
                if *consecutive >= config.failures || rate_tripped {
                    *inner = Inner::Open {
                        until: now + config.open_for,
                        backoff: config.open_for,
                    };
                    return Some(Transition {
                        from: State::Closed,
                        to: State::Open,
                    });
                }
                None
            }
            Inner::HalfOpen { backoff, .. } => {
                let backoff = (*backoff * 2).min(config.max_open_for);
                *inner = Inner::Open {
                    until: now + backoff,
                    backoff,
                };
                Some(Transition {
                    from: State::HalfOpen,
                    to: State::Open,
                })
            }
            Inner::Open { .. } => None,
        }
    }

    /// Counts a call in the closed state's failure-rate window (a tumbling
    /// window: cheap, and exact enough to tell a failing worker).
    fn count(
        config: &BreakerConfig,
        now: Instant,
        window_start: &mut Instant,
        calls: &mut u32,
        failed: &mut u32,
        failure: bool,
    ) {
        if now.duration_since(*window_start) >= config.window {
            *window_start = now;
            *calls = 0;
            *failed = 0;
        }
        *calls += 1;
        *failed += u32::from(failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failures: 3,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(4),
            half_open_probes: 1,
            ..BreakerConfig::default()
        })
    }

    #[test]
    fn opens_after_consecutive_failures_probes_and_closes() {
        let b = breaker();
        let t0 = Instant::now();
        assert!(b.acquire(t0).0.is_some());
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_success(t0), None); // resets the streak
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(
            b.on_failure(t0),
            Some(Transition {
                from: State::Closed,
                to: State::Open
            })
        );
        assert!(!b.allows(t0));
        assert!(b.acquire(t0 + Duration::from_millis(999)).0.is_none());
        // After the backoff: one probe, and only one.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.allows(t1));
        assert_eq!(
            b.acquire(t1),
            (
                Some(Permit { probe: Some(1) }),
                Some(Transition {
                    from: State::Open,
                    to: State::HalfOpen
                })
            )
        );
        assert!(!b.allows(t1));
        assert!(b.acquire(t1).0.is_none());
        assert_eq!(
            b.on_success(t1),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
        assert!(b.allows(t1) && b.state() == State::Closed);
    }

    #[test]
    fn failed_probes_reopen_with_growing_backoff() {
        let b = breaker();
        let mut now = Instant::now();
        for _ in 0..3 {
            b.on_failure(now);
        }
        for expected in [2, 4, 4] {
            now += Duration::from_secs(10);
            assert!(b.acquire(now).0.is_some());
            assert_eq!(
                b.on_failure(now),
                Some(Transition {
                    from: State::HalfOpen,
                    to: State::Open
                })
            );
            assert!(!b.allows(now + Duration::from_secs(expected) - Duration::from_millis(1)));
            assert!(b.allows(now + Duration::from_secs(expected)));
        }
        // A probe that ends without news frees its slot...
        now += Duration::from_secs(10);
        let probe = b.acquire(now).0.unwrap();
        b.release(probe);
        let probe = b.acquire(now).0.unwrap();
        // ...but one of an earlier half-open period frees nothing.
        b.release(Permit { probe: Some(1) });
        assert!(b.acquire(now).0.is_none());
        // Success after probing restarts from the base backoff.
        b.on_success(now);
        b.release(probe);
        for _ in 0..3 {
            b.on_failure(now);
        }
        assert!(b.allows(now + Duration::from_secs(1)));
    }

    #[test]
    fn failure_rate_over_the_window_opens() {
        let b = Breaker::new(BreakerConfig {
            failures: 100,
            failure_rate: 0.5,
            min_requests: 10,
            ..BreakerConfig::default()
        });
        let now = Instant::now();
        // Alternating: never 100 in a row, but half of the calls fail.
        for i in 0..9 {
            if i % 2 == 0 {
                assert_eq!(b.on_failure(now), None);
            } else {
                b.on_success(now);
            }
        }
        assert_eq!(
            b.on_failure(now).map(|t| t.to),
            Some(State::Open),
            "6 of 10 failed"
        );
    }

    #[test]
    fn disabled_lets_everything_through() {
        let b = Breaker::new(BreakerConfig {
            enabled: false,
            failures: 1,
            ..BreakerConfig::default()
        });
        let now = Instant::now();
        b.on_failure(now);
        assert!(b.allows(now) && b.acquire(now).0.is_some());
        assert_eq!(b.state(), State::Closed);
    }
}
