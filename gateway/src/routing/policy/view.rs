//! One worker as a policy sees it at decision time: its model, health, load
//! and speed; and the speed assumed for a worker nobody has observed yet
//! (its declared figures, its tier's observed median, or a tier default),
//! so an unused worker never looks instant.

use std::fmt;

use routemesh_mesh::{Capabilities, ModelSpec, Tier};

/// Whether a worker may take requests now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Its last load check failed, or it is draining.
    Down,
    /// It answers load checks but its calls kept failing: its circuit
    /// breaker is open (or half-open with its probe slots taken).
    CircuitOpen {
        half_open: bool,
    },
}

/// Where a worker's speed figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencySource {
    /// Every gateway replica's observations.
    Telemetry,
    /// The worker's own load report (its engine's recent medians).
    LoadReport,
    /// What the worker registered: its `expected_ttft_ms` /
    /// `expected_tokens_per_second`, or its sim engine's configured speed.
    Declared,
    /// The median of the measured workers of its tier.
    TierMedian,
    /// The tier's conservative default ([`tier_default_speed`]).
    TierDefault,
    /// Nothing measured: an input state only. Screening replaces it with
    /// `Declared`, `TierMedian` or `TierDefault`, so no decision shows it.
    Unknown,
}

impl LatencySource {
    pub fn as_str(self) -> &'static str {
        match self {
            LatencySource::Telemetry => "telemetry",
            LatencySource::LoadReport => "load-report",
            LatencySource::Declared => "declared",
            LatencySource::TierMedian => "tier-median",
            LatencySource::TierDefault => "tier-default",
            LatencySource::Unknown => "unknown",
        }
    }

    /// Figures measured from the worker's own requests.
    fn is_measured(self) -> bool {
        matches!(self, LatencySource::Telemetry | LatencySource::LoadReport)
    }
}

/// A median time to first token and decode speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    pub ttft_ms: f64,
    pub tokens_per_second: f64,
}

/// The speed assumed for a worker nobody has measured, that declared
/// nothing, in a tier where no worker is measured either. Deliberately
/// slower than typical engines (a 7-9B model on one GPU answers in ~100 ms
/// and decodes at 80+ tok/s; a 70B-class one in ~300 ms at ~40 tok/s), so
/// an unknown worker passes a `latency_slo_ms` only when the SLO is loose,
/// and measured workers of similar speed are not lost to it.
pub fn tier_default_speed(tier: Tier) -> Speed {
    match tier {
        Tier::Small => Speed {
            ttft_ms: 300.0,
            tokens_per_second: 60.0,
        },
        Tier::Large => Speed {
            ttft_ms: 800.0,
            tokens_per_second: 30.0,
        },
    }
}

/// Per tier, the median speed of the pool's measured workers.
#[derive(Debug, Default)]
pub(super) struct TierMedians(Vec<(Tier, Speed)>);

impl TierMedians {
    pub(super) fn of(workers: &[WorkerView<'_>]) -> Self {
        let medians = Tier::ALL
            .iter()
            .filter_map(|&tier| {
                let (mut ttft, mut tps): (Vec<f64>, Vec<f64>) = workers
                    .iter()
                    .filter(|w| w.model.tier == tier && w.latency_source.is_measured())
                    .filter(|w| w.tokens_per_second_p50 > 0.0)
                    .map(|w| (w.ttft_ms_p50, w.tokens_per_second_p50))
                    .unzip();
                Some((
                    tier,
                    Speed {
                        ttft_ms: median(&mut ttft)?,
                        tokens_per_second: median(&mut tps)?,
                    },
                ))
            })
            .collect();
        Self(medians)
    }

    fn get(&self, tier: Tier) -> Option<Speed> {
        self.0.iter().find(|(t, _)| *t == tier).map(|(_, s)| *s)
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

impl fmt::Display for LatencySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct WorkerView<'a> {
    pub worker_id: &'a str,
    pub model: &'a ModelSpec,
    /// What its engine can serve.
    pub capabilities: Capabilities,
    pub health: Health,
    /// Requests this gateway has in flight to the worker.
    pub gateway_in_flight: u32,
    /// Requests the worker reported generating (all gateways).
    pub reported_in_flight: u32,
    /// Requests the worker reported waiting for a slot.
    pub queue_depth: u32,
    /// Concurrent slots.
    pub capacity: u32,
    /// Waiting requests the worker accepts before refusing.
    pub max_queue: u32,
    /// Median time to first token, milliseconds; 0 when unknown.
    pub ttft_ms_p50: f64,
    /// Median decode speed, tokens/s; 0 when unknown.
    pub tokens_per_second_p50: f64,
    pub latency_source: LatencySource,
    /// Share of recent requests that failed at this worker, in [0, 1].
    pub error_rate: f64,
    /// Observed median end-to-end latency, used when the speed figures are
    /// unknown (e.g. an engine that only answers unary calls).
    pub observed_latency_ms_p50: Option<f64>,
    /// The time to first token the worker registered, if any.
    pub declared_ttft_ms: Option<f64>,
    /// The decode speed the worker registered, if any.
    pub declared_tokens_per_second: Option<f64>,
}

impl WorkerView<'_> {
    /// Work ahead of a new request, as a multiple of the worker's slots.
    pub fn load(&self) -> f64 {
        let busy = self.gateway_in_flight.max(self.reported_in_flight) + self.queue_depth;
        f64::from(busy) / f64::from(self.capacity.max(1))
    }

    pub(super) fn has_room(&self) -> bool {
        let busy = self.gateway_in_flight.max(self.reported_in_flight) + self.queue_depth;
        busy < self.capacity.saturating_add(self.max_queue)
    }

    /// This view with figures for a worker nothing was measured of: its
    /// declared figures (a missing one from the fallback), else its tier's
    /// measured median, else the tier default. Measured views are unchanged.
    pub(super) fn with_latency_prior(&self, medians: &TierMedians) -> Self {
        let mut w = self.clone();
        if w.latency_source != LatencySource::Unknown {
            return w;
        }
        let (fallback, source) = match medians.get(w.model.tier) {
            Some(speed) => (speed, LatencySource::TierMedian),
            None => (tier_default_speed(w.model.tier), LatencySource::TierDefault),
        };
        let declared = w.declared_ttft_ms.is_some() || w.declared_tokens_per_second.is_some();
        w.ttft_ms_p50 = w.declared_ttft_ms.unwrap_or(fallback.ttft_ms);
        w.tokens_per_second_p50 = w
            .declared_tokens_per_second
            .filter(|tps| *tps > 0.0)
            .unwrap_or(fallback.tokens_per_second);
        w.latency_source = if declared {
            LatencySource::Declared
        } else {
            source
        };
        w
    }

    /// Expected end-to-end latency of a request producing `completion_tokens`,
    /// or `None` when the worker has not reported its speed yet.
    pub fn expected_latency_ms(&self, completion_tokens: u32) -> Option<f64> {
        let service = if self.tokens_per_second_p50 > 0.0 {
            self.ttft_ms_p50 + f64::from(completion_tokens) * 1000.0 / self.tokens_per_second_p50
        } else {
            self.observed_latency_ms_p50?
        };
        // Requests beyond the slots wait for roughly one service time per slot-load.
        let queueing = (self.load() - 1.0).max(0.0) * service;
        Some(service + queueing)
    }
}
