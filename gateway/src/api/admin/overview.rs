//! `/v1/overview`: everything the built-in cost page shows, in one JSON
//! document. Spend comes from the hourly and daily cost reports (the last 24
//! hours and 30 days); latency and error rates from the live telemetry
//! window, which is much shorter; worker health from the pool now. Each part
//! says the time it covers, so the page can label it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use routemesh_telemetry::record::now_ms;
use serde_json::json;

use super::{cost_report, strongest};
use crate::serve::GatewayState;
use crate::tenancy::cost::{Period, ReportRange};

/// Hours of the hourly report the page shows.
const HOURS: u64 = 24;
/// Days of the daily report.
const DAYS: u64 = 30;

pub(super) async fn overview(State(state): State<Arc<GatewayState>>) -> Response {
    let now = now_ms();
    let hourly = match cost_report(&state, ReportRange::last(HOURS, Period::Hour, now)).await {
        Ok(report) => report,
        Err(response) => return response,
    };
    let daily = match cost_report(&state, ReportRange::last(DAYS, Period::Day, now)).await {
        Ok(report) => report,
        Err(response) => return response,
    };
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
            json!({"name": name, "tier": tier_of(name), "calls": s.requests, "errors": s.errors,
                   "error_rate": s.error_rate, "ttft_ms_p50": s.ttft_ms_p50, "latency_ms_p50": s.latency_ms_p50,
                   "latency_ms_p95": s.latency_ms_p95, "latency_ms_p99": s.latency_ms_p99})
        })
        .collect();
    models.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let workers: Vec<_> = pool
        .iter()
        .map(|w| {
            let load = w.last_load();
            json!({"id": w.record.id, "model": w.record.model, "tier": w.record.tier.as_str(),
                   "healthy": w.healthy(), "in_flight": w.in_flight(), "transport": w.transport(),
                   "breaker": w.breaker.state().as_str(),
                   "capacity": load.map_or(w.record.capacity, |l| l.capacity)})
        })
        .collect();
    axum::Json(json!({
        "generated_at_ms": now,
        // "shared": every gateway of the mesh, from Redis; "local": this gateway's own requests.
        "spend_source": state.recorder.reports_source(),
        "counterfactual_model": strongest(&pool).map(|c| c.model),
        "large_share": hourly.total.large_share,
        "cost": hourly,
        "daily": daily,
        "live": {
            "source": live.source,
            "at_ms": live.snapshot.at_ms,
            "window_secs": live.snapshot.window_secs,
            "models": models,
        },
        "workers": workers,
        "router": state.routing.quality.artifact().map(|p| p.display().to_string()),
    }))
    .into_response()
}
