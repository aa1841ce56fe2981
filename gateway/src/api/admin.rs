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

use crate::serve::GatewayState;
use crate::tenancy::cost::{Counterfactual, report};

/// The built-in overview page: spend, savings, routing mix, latency and
/// worker health, drawn from `/v1/overview` with no dependency.
const PAGE: &str = include_str!("admin_page.html");

pub(crate) fn router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Html(PAGE) }))
        .route("/v1/overview", get(overview))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/cost", get(cost))
        .route("/v1/telemetry", get(telemetry))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<GatewayState>>) -> Response {
    let stats = &state.recorder.stats;
    use std::sync::atomic::Ordering::Relaxed;
    crate::metrics::telemetry(
        stats.dropped_channel_full.load(Relaxed) + stats.dropped_buffer_full.load(Relaxed),
        stats.shared_write_errors.load(Relaxed) + stats.shared_snapshot_errors.load(Relaxed),
        stats.buffered.load(Relaxed),
    );
    crate::metrics::redis_round_trips(
        state.recorder.reports().round_trips(),
        state.pool.registry_round_trips(),
    );
    match crate::metrics::handle() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render() + &crate::metrics::workers::render(&state.pool.snapshot()),
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
    /// Hours back from now (default 24).
    hours: Option<u64>,
    /// Aggregate per day instead of per hour.
    daily: Option<bool>,
}

/// The pool's most expensive model: the "everything to the strongest model"
/// counterfactual of the cost report.
fn strongest(state: &GatewayState) -> Option<Counterfactual> {
    crate::pool::strongest(&state.pool.snapshot()).map(|spec| Counterfactual {
        model: spec.name.clone(),
        input_usd_per_mtok: spec.input_usd_per_mtok,
        output_usd_per_mtok: spec.output_usd_per_mtok,
    })
}

async fn cost(State(state): State<Arc<GatewayState>>, Query(q): Query<CostQuery>) -> Response {
    let to = routemesh_telemetry::record::now_ms();
    let hours = q.hours.unwrap_or(24).clamp(1, 24 * 400);
    let from = to.saturating_sub(hours * 3_600_000);
    match state
        .recorder
        .reports()
        .spend(from, to, q.daily.unwrap_or(false))
        .await
    {
        Ok(rows) => axum::Json(report(&rows, strongest(&state), from, to)).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": format!("telemetry store: {e}")})),
        )
            .into_response(),
    }
}

async fn telemetry(State(state): State<Arc<GatewayState>>) -> Response {
    let live = state.recorder.snapshot();
    axum::Json(json!({"source": live.source, "snapshot": &*live.snapshot})).into_response()
}

/// Everything the built-in page shows, in one JSON document.
async fn overview(State(state): State<Arc<GatewayState>>) -> Response {
    let to = routemesh_telemetry::record::now_ms();
    let from = to.saturating_sub(24 * 3_600_000);
    let counterfactual = strongest(&state);
    let rows = match state.recorder.reports().spend(from, to, false).await {
        Ok(rows) => rows,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": format!("telemetry store: {e}")})),
            )
                .into_response();
        }
    };
    let cost = report(&rows, counterfactual.clone(), from, to);
    let pool = state.pool.snapshot();
    let live = state.recorder.snapshot();
    let tier_of = |model: &str| {
        pool.iter()
            .find(|w| w.record.model == model)
            .map(|w| w.record.tier.as_str())
    };
    let mut models: Vec<_> = live
        .snapshot
        .models
        .iter()
        .map(|(name, s)| {
            json!({"name": name, "tier": tier_of(name).unwrap_or("-"), "requests": s.requests, "error_rate": s.error_rate,
                   "ttft_ms_p50": s.ttft_ms_p50, "latency_ms_p50": s.latency_ms_p50, "latency_ms_p95": s.latency_ms_p95,
                   "latency_ms_p99": s.latency_ms_p99})
        })
        .collect();
    models.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let served: f64 = live
        .snapshot
        .models
        .values()
        .map(|s| s.requests - s.errors)
        .sum();
    let large: f64 = live
        .snapshot
        .models
        .iter()
        .filter(|(name, _)| tier_of(name) == Some("large"))
        .map(|(_, s)| s.requests - s.errors)
        .sum();
    let workers: Vec<_> = pool
        .iter()
        .map(|w| {
            let load = w.last_load();
            json!({"id": w.record.id, "model": w.record.model, "healthy": w.healthy(), "in_flight": w.in_flight(),
                   "transport": w.transport(),
                   "breaker": w.breaker.state().as_str(),
                   "capacity": load.map_or(w.record.capacity, |l| l.capacity)})
        })
        .collect();
    axum::Json(json!({
        "cost": cost,
        "counterfactual_model": counterfactual.map(|c| c.model),
        "telemetry_source": live.source,
        "window_secs": live.snapshot.window_secs,
        "models": models,
        "large_share": if served > 0.0 { large / served } else { 0.0 },
        "workers": workers,
        "router": state.routing.quality.artifact().map(|p| p.display().to_string()),
    }))
    .into_response()
}
