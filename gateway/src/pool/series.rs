//! The pool's per-worker Prometheus series, rendered from its entries at each scrape rather than kept
//! in the recorder: a worker's series leave `/metrics` when the pool drops
//! it (at once when it stops answering, after `missing_grace` when only the
//! registry forgot it), so rollouts leave no stale series behind and a
//! per-worker alert resolves when its worker is gone.
//!
//! Beside them, per model, what an autoscaler of a worker pool scales on
//! (`routemesh_pool_*{model}`): the healthy workers' own load reports
//! summed, so every gateway replica exports the same figures for a pool
//! (aggregate them with `max`, not `sum`). Labels stay bounded by the
//! pool's models.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::WorkerHandle;

pub(crate) const WORKER_CALLS: &str = "routemesh_worker_calls_total";
pub(crate) const WORKER_HEALTHY: &str = "routemesh_worker_healthy";
pub(crate) const WORKER_IN_FLIGHT: &str = "routemesh_worker_in_flight";
pub(crate) const HEALTHY_WORKERS: &str = "routemesh_healthy_workers";
pub(crate) const POOL_WORKERS: &str = "routemesh_pool_workers";
pub(crate) const BREAKER_TRANSITIONS: &str = "routemesh_circuit_breaker_transitions_total";
/// 0 closed, 1 half-open, 2 open.
pub(crate) const BREAKER_STATE: &str = "routemesh_circuit_breaker_state";
pub(crate) const POOL_IN_FLIGHT: &str = "routemesh_pool_in_flight";
pub(crate) const POOL_QUEUE_DEPTH: &str = "routemesh_pool_queue_depth";
pub(crate) const POOL_SLOTS: &str = "routemesh_pool_slots";
pub(crate) const POOL_UTILIZATION: &str = "routemesh_pool_utilization";
pub(crate) const POOL_KV_CACHE: &str = "routemesh_pool_kv_cache_usage";

/// How a worker call ended, as the `outcome` label says it.
pub(crate) const OUTCOMES: [&str; 5] = ["ok", "worker_error", "timeout", "overloaded", "cancelled"];
/// The moves a breaker makes (`from`, `to`).
const TRANSITIONS: [(&str, &str); 4] = [
    ("closed", "open"),
    ("open", "half_open"),
    ("half_open", "closed"),
    ("half_open", "open"),
];

/// A worker's counters, owned by its pool entry and dropped with it.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    calls: [AtomicU64; OUTCOMES.len()],
    transitions: [AtomicU64; TRANSITIONS.len()],
}

impl WorkerCounters {
    /// One call ended with `outcome` (one of [`OUTCOMES`]).
    pub(crate) fn call(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.calls[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The worker's breaker moved.
    pub(crate) fn transition(&self, from: &str, to: &str) {
        if let Some(i) = TRANSITIONS.iter().position(|t| *t == (from, to)) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The pool's series in Prometheus' text format, every worker's counters
/// at their value (zero included).
pub(crate) fn render(workers: &[Arc<WorkerHandle>]) -> String {
    let mut out = String::new();
    let healthy = workers.iter().filter(|w| w.healthy()).count();
    header(
        &mut out,
        HEALTHY_WORKERS,
        "gauge",
        "Workers in this gateway's pool that take traffic.",
    );
    let _ = writeln!(out, "{HEALTHY_WORKERS} {healthy}");
    header(
        &mut out,
        POOL_WORKERS,
        "gauge",
        "Workers in this gateway's pool, healthy or not.",
    );
    let _ = writeln!(out, "{POOL_WORKERS} {}", workers.len());
    if workers.is_empty() {
        return out;
    }
    render_model_load(&mut out, workers);
    let id = |w: &WorkerHandle| {
        format!(
            "worker=\"{}\",model=\"{}\"",
            escape(&w.record.id),
            escape(&w.record.model)
        )
    };
    header(
        &mut out,
        WORKER_HEALTHY,
        "gauge",
        "1 while the worker takes traffic, else 0.",
    );
    for w in workers {
        let _ = writeln!(
            out,
            "{WORKER_HEALTHY}{{{}}} {}",
            id(w),
            u8::from(w.healthy())
        );
    }
    header(
        &mut out,
        WORKER_IN_FLIGHT,
        "gauge",
        "Calls this gateway has open at the worker.",
    );
    for w in workers {
        let _ = writeln!(out, "{WORKER_IN_FLIGHT}{{{}}} {}", id(w), w.in_flight());
    }
    header(
        &mut out,
        BREAKER_STATE,
        "gauge",
        "The worker's circuit breaker: 0 closed, 1 half-open, 2 open.",
    );
    for w in workers {
        let _ = writeln!(
            out,
            "{BREAKER_STATE}{{{}}} {}",
            id(w),
            w.breaker.state().gauge_value()
        );
    }
    header(
        &mut out,
        WORKER_CALLS,
        "counter",
        "Calls to the worker by outcome.",
    );
    for w in workers {
        for (outcome, n) in OUTCOMES.iter().zip(&w.counters.calls) {
            let _ = writeln!(
                out,
                "{WORKER_CALLS}{{{},tier=\"{}\",outcome=\"{outcome}\"}} {}",
                id(w),
                w.record.tier.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
    header(
        &mut out,
        BREAKER_TRANSITIONS,
        "counter",
        "The worker's circuit breaker moves.",
    );
    for w in workers {
        for ((from, to), n) in TRANSITIONS.iter().zip(&w.counters.transitions) {
            let _ = writeln!(
                out,
                "{BREAKER_TRANSITIONS}{{{},from=\"{from}\",to=\"{to}\"}} {}",
                id(w),
                n.load(Ordering::Relaxed)
            );
        }
    }
    out
}

/// One model's load, summed over its healthy workers' last reports.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct ModelLoad {
    in_flight: u64,
    queue_depth: u64,
    slots: u64,
    kv_cache_sum: f64,
    kv_cache_reports: u32,
}

/// Per model: requests generating and waiting at its healthy workers, their
/// slots, in-flight per slot, and the engines' KV-cache use where they
/// report it. A model whose workers are all unhealthy (or unchecked yet)
/// shows no slots and no utilization: there is no capacity to divide by.
fn render_model_load(out: &mut String, workers: &[Arc<WorkerHandle>]) {
    let mut models: std::collections::BTreeMap<&str, ModelLoad> = Default::default();
    for w in workers {
        let load = models.entry(w.record.model.as_str()).or_default();
        let Some(report) = w.last_load().filter(|_| w.healthy()) else {
            continue;
        };
        load.in_flight += u64::from(report.in_flight);
        load.queue_depth += u64::from(report.queue_depth);
        load.slots += u64::from(report.capacity);
        if let Some(kv) = report.engine.and_then(|e| e.kv_cache_usage) {
            load.kv_cache_sum += kv;
            load.kv_cache_reports += 1;
        }
    }
    let model = |m: &str| format!("model=\"{}\"", escape(m));
    header(
        out,
        POOL_IN_FLIGHT,
        "gauge",
        "Requests generating at the model's healthy workers (their own reports, from every gateway).",
    );
    for (m, load) in &models {
        let _ = writeln!(out, "{POOL_IN_FLIGHT}{{{}}} {}", model(m), load.in_flight);
    }
    header(
        out,
        POOL_QUEUE_DEPTH,
        "gauge",
        "Requests waiting for a slot at the model's healthy workers.",
    );
    for (m, load) in &models {
        let _ = writeln!(
            out,
            "{POOL_QUEUE_DEPTH}{{{}}} {}",
            model(m),
            load.queue_depth
        );
    }
    header(
        out,
        POOL_SLOTS,
        "gauge",
        "Concurrent generations the model's healthy workers offer (their capacity).",
    );
    for (m, load) in &models {
        let _ = writeln!(out, "{POOL_SLOTS}{{{}}} {}", model(m), load.slots);
    }
    header(
        out,
        POOL_UTILIZATION,
        "gauge",
        "In-flight requests per slot of the model's healthy workers, in [0, 1].",
    );
    for (m, load) in models.iter().filter(|(_, l)| l.slots > 0) {
        let ratio = load.in_flight as f64 / load.slots as f64;
        let _ = writeln!(out, "{POOL_UTILIZATION}{{{}}} {ratio}", model(m));
    }
    if models.values().any(|l| l.kv_cache_reports > 0) {
        header(
            out,
            POOL_KV_CACHE,
            "gauge",
            "Share of the engines' KV cache in use, the mean over the model's healthy workers whose engine reports it.",
        );
        for (m, load) in models.iter().filter(|(_, l)| l.kv_cache_reports > 0) {
            let mean = load.kv_cache_sum / f64::from(load.kv_cache_reports);
            let _ = writeln!(out, "{POOL_KV_CACHE}{{{}}} {mean}", model(m));
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the text format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn counters_count_known_outcomes_and_moves_only() {
        let c = WorkerCounters::default();
        c.call("ok");
        c.call("timeout");
        c.call("made-up");
        c.transition("closed", "open");
        c.transition("closed", "closed");
        let calls: Vec<u64> = c.calls.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        assert_eq!(calls, [1, 0, 1, 0, 0]);
        assert_eq!(c.transitions[0].load(Ordering::Relaxed), 1);
        assert_eq!(
            c.transitions
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum::<u64>(),
            1
        );
    }
}
