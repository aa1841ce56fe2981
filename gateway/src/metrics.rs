//! Prometheus metrics: names, labels and buckets in one place.
//!
//! Names follow the OpenTelemetry GenAI semantic conventions where one exists
//! (`gen_ai_server_time_to_first_token_seconds`, ...) and Prometheus naming
//! otherwise. Label values are bounded: models and workers by the pool,
//! tenants by a cap beyond which they count as "other".

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const REQUESTS: &str = "routemesh_requests_total";
pub(crate) const REQUEST_DURATION: &str = "routemesh_request_duration_seconds";
pub(crate) const TTFT: &str = "gen_ai_server_time_to_first_token_seconds";
pub(crate) const TIME_PER_OUTPUT_TOKEN: &str = "gen_ai_server_time_per_output_token_seconds";
pub(crate) const TOKENS: &str = "gen_ai_client_token_usage";
/// Cost per request; spend is its `_sum` (a float counter: `metrics`
/// counters are integers, and a histogram's sum survives restarts as a
/// counter does in `rate()`).
pub(crate) const COST: &str = "routemesh_request_cost_usd";
/// What each request would have cost on the pool's most expensive model, from
/// its token counts: savings = this `_sum` minus the cost `_sum`.
pub(crate) const COUNTERFACTUAL_COST: &str = "routemesh_request_counterfactual_cost_usd";
pub(crate) const WORKER_CALLS: &str = "routemesh_worker_calls_total";
pub(crate) const DECISIONS: &str = "routemesh_routing_decisions_total";
pub(crate) const DECISION_DURATION: &str = "routemesh_routing_decision_duration_seconds";
pub(crate) const FAILOVERS: &str = "routemesh_failovers_total";
/// A cascade's verdicts on answers, by verifier, model and verdict
/// (`accepted`, `escalated`, `kept`: judged weak but nothing stronger could
/// be called, `unverifiable`).
pub(crate) const CASCADE_VERDICTS: &str = "routemesh_cascade_verdicts_total";
/// Escalations by the model pair (`from_model` judged weak, `to_model`
/// answered instead) and verifier.
pub(crate) const CASCADE_ESCALATIONS: &str = "routemesh_cascade_escalations_total";
/// Cheap steps skipped because the router predicted the cheap model would
/// fail (cascade routing), by the model skipped.
pub(crate) const CASCADE_SKIPS: &str = "routemesh_cascade_skips_total";
/// Time a verifier took to judge one answer (its model calls included).
pub(crate) const CASCADE_VERIFY_DURATION: &str = "routemesh_cascade_verify_duration_seconds";
pub(crate) const SHED: &str = "routemesh_shed_total";
/// Feedback exemplars this gateway holds (its own and other replicas').
pub(crate) const FEEDBACK_EXEMPLARS: &str = "routemesh_feedback_exemplars";
/// Exemplars not shared: dropped from the retry queue while Redis was
/// down (`dropped`), or read from Redis and refused as malformed (`rejected`).
pub(crate) const FEEDBACK_EXEMPLARS_LOST: &str = "routemesh_feedback_exemplars_lost_total";
pub(crate) const WORKER_HEALTHY: &str = "routemesh_worker_healthy";
pub(crate) const WORKER_IN_FLIGHT: &str = "routemesh_worker_in_flight";
pub(crate) const HEALTHY_WORKERS: &str = "routemesh_healthy_workers";
pub(crate) const TELEMETRY_DROPPED: &str = "routemesh_telemetry_dropped_total";
pub(crate) const TELEMETRY_ERRORS: &str = "routemesh_telemetry_store_errors_total";
pub(crate) const TELEMETRY_BUFFERED: &str = "routemesh_telemetry_buffered_records";

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];
const USD_BUCKETS: &[f64] = &[1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
/// Distinct tenant label values before the rest count as "other".
const MAX_TENANTS: usize = 200;

/// The process's Prometheus recorder, installed once.
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TOKENS.into()), TOKEN_BUCKETS))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_usd".into()), USD_BUCKETS)
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

fn tenant_label(tenant: &str) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Ok(mut seen) = SEEN.get_or_init(Mutex::default).lock() else {
        return "other".into();
    };
    if seen.contains(tenant) || (seen.len() < MAX_TENANTS && seen.insert(tenant.to_string())) {
        tenant.to_string()
    } else {
        "other".into()
    }
}

/// One client request finished (either API), with its final gRPC code.
pub(crate) fn request(
    api: &'static str,
    method: &'static str,
    code: tonic::Code,
    duration: Duration,
) {
    let code = format!("{code:?}");
    counter!(REQUESTS, "api" => api, "method" => method, "code" => code).increment(1);
    histogram!(REQUEST_DURATION, "api" => api, "method" => method).record(duration.as_secs_f64());
}

/// One call to a worker that served (or failed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn worker_call(
    tenant: &str,
    model: &str,
    tier: &'static str,
    worker: &str,
    outcome: &'static str,
    ttft_s: Option<f64>,
    tokens: Option<(u32, u32)>,
    cost_usd: f64,
    counterfactual_usd: f64,
    time_per_output_token_s: Option<f64>,
) {
    if outcome != "ok" {
        counter!(WORKER_CALLS, "model" => model.to_string(), "tier" => tier, "worker" => worker.to_string(), "outcome" => outcome).increment(1);
        return;
    }
    let Some(h) = served_handles(tenant, model, tier, worker) else {
        return;
    };
    h.calls.increment(1);
    if let Some(ttft) = ttft_s {
        h.ttft.record(ttft);
    }
    if let Some(tpot) = time_per_output_token_s {
        h.time_per_output_token.record(tpot);
    }
    if let Some((input, output)) = tokens {
        h.input_tokens.record(f64::from(input));
        h.output_tokens.record(f64::from(output));
    }
    h.cost.record(cost_usd);
    h.counterfactual.record(counterfactual_usd);
}

/// The metric handles one served call updates. Looking a handle up by name and
/// labels builds and hashes its key each time (the profile showed this as the
/// largest piece of the gateway's own per-request work), so the served path
/// keeps them per (tenant, model, tier, worker): a pool-bounded set.
#[derive(Debug)]
struct ServedHandles {
    calls: metrics::Counter,
    ttft: metrics::Histogram,
    time_per_output_token: metrics::Histogram,
    input_tokens: metrics::Histogram,
    output_tokens: metrics::Histogram,
    cost: metrics::Histogram,
    counterfactual: metrics::Histogram,
}

type ServedKey = (String, String, &'static str, String);

fn served_handles(
    tenant: &str,
    model: &str,
    tier: &'static str,
    worker: &str,
) -> Option<std::sync::Arc<ServedHandles>> {
    use std::collections::HashMap;
    use std::sync::Arc;
    static CACHE: OnceLock<Mutex<HashMap<ServedKey, Arc<ServedHandles>>>> = OnceLock::new();
    // Workers come and go: a bound keeps a long-lived gateway's cache from growing without end
    // (dropping it only costs lookups; the series themselves live in the recorder).
    const MAX_ENTRIES: usize = 4096;
    let mut cache = CACHE.get_or_init(Mutex::default).lock().ok()?;
    let key: ServedKey = (tenant.into(), model.into(), tier, worker.into());
    if let Some(h) = cache.get(&key) {
        return Some(h.clone());
    }
    let tenant = tenant_label(tenant);
    let handles = Arc::new(ServedHandles {
        calls: counter!(WORKER_CALLS, "model" => model.to_string(), "tier" => tier, "worker" => worker.to_string(), "outcome" => "ok"),
        ttft: histogram!(TTFT, "gen_ai_request_model" => model.to_string()),
        time_per_output_token: histogram!(TIME_PER_OUTPUT_TOKEN, "gen_ai_request_model" => model.to_string()),
        input_tokens: histogram!(TOKENS, "gen_ai_request_model" => model.to_string(), "gen_ai_token_type" => "input"),
        output_tokens: histogram!(TOKENS, "gen_ai_request_model" => model.to_string(), "gen_ai_token_type" => "output"),
        cost: histogram!(COST, "tenant" => tenant.clone(), "gen_ai_request_model" => model.to_string()),
        counterfactual: histogram!(COUNTERFACTUAL_COST, "tenant" => tenant),
    });
    if cache.len() >= MAX_ENTRIES {
        cache.clear();
    }
    cache.insert(key, handles.clone());
    Some(handles)
}

/// A routing decision.
pub(crate) fn decision(
    model: &str,
    policy: &'static str,
    deciding_term: &'static str,
    took: Duration,
) {
    counter!(DECISIONS, "model" => model.to_string(), "policy" => policy, "reason" => deciding_term).increment(1);
    histogram!(DECISION_DURATION).record(took.as_secs_f64());
}

pub(crate) const ROUTER_CACHE: &str = "routemesh_router_cache_lookups_total";
pub(crate) const ROUTER_INFERENCE: &str = "routemesh_router_inference_seconds";
/// Requests routed on priors because every router slot stayed busy.
pub(crate) const ROUTER_OVERLOADED: &str = "routemesh_router_overloaded_total";

/// A router prediction looked up in the prompt cache.
pub(crate) fn router_cache(hit: bool) {
    counter!(ROUTER_CACHE, "result" => if hit { "hit" } else { "miss" }).increment(1);
}

/// Every router slot stayed busy: the request was routed on priors.
pub(crate) fn router_overloaded() {
    counter!(ROUTER_OVERLOADED).increment(1);
}

/// One embedder + predictor run, by the path it took (`fast` or `full`).
pub(crate) fn router_inference(took: Duration, path: &'static str) {
    histogram!(ROUTER_INFERENCE, "path" => path).record(took.as_secs_f64());
}

pub(crate) fn failover(model: &str) {
    counter!(FAILOVERS, "model" => model.to_string()).increment(1);
}

/// One verdict per judged answer, counted when the request's use of it is
/// known (a weak answer is `escalated`, or `kept` when no escalation ran).
pub(crate) fn cascade_verdict(verifier: &str, model: &str, verdict: &'static str) {
    counter!(CASCADE_VERDICTS, "verifier" => verifier.to_string(), "model" => model.to_string(), "verdict" => verdict)
        .increment(1);
}

pub(crate) fn cascade_verify_time(verifier: &str, took: Duration) {
    histogram!(CASCADE_VERIFY_DURATION, "verifier" => verifier.to_string())
        .record(took.as_secs_f64());
}

pub(crate) fn cascade_escalation(verifier: &str, from_model: &str, to_model: &str) {
    counter!(CASCADE_ESCALATIONS, "verifier" => verifier.to_string(), "from_model" => from_model.to_string(), "to_model" => to_model.to_string())
        .increment(1);
}

pub(crate) fn cascade_skip(model: &str) {
    counter!(CASCADE_SKIPS, "model" => model.to_string()).increment(1);
}

pub(crate) fn shed() {
    counter!(SHED).increment(1);
}

pub(crate) fn feedback_exemplars(count: usize) {
    gauge!(FEEDBACK_EXEMPLARS).set(count as f64);
}

pub(crate) fn feedback_memory_dropped() {
    counter!(FEEDBACK_EXEMPLARS_LOST, "reason" => "dropped").increment(1);
}

pub(crate) fn feedback_memory_rejected() {
    counter!(FEEDBACK_EXEMPLARS_LOST, "reason" => "rejected").increment(1);
}

/// Pool state, set by the maintenance loop.
pub(crate) fn worker_state(worker: &str, model: &str, healthy: bool, in_flight: u32) {
    gauge!(WORKER_HEALTHY, "worker" => worker.to_string(), "model" => model.to_string())
        .set(f64::from(u8::from(healthy)));
    gauge!(WORKER_IN_FLIGHT, "worker" => worker.to_string(), "model" => model.to_string())
        .set(f64::from(in_flight));
}

pub(crate) fn healthy_workers(count: usize) {
    gauge!(HEALTHY_WORKERS).set(count as f64);
}

pub(crate) const REDIS_ROUND_TRIPS: &str = "routemesh_redis_round_trips_total";

/// Round trips to Redis so far, by what made them.
pub(crate) fn redis_round_trips(telemetry: u64, registry: u64) {
    counter!(REDIS_ROUND_TRIPS, "component" => "telemetry").absolute(telemetry);
    counter!(REDIS_ROUND_TRIPS, "component" => "registry").absolute(registry);
}

pub(crate) fn telemetry(dropped: u64, errors: u64, buffered: u64) {
    counter!(TELEMETRY_DROPPED).absolute(dropped);
    counter!(TELEMETRY_ERRORS).absolute(errors);
    gauge!(TELEMETRY_BUFFERED).set(buffered as f64);
}

pub(crate) const BREAKER_TRANSITIONS: &str = "routemesh_circuit_breaker_transitions_total";
/// 0 closed, 1 half-open, 2 open.
pub(crate) const BREAKER_STATE: &str = "routemesh_circuit_breaker_state";

/// A worker's circuit breaker changed state (`to_value` as [`breaker_state`]).
pub(crate) fn breaker_transition(
    worker: &str,
    model: &str,
    from: &'static str,
    to: &'static str,
    to_value: f64,
) {
    counter!(BREAKER_TRANSITIONS, "worker" => worker.to_string(), "model" => model.to_string(),
             "from" => from, "to" => to)
    .increment(1);
    breaker_state(worker, model, to_value);
}

/// A worker's circuit breaker state: 0 closed, 1 half-open, 2 open.
pub(crate) fn breaker_state(worker: &str, model: &str, value: f64) {
    gauge!(BREAKER_STATE, "worker" => worker.to_string(), "model" => model.to_string()).set(value);
}
