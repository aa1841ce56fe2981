//! One worker as a policy sees it at decision time: its model, health, load
//! and speed.

use std::fmt;

use routemesh_mesh::ModelSpec;

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
    /// The worker's own load report.
    LoadReport,
    Unknown,
}

impl LatencySource {
    pub fn as_str(self) -> &'static str {
        match self {
            LatencySource::Telemetry => "telemetry",
            LatencySource::LoadReport => "load-report",
            LatencySource::Unknown => "unknown",
        }
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
