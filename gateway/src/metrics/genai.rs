//! The OpenTelemetry GenAI semantic conventions' metrics (version
//! [`SEMCONV_VERSION`]), as Prometheus names: `gen_ai.client.*` for the
//! gateway's calls to its workers, `gen_ai.server.*` for the requests it
//! serves, with routemesh's cost and per-tenant token counters recorded from
//! the same served calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, histogram};

use super::{COST, COUNTERFACTUAL_COST, TENANT_TOKENS, tenant_label};

/// The semantic conventions these metrics follow (and README names).
pub(crate) const SEMCONV_VERSION: &str = "1.37.0";
/// `gen_ai.provider.name`: the service answering, as a client sees it. Both
/// the gateway's clients and the gateway itself (calling worker agents) talk
/// to routemesh.
pub(crate) const PROVIDER: &str = "routemesh";
/// `gen_ai.operation.name` of every generation (both APIs, both endpoints).
const OPERATION: &str = "chat";

pub(crate) const TOKENS: &str = "gen_ai_client_token_usage";
pub(crate) const CLIENT_DURATION: &str = "gen_ai_client_operation_duration_seconds";
pub(crate) const SERVER_DURATION: &str = "gen_ai_server_request_duration_seconds";
pub(crate) const TTFT: &str = "gen_ai_server_time_to_first_token_seconds";
pub(crate) const TIME_PER_OUTPUT_TOKEN: &str = "gen_ai_server_time_per_output_token_seconds";

/// The conventions' advised buckets for `gen_ai.client.token.usage`.
pub(super) const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// What a client asked for, as a bounded label: the model it pinned when the
/// pool serves it, `router` when it left the choice to routemesh (no model, or
/// the OpenAI API's `router`), `other` for anything else (refused anyway).
pub(crate) fn request_model_label<'a>(
    requested: &'a str,
    pool_models: impl IntoIterator<Item = &'a str>,
) -> &'a str {
    if requested.is_empty() || requested == routemesh_mesh::ROUTER_MODEL {
        return routemesh_mesh::ROUTER_MODEL;
    }
    if pool_models.into_iter().any(|m| m == requested) {
        requested
    } else {
        "other"
    }
}

/// One client generation finished: `gen_ai.server.request.duration` with
/// the model asked for and the model that answered (`None` when none did).
pub(crate) fn generation(
    request_model: &str,
    response_model: Option<&str>,
    code: tonic::Code,
    took: Duration,
) {
    let mut labels = vec![
        ("gen_ai_operation_name", OPERATION.to_string()),
        ("gen_ai_provider_name", PROVIDER.to_string()),
        ("gen_ai_request_model", request_model.to_string()),
    ];
    if let Some(model) = response_model {
        labels.push(("gen_ai_response_model", model.to_string()));
    }
    if code != tonic::Code::Ok {
        labels.push(("error_type", super::code_label(code)));
    }
    let labels: Vec<metrics::Label> = labels
        .into_iter()
        .map(|(k, v)| metrics::Label::new(k, v))
        .collect();
    histogram!(SERVER_DURATION, labels).record(took.as_secs_f64());
}

/// What one call to a worker measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallFigures {
    pub took: Duration,
    pub ttft_s: Option<f64>,
    pub time_per_output_token_s: Option<f64>,
    /// Prompt and completion tokens.
    pub tokens: Option<(u32, u32)>,
    pub cost_usd: f64,
    pub counterfactual_usd: f64,
}

/// One call to a worker that served (`outcome` `ok`) or failed. The gateway
/// asked the worker for its model, so request and response model are both
/// the worker's.
pub(crate) fn worker_call(tenant: &str, model: &str, outcome: &'static str, figures: CallFigures) {
    if outcome != "ok" {
        histogram!(CLIENT_DURATION, "gen_ai_operation_name" => OPERATION, "gen_ai_provider_name" => PROVIDER,
                   "gen_ai_request_model" => model.to_string(), "gen_ai_response_model" => model.to_string(),
                   "error_type" => outcome)
        .record(figures.took.as_secs_f64());
        return;
    }
    let Some(h) = served_handles(tenant, model) else {
        return;
    };
    h.duration.record(figures.took.as_secs_f64());
    if let Some(ttft) = figures.ttft_s {
        h.ttft.record(ttft);
    }
    if let Some(tpot) = figures.time_per_output_token_s {
        h.time_per_output_token.record(tpot);
    }
    if let Some((input, output)) = figures.tokens {
        h.input_tokens.record(f64::from(input));
        h.output_tokens.record(f64::from(output));
        h.tenant_input_tokens.increment(u64::from(input));
        h.tenant_output_tokens.increment(u64::from(output));
    }
    h.cost.record(figures.cost_usd);
    h.counterfactual.record(figures.counterfactual_usd);
}

/// The metric handles one served call updates. Looking a handle up by name and
/// labels builds and hashes its key each time (the profile showed this as the
/// largest piece of the gateway's own per-request work), so the served path
/// keeps them per (tenant, model): a set bounded by the tenant cap and the pool.
#[derive(Debug)]
struct ServedHandles {
    duration: metrics::Histogram,
    ttft: metrics::Histogram,
    time_per_output_token: metrics::Histogram,
    input_tokens: metrics::Histogram,
    output_tokens: metrics::Histogram,
    tenant_input_tokens: metrics::Counter,
    tenant_output_tokens: metrics::Counter,
    cost: metrics::Histogram,
    counterfactual: metrics::Histogram,
}

/// Handles by (tenant, model).
type ServedCache = HashMap<(String, String), Arc<ServedHandles>>;

fn served_handles(tenant: &str, model: &str) -> Option<Arc<ServedHandles>> {
    static CACHE: OnceLock<Mutex<ServedCache>> = OnceLock::new();
    // Models come and go: a bound keeps a long-lived gateway's cache from growing without end
    // (dropping it only costs lookups; the series themselves live in the recorder).
    const MAX_ENTRIES: usize = 4096;
    let mut cache = CACHE.get_or_init(Mutex::default).lock().ok()?;
    let key = (tenant.to_string(), model.to_string());
    if let Some(h) = cache.get(&key) {
        return Some(h.clone());
    }
    let handles = Arc::new(served(&tenant_label(tenant), model));
    if cache.len() >= MAX_ENTRIES {
        cache.clear();
    }
    cache.insert(key, handles.clone());
    Some(handles)
}

fn served(tenant: &str, model: &str) -> ServedHandles {
    let genai = |name: &'static str| {
        histogram!(name, "gen_ai_operation_name" => OPERATION, "gen_ai_provider_name" => PROVIDER,
                   "gen_ai_request_model" => model.to_string(), "gen_ai_response_model" => model.to_string())
    };
    let tokens = |kind: &'static str| {
        histogram!(TOKENS, "gen_ai_operation_name" => OPERATION, "gen_ai_provider_name" => PROVIDER,
                   "gen_ai_token_type" => kind,
                   "gen_ai_request_model" => model.to_string(), "gen_ai_response_model" => model.to_string())
    };
    let tenant_tokens = |kind: &'static str| {
        counter!(TENANT_TOKENS, "tenant" => tenant.to_string(),
                 "gen_ai_response_model" => model.to_string(), "gen_ai_token_type" => kind)
    };
    ServedHandles {
        duration: genai(CLIENT_DURATION),
        ttft: genai(TTFT),
        time_per_output_token: genai(TIME_PER_OUTPUT_TOKEN),
        input_tokens: tokens("input"),
        output_tokens: tokens("output"),
        tenant_input_tokens: tenant_tokens("input"),
        tenant_output_tokens: tenant_tokens("output"),
        cost: histogram!(COST, "tenant" => tenant.to_string(), "gen_ai_response_model" => model.to_string()),
        counterfactual: histogram!(COUNTERFACTUAL_COST, "tenant" => tenant.to_string()),
    }
}

/// A configured tenant's token counters for a model in the pool, at zero.
pub(crate) fn tenant_model_known(tenant: &str, model: &str) {
    let tenant = tenant_label(tenant);
    for kind in ["input", "output"] {
        counter!(TENANT_TOKENS, "tenant" => tenant.clone(),
                 "gen_ai_response_model" => model.to_string(), "gen_ai_token_type" => kind)
        .increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_models_are_bounded_by_the_pool() {
        let pool = ["small", "large"];
        assert_eq!(request_model_label("", pool), "router");
        assert_eq!(request_model_label("router", pool), "router");
        assert_eq!(request_model_label("large", pool), "large");
        assert_eq!(request_model_label("made-up-by-a-client", pool), "other");
    }
}
