//! The admin port: Prometheus metrics, liveness and readiness, and JSON views
//! of cost and telemetry for dashboards and scripts.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use routemesh_mesh::Tier;
use routemesh_telemetry::record::now_ms;

use crate::pool::Snapshot;
use crate::serve::GatewayState;
use crate::tenancy::cost::{CostReport, Counterfactual, Period, ReportRange, report};

mod access;
mod overview;

/// The built-in overview page: spend, savings, routing mix, latency and
/// worker health, drawn from `/v1/overview` with no dependency.
const PAGE: &str = include_str!("admin_page.html");

pub(crate) fn router(state: Arc<GatewayState>) -> Router {
    let access = state
        .config
        .admin_auth
        .as_ref()
        .map(access::AdminAccess::new);
    let router = Router::new()
        .route("/", get(|| async { axum::response::Html(PAGE) }))
        .route("/v1/overview", get(overview::overview))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/cost", get(cost))
        .route("/v1/telemetry", get(telemetry))
        .with_state(state);
    match access {
        Some(access) => router.layer(axum::middleware::from_fn_with_state(
            Arc::new(access),
            access::require_token,
        )),
        None => router,
    }
}

async fn metrics(State(state): State<Arc<GatewayState>>) -> Response {
    let stats = &state.recorder.stats;
    use std::sync::atomic::Ordering::Relaxed;
    crate::metrics::telemetry(
        stats.dropped_channel_full.load(Relaxed) + stats.dropped_buffer_full.load(Relaxed),
        stats.shared_write_errors.load(Relaxed) + stats.shared_snapshot_errors.load(Relaxed),
        stats.buffered.load(Relaxed),
    );
    let telemetry = state.recorder.reports();
    crate::metrics::redis_work(
        "telemetry",
        telemetry.round_trips(),
        Some(telemetry.commands()),
    );
    let slots = state.config.max_concurrent_requests;
    crate::metrics::gateway_in_flight(
        slots.saturating_sub(state.admission.available_permits()),
        slots,
    );
    crate::metrics::redis_work("registry", state.pool.registry_round_trips(), None);
    crate::metrics::heap();
    for (component, cost) in [
        ("served_requests", state.recent.redis_cost()),
        ("sessions", state.sessions.redis_cost()),
    ] {
        if let Some(cost) = cost {
            crate::metrics::redis_work(
                component,
                cost.round_trips.load(Relaxed),
                Some(cost.commands.load(Relaxed)),
            );
        }
    }
    match crate::metrics::handle() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render() + &crate::pool::series::render(&state.pool.snapshot()),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        )
            .into_response(),
    }
}

/// Ready when the gateway can serve: at least one healthy worker.
async fn ready(State(state): State<Arc<GatewayState>>) -> Response {
    let pool = state.pool.snapshot();
    let healthy = pool.iter().filter(|w| w.healthy()).count();
    let body = json!({
        "ready": healthy > 0,
        "workers": pool.len(),
        "healthy_workers": healthy,
        "router": state.routing.quality.artifact().map(|p| p.display().to_string()),
    });
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
struct CostQuery {
    /// Hours back from now: the current hour and those before it (default 24).
    hours: Option<u64>,
    /// Aggregate per day (the days covering those hours) instead of per hour.
    daily: Option<bool>,
}

/// The pool's most expensive model: the "everything to the strongest model"
/// counterfactual of the cost report.
fn strongest(pool: &Snapshot) -> Option<Counterfactual> {
    crate::pool::strongest(pool).map(|spec| Counterfactual {
        model: spec.name.clone(),
        input_usd_per_mtok: spec.input_usd_per_mtok,
        output_usd_per_mtok: spec.output_usd_per_mtok,
    })
}

/// The pool's models of the large tier, for the large-model share.
fn large_models(pool: &Snapshot) -> Vec<String> {
    let mut models: Vec<String> = pool
        .iter()
        .filter(|w| w.record.tier == Tier::Large)
        .map(|w| w.record.model.clone())
        .collect();
    models.sort();
    models.dedup();
    models
}

/// The cost report over `range`, from wherever this gateway's telemetry is
/// kept (Redis for a mesh, else its own memory).
async fn cost_report(state: &GatewayState, range: ReportRange) -> Result<CostReport, Response> {
    let pool = state.pool.snapshot();
    match state
        .recorder
        .reports()
        .spend(range.from_ms, range.to_ms, range.period == Period::Day)
        .await
    {
        Ok(rows) => Ok(report(&rows, strongest(&pool), &large_models(&pool), range)),
        Err(e) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": format!("telemetry store: {e}")})),
        )
            .into_response()),
    }
}

async fn cost(State(state): State<Arc<GatewayState>>, Query(q): Query<CostQuery>) -> Response {
    let period = if q.daily.unwrap_or(false) {
        Period::Day
    } else {
        Period::Hour
    };
    let range = ReportRange::hours(q.hours.unwrap_or(24), period, now_ms());
    match cost_report(&state, range).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(response) => response,
    }
}

async fn telemetry(State(state): State<Arc<GatewayState>>) -> Response {
    let live = state.recorder.snapshot();
    axum::Json(json!({"source": live.source, "snapshot": &*live.snapshot})).into_response()
}
