//! How the policy sees a worker of the pool: its health (load checks and
//! circuit breaker), load, and speed from telemetry or its own reports,
//! with the figures it registered for when nothing is measured yet.

use routemesh_telemetry::Stats;

use super::policy::{Health, LatencySource, WorkerView};
use crate::pool::WorkerHandle;
use crate::pool::breaker::State;

/// The policy's view of worker `w`. Speed comes from what the gateways
/// observed (`observed`, every replica's telemetry) once there are
/// `min_requests` of it, else from the worker's own load report.
pub(crate) fn view_of<'a>(
    w: &'a WorkerHandle,
    observed: Option<&Stats>,
    min_requests: f64,
) -> WorkerView<'a> {
    let load = w.last_load();
    let engine = load.as_ref().and_then(|l| l.engine.as_ref());
    let observed = observed.filter(|o| o.requests >= min_requests);
    let telemetry_speed = observed.and_then(|o| Some((o.ttft_ms_p50?, o.tokens_per_second?)));
    let reported_speed = engine
        .filter(|e| e.tokens_per_second_p50 > 0.0)
        .map(|e| (e.time_to_first_token_ms_p50, e.tokens_per_second_p50));
    let observed_latency = observed.and_then(|o| o.latency_ms_p50);
    let (ttft_ms_p50, tokens_per_second_p50, latency_source) =
        match (telemetry_speed, reported_speed) {
            (Some((ttft, tps)), _) => (ttft, tps, LatencySource::Telemetry),
            (None, Some((ttft, tps))) => (ttft, tps, LatencySource::LoadReport),
            (None, None) if observed_latency.is_some() => (0.0, 0.0, LatencySource::Telemetry),
            (None, None) => (0.0, 0.0, LatencySource::Unknown),
        };
    WorkerView {
        worker_id: &w.record.id,
        model: &w.spec,
        capabilities: w.record.capabilities(),
        health: health_of(w),
        gateway_in_flight: w.in_flight(),
        reported_in_flight: load.as_ref().map_or(0, |l| l.in_flight),
        queue_depth: load.as_ref().map_or(0, |l| l.queue_depth),
        capacity: load.as_ref().map_or(w.record.capacity, |l| l.capacity),
        max_queue: load.as_ref().map_or(w.record.max_queue, |l| l.max_queue),
        ttft_ms_p50,
        tokens_per_second_p50,
        latency_source,
        error_rate: observed.map_or(0.0, |o| o.error_rate),
        observed_latency_ms_p50: observed_latency,
        // Used by screening only while nothing is measured (`Unknown`).
        declared_ttft_ms: w.record.expected_ttft_ms,
        declared_tokens_per_second: w.record.expected_tokens_per_second,
    }
}

/// Whether it may take requests now: its load checks, then its breaker
/// (which keeps requests away while the worker still answers checks).
fn health_of(w: &WorkerHandle) -> Health {
    if !w.healthy() {
        Health::Down
    } else if w.breaker.allows(tokio::time::Instant::now()) {
        Health::Up
    } else {
        Health::CircuitOpen {
            half_open: w.breaker.state() == State::HalfOpen,
        }
    }
}
