//! Prometheus metrics: names, labels and buckets in one place.
//!
//! Names follow the OpenTelemetry semantic conventions where one exists (the
//! GenAI metrics of semconv [`SEMCONV_VERSION`], and HTTP's
//! `http.server.request.duration`), written as Prometheus names, and
//! Prometheus naming otherwise. Label values are bounded: models and workers
//! by the pool, requested models by the pool plus `router`, tenants by
//! [`MAX_TENANTS`] beyond which they count as `other`.
//!
//! Series whose labels are known up front are registered at zero when the
//! gateway starts ([`known_series`]), so `rate()` and `increase()` see their
//! first event. Per-worker series are not kept here: they are rendered from
//! the pool at each scrape ([`workers`]) and so leave with their worker.

mod genai;

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) use self::genai::{
    CallFigures, SEMCONV_VERSION, generation, request_model_label, tenant_model_known, worker_call,
};

/// Client requests by API, method and final gRPC code (HTTP statuses are
/// mapped to the code the serving path answered, or by the gRPC/HTTP table).
pub(crate) const REQUESTS: &str = "routemesh_requests_total";
pub(crate) const REQUEST_DURATION: &str = "routemesh_request_duration_seconds";
/// OpenTelemetry HTTP semantic conventions' `http.server.request.duration`
/// for the OpenAI-compatible port, by route template and status.
pub(crate) const HTTP_SERVER_DURATION: &str = "http_server_request_duration_seconds";
/// Client generations by tenant and final code: one per client request,
/// however many worker calls it took.
pub(crate) const TENANT_REQUESTS: &str = "routemesh_tenant_requests_total";
/// Tokens of served worker calls by tenant, model and token type.
pub(crate) const TENANT_TOKENS: &str = "routemesh_tenant_tokens_total";
/// Requests refused by a tenant's rate limit or budget (or because the
/// limits store could not be read: `limit="store_unavailable"`).
pub(crate) const LIMIT_REJECTIONS: &str = "routemesh_limit_rejections_total";
/// Cost per request; spend is its `_sum` (a float counter: `metrics`
/// counters are integers, and a histogram's sum survives restarts as a
/// counter does in `rate()`).
pub(crate) const COST: &str = "routemesh_request_cost_usd";
/// What each request would have cost on the pool's most expensive model, from
/// its token counts: savings = this `_sum` minus the cost `_sum`.
pub(crate) const COUNTERFACTUAL_COST: &str = "routemesh_request_counterfactual_cost_usd";
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
pub(crate) const TELEMETRY_DROPPED: &str = "routemesh_telemetry_dropped_total";
pub(crate) const TELEMETRY_ERRORS: &str = "routemesh_telemetry_store_errors_total";
pub(crate) const TELEMETRY_BUFFERED: &str = "routemesh_telemetry_buffered_records";
/// 1, labelled with the running build and the semantic conventions it follows.
pub(crate) const BUILD_INFO: &str = "routemesh_build_info";
pub(crate) const ROUTER_CACHE: &str = "routemesh_router_cache_lookups_total";
pub(crate) const ROUTER_INFERENCE: &str = "routemesh_router_inference_seconds";
/// Requests routed on priors because every router slot stayed busy.
pub(crate) const ROUTER_OVERLOADED: &str = "routemesh_router_overloaded_total";
/// Encoder passes the batcher ran (`router.batch`), a long prompt's pass of
/// one included; prompts per pass are the full path's inference count over this.
pub(crate) const ROUTER_BATCHES: &str = "routemesh_router_batches_total";
pub(crate) const REDIS_ROUND_TRIPS: &str = "routemesh_redis_round_trips_total";
/// Generations this gateway is serving now (streams until they end): what
/// a gateway autoscaler scales on, rather than CPU, since a gateway mostly
/// waits on its workers' streams.
pub(crate) const GATEWAY_IN_FLIGHT: &str = "routemesh_gateway_requests_in_flight";
/// Its `max_concurrent_requests`: in-flight over this is the share used.
pub(crate) const GATEWAY_SLOTS: &str = "routemesh_gateway_request_slots";
/// The allocator's view of the process heap, by `state` (jemalloc's
/// `allocated`: live objects; `resident`: pages it holds in RAM; `retained`:
/// address space kept but returned to the OS): tells live memory from
/// memory the allocator keeps when RSS stays up after a burst.
pub(crate) const HEAP: &str = "routemesh_process_heap_bytes";
/// Commands sent to Redis, each of a pipeline counted: divided by requests,
/// what one served request costs Redis.
pub(crate) const REDIS_COMMANDS: &str = "routemesh_redis_commands_total";

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];
const USD_BUCKETS: &[f64] = &[1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
/// Distinct tenant label values before the rest count as "other".
pub(crate) const MAX_TENANTS: usize = 200;

/// The process's Prometheus recorder, installed once.
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(genai::TOKENS.into()),
                        genai::TOKEN_BUCKETS,
                    )
                })
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

/// The label a tenant's series carry: itself for the first [`MAX_TENANTS`]
/// seen, `other` after.
pub(crate) fn tenant_label(tenant: &str) -> String {
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

/// The methods each API answers, as `method` labels.
pub(crate) const GRPC_METHODS: [&str; 5] = [
    "Generate",
    "GenerateStream",
    "Route",
    "Feedback",
    "ListModels",
];
pub(crate) const HTTP_METHODS: [&str; 3] = ["Generate", "GenerateStream", "ListModels"];
/// The codes a request can end with that are worth an alert or a panel,
/// registered at zero for every method.
const KNOWN_CODES: [tonic::Code; 9] = [
    tonic::Code::Ok,
    tonic::Code::InvalidArgument,
    tonic::Code::Unauthenticated,
    tonic::Code::NotFound,
    tonic::Code::ResourceExhausted,
    tonic::Code::DeadlineExceeded,
    tonic::Code::Unavailable,
    tonic::Code::Internal,
    tonic::Code::Cancelled,
];

/// A gRPC code as the `code` label spells it (`Ok`, `Unavailable`, ...).
pub(crate) fn code_label(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// Registers at zero every series whose labels are known when the gateway
/// starts: requests per API x method x code, the configured tenants'
/// request, token and limit counters, and the unlabelled counters.
pub(crate) fn known_series<'a>(tenants: impl IntoIterator<Item = (&'a str, bool)>) {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"),
           "profile" => if cfg!(debug_assertions) { "debug" } else { "release" },
           "semconv_version" => SEMCONV_VERSION)
    .set(1.0);
    for (api, methods) in [("grpc", &GRPC_METHODS[..]), ("http", &HTTP_METHODS[..])] {
        for &method in methods {
            for code in KNOWN_CODES {
                counter!(REQUESTS, "api" => api, "method" => method, "code" => code_label(code))
                    .increment(0);
            }
            let _ = histogram!(REQUEST_DURATION, "api" => api, "method" => method);
        }
    }
    let mut configured = Vec::new();
    for (tenant, limited) in tenants {
        configured.push(tenant.to_string());
        let tenant = tenant_label(tenant);
        for code in KNOWN_CODES {
            counter!(TENANT_REQUESTS, "tenant" => tenant.clone(), "code" => code_label(code))
                .increment(0);
        }
        if limited {
            for limit in crate::tenancy::limits::LimitKind::ALL {
                counter!(LIMIT_REJECTIONS, "tenant" => tenant.clone(), "limit" => limit.as_str())
                    .increment(0);
            }
        }
    }
    let _ = CONFIGURED_TENANTS.set(configured);
    counter!(SHED).increment(0);
    counter!(ROUTER_OVERLOADED).increment(0);
    for result in ["hit", "miss"] {
        counter!(ROUTER_CACHE, "result" => result).increment(0);
    }
    for reason in ["dropped", "rejected"] {
        counter!(FEEDBACK_EXEMPLARS_LOST, "reason" => reason).increment(0);
    }
    telemetry(0, 0, 0);
    for component in REDIS_COMPONENTS {
        redis_work(component, 0, Some(0));
    }
}

/// The tenants of the configuration, for their per-model series.
static CONFIGURED_TENANTS: OnceLock<Vec<String>> = OnceLock::new();

/// A model joined the pool: its per-model counters start at zero, for each
/// configured tenant too.
pub(crate) fn model_known(model: &str) {
    counter!(FAILOVERS, "model" => model.to_string()).increment(0);
    for tenant in CONFIGURED_TENANTS.get().into_iter().flatten() {
        tenant_model_known(tenant, model);
    }
}

/// One client request finished (either API), with its final gRPC code.
pub(crate) fn request(api: &'static str, method: &'static str, code: tonic::Code, took: Duration) {
    counter!(REQUESTS, "api" => api, "method" => method, "code" => code_label(code)).increment(1);
    histogram!(REQUEST_DURATION, "api" => api, "method" => method).record(took.as_secs_f64());
}

/// One HTTP request to the OpenAI-compatible port, by route template.
pub(crate) fn http_request(method: &str, route: &'static str, status: u16, took: Duration) {
    let method = match method {
        "GET" => "GET",
        "POST" => "POST",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        // The conventions' value for a method outside the known set.
        _ => "_OTHER",
    };
    histogram!(HTTP_SERVER_DURATION, "http_request_method" => method, "http_route" => route,
               "http_response_status_code" => status.to_string())
    .record(took.as_secs_f64());
}

/// One client generation finished, counted for its tenant.
pub(crate) fn tenant_request(tenant: &str, code: tonic::Code) {
    counter!(TENANT_REQUESTS, "tenant" => tenant_label(tenant), "code" => code_label(code))
        .increment(1);
}

/// A tenant's request refused by one of its limits (`limit` as configured,
/// or `store_unavailable`).
pub(crate) fn limit_rejected(tenant: &str, limit: &'static str) {
    counter!(LIMIT_REJECTIONS, "tenant" => tenant_label(tenant), "limit" => limit).increment(1);
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

/// A router prediction looked up in the prompt cache.
pub(crate) fn router_cache(hit: bool) {
    counter!(ROUTER_CACHE, "result" => if hit { "hit" } else { "miss" }).increment(1);
}

/// Every router slot stayed busy: the request was routed on priors.
pub(crate) fn router_overloaded() {
    counter!(ROUTER_OVERLOADED).increment(1);
}

/// One batched full-path encoder pass (however many prompts it held).
pub(crate) fn router_batch() {
    counter!(ROUTER_BATCHES).increment(1);
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

/// What makes Redis round trips (`component` label values).
pub(crate) const REDIS_COMPONENTS: [&str; 4] =
    ["telemetry", "registry", "served_requests", "sessions"];

/// Round trips to Redis so far by `component`, and the commands they
/// carried where the component counts them (the registry does not).
pub(crate) fn redis_work(component: &'static str, round_trips: u64, commands: Option<u64>) {
    counter!(REDIS_ROUND_TRIPS, "component" => component).absolute(round_trips);
    if let Some(commands) = commands {
        counter!(REDIS_COMMANDS, "component" => component).absolute(commands);
    }
}

/// Generations in flight now, out of `slots` (read at each scrape).
pub(crate) fn gateway_in_flight(in_flight: usize, slots: usize) {
    gauge!(GATEWAY_IN_FLIGHT).set(in_flight as f64);
    gauge!(GATEWAY_SLOTS).set(slots as f64);
}

/// The heap as jemalloc counts it (read at each scrape). Only meaningful
/// when jemalloc is the process's allocator, as in the `routemesh` binary.
pub(crate) fn heap() {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are a snapshot taken when the epoch advances.
    if epoch::advance().is_err() {
        return;
    }
    for (state, read) in [
        ("allocated", stats::allocated::read as fn() -> _),
        // Pages holding live objects, whole or in part: above `allocated`
        // by the free space of partly used pages.
        ("active", stats::active::read),
        // jemalloc's own bookkeeping (it grows with address space mapped).
        ("metadata", stats::metadata::read),
        ("resident", stats::resident::read),
        ("retained", stats::retained::read),
    ] {
        if let Ok(bytes) = read() {
            gauge!(HEAP, "state" => state).set(bytes as f64);
        }
    }
}

pub(crate) fn telemetry(dropped: u64, errors: u64, buffered: u64) {
    counter!(TELEMETRY_DROPPED).absolute(dropped);
    counter!(TELEMETRY_ERRORS).absolute(errors);
    gauge!(TELEMETRY_BUFFERED).set(buffered as f64);
}
