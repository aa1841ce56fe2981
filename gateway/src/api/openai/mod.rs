//! The OpenAI-compatible HTTP API: `POST /v1/chat/completions` (plain and
//! SSE) and `GET /v1/models`, served beside gRPC on the same routing path.
//!
//! Requests are translated into the native request (`request`) and run
//! through the very same serving path as gRPC, so validation, routing,
//! failover, deadlines and accounting are shared; only the wire format
//! differs. Failures map to HTTP from the path's typed errors (`error`),
//! never from message text.

mod error;
mod request;
mod responses;

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use routemesh_mesh::Tier;
use routemesh_proto::v1::{
    FinishReason, RouteDecision, Tier as WireTier, Usage, generate_stream_event,
};
use serde_json::{Value, json};
use tonic::Code;
use tracing::Instrument;

use self::error::{ApiError, bad_request, gateway_error, http_status, openai_error};
pub(crate) use self::request::ROUTER_MODEL;
use self::request::parse_chat;
use crate::error::GatewayError;
use crate::serve::{Api, Incoming, Pipeline};
use crate::tenancy::auth::{ApiKeys, Tenant};

#[derive(Clone)]
pub(crate) struct HttpState {
    pub pipeline: std::sync::Arc<Pipeline>,
    pub keys: ApiKeys,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

pub(crate) fn router(state: HttpState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/models", get(list_models))
        .fallback(|| async {
            openai_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                "no such endpoint; routemesh serves /v1/chat/completions and /v1/models".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// An error in OpenAI's JSON shape.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Authenticates from the `Authorization` header: the tenant, if keys are on.
async fn authorize(state: &HttpState, headers: &HeaderMap) -> Result<Option<Tenant>, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state
        .keys
        .authenticate(authorization)
        .await
        .map_err(|e| gateway_error(e.into()))
}

/// A chat request parsed from OpenAI's JSON.
fn finish_reason(reason: i32) -> &'static str {
    match FinishReason::try_from(reason) {
        Ok(FinishReason::Length) => "length",
        _ => "stop",
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost_usd": usage.cost_usd,
        "estimated": usage.estimated,
    })
}

/// Headers that explain the routing decision.
fn route_headers(headers: &mut HeaderMap, request_id: &str, route: &RouteDecision) {
    let chosen = route
        .candidates
        .iter()
        .find(|c| c.worker_id == route.worker_id);
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("x-request-id", request_id.to_string());
    set("x-routemesh-model", route.model.clone());
    set("x-routemesh-worker", route.worker_id.clone());
    set("x-routemesh-policy", route.policy.clone());
    set("x-routemesh-strategy", route.strategy.clone());
    if route.strategy == "cascade" {
        // Whether the answer is a stronger model's after a weak first one.
        set("x-routemesh-escalated", route.escalated.to_string());
    }
    if let Some(c) = chosen {
        set(
            "x-routemesh-predicted-quality",
            format!("{:.4}", c.predicted_quality),
        );
        set("x-routemesh-quality-source", c.quality_source.clone());
        set(
            "x-routemesh-expected-cost-usd",
            format!("{:.8}", c.expected_cost_usd),
        );
    }
}

async fn chat_completions(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let chat = match parse_chat(&body) {
        Ok(chat) => chat,
        Err(e) => return e.into_response(),
    };
    if chat.requested_model.is_empty() {
        return bad_request("model", "must not be empty").into_response();
    }
    let tenant = match authorize(&state, &headers).await {
        Ok(tenant) => tenant,
        Err(e) => return e.into_response(),
    };
    // W3C trace context from HTTP headers continues like gRPC metadata.
    let mut metadata = tonic::metadata::MetadataMap::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            metadata.insert(name, value);
        }
    }
    let method = if chat.stream {
        "GenerateStream"
    } else {
        "Generate"
    };
    let span = crate::api::request_span(
        Api::Http,
        method,
        &chat.grpc.request_id,
        &chat.grpc.model,
        &metadata,
    );
    let incoming = Incoming {
        message: chat.grpc,
        tenant,
        deadline: None,
    };
    let start = tokio::time::Instant::now();
    if chat.stream {
        let events = state
            .pipeline
            .generate_stream(incoming)
            .instrument(span)
            .await;
        let code = events
            .as_ref()
            .map_or_else(GatewayError::code, |_| Code::Ok);
        crate::metrics::request("http", method, code, start.elapsed());
        match events {
            Ok((request_id, events)) => {
                stream_completion(request_id, events, chat.include_usage).await
            }
            Err(e) => gateway_error(e).into_response(),
        }
    } else {
        let done = state.pipeline.generate(incoming).instrument(span).await;
        let code = done.as_ref().map_or_else(GatewayError::code, |_| Code::Ok);
        crate::metrics::request("http", method, code, start.elapsed());
        match done {
            Err(e) => gateway_error(e).into_response(),
            Ok(done) => {
                let usage = done.usage.unwrap_or_default();
                let route = done.route.unwrap_or_default();
                let body = json!({
                    "id": format!("chatcmpl-{}", done.request_id),
                    "object": "chat.completion",
                    "created": unix_now(),
                    "model": usage.model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": done.text},
                        "finish_reason": finish_reason(done.finish_reason),
                        "logprobs": Value::Null,
                    }],
                    "usage": usage_json(&usage),
                    "system_fingerprint": Value::Null,
                });
                let mut response = axum::Json(body).into_response();
                route_headers(response.headers_mut(), &done.request_id, &route);
                response
            }
        }
    }
}

fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

async fn stream_completion(
    request_id: String,
    mut events: crate::serve::EventStream,
    include_usage: bool,
) -> Response {
    // The gateway sends the routing decision first: it sets the headers.
    let route = match events.next().await {
        Some(Ok(e)) => match e.event {
            Some(generate_stream_event::Event::Route(route)) => route,
            _ => RouteDecision::default(),
        },
        Some(Err(e)) => return gateway_error(e).into_response(),
        None => {
            return openai_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "stream ended before it began".into(),
            )
            .into_response();
        }
    };
    let id = format!("chatcmpl-{request_id}");
    let created = unix_now();
    let model = route.model.clone();
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": Value::Null}]})
    };
    let first = sse_data(&chunk(json!({"role": "assistant", "content": ""}), None));
    let body = futures::stream::once(async move { Ok::<_, Infallible>(first) }).chain(
        futures::stream::unfold(Some(events), move |events| {
            let chunk = chunk.clone();
            async move {
                let mut events = events?;
                match events.next().await {
                    Some(Ok(e)) => match e.event {
                        Some(generate_stream_event::Event::Delta(d)) => Some((vec![sse_data(&chunk(json!({"content": d.text}), None))], Some(events))),
                        Some(generate_stream_event::Event::End(end)) => {
                            let mut out = vec![sse_data(&chunk(json!({}), Some(finish_reason(end.finish_reason))))];
                            if include_usage {
                                let mut usage_chunk = chunk(json!({}), None);
                                usage_chunk["choices"] = json!([]);
                                usage_chunk["usage"] = usage_json(&end.usage.unwrap_or_default());
                                out.push(sse_data(&usage_chunk));
                            }
                            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                            Some((out, None))
                        }
                        _ => Some((Vec::new(), Some(events))),
                    },
                    // Mid-stream failures arrive as an error event, as OpenAI sends them.
                    Some(Err(e)) => {
                        e.log();
                        let (_, kind) = http_status(e.code());
                        let error = json!({"error": {"message": e.to_string(), "type": kind, "param": Value::Null, "code": Value::Null}});
                        Some((vec![sse_data(&error)], None))
                    }
                    None => None,
                }
            }
        })
        .flat_map(|chunks| futures::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>))),
    );
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    route_headers(response.headers_mut(), &request_id, &route);
    response
}

async fn list_models(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers).await {
        return e.into_response();
    }
    let models = state.pipeline.state().list_models();
    let mut data = vec![
        json!({"id": ROUTER_MODEL, "object": "model", "created": 0, "owned_by": "routemesh",
                               "routemesh": {"virtual": true, "description": "learned routing with the gateway's default policy"}}),
    ];
    for (strong, weak, share, threshold) in state
        .pipeline
        .state()
        .routing
        .quality
        .calibrated_thresholds()
    {
        data.push(json!({"id": format!("router-mf-{threshold:.3}"), "object": "model", "created": 0, "owned_by": "routemesh",
                         "routemesh": {"virtual": true, "description": format!(
                             "RouteLLM-style threshold routing between the pool's most and least expensive models; about {:.0}% strong calls on the {strong} / {weak} training prompts", share * 100.0)}}));
    }
    for m in models.models {
        let tier = if m.tier == WireTier::Large as i32 {
            Tier::Large
        } else {
            Tier::Small
        };
        data.push(json!({"id": m.name, "object": "model", "created": 0, "owned_by": "routemesh",
                         "routemesh": {"tier": tier.as_str(), "input_usd_per_mtok": m.input_usd_per_mtok,
                                       "output_usd_per_mtok": m.output_usd_per_mtok, "healthy_workers": m.healthy_workers,
                                       "router_model": m.router_model, "router_knowledge": m.router_knowledge}}));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
